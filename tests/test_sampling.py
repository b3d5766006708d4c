"""Sampling settings in the one loop: min_p and logit_bias against a reference sampler written
here, for every row of a batch, and through lm-generate (lm-serve's are in test_serve_openai)."""

from __future__ import annotations

import pytest
import torch
from conftest import jsonl, run_tool

from lmpipe.engine.events import Completion
from lmpipe.engine.generation import generate
from lmpipe.engine.sampling import Sampling, parse_logit_bias
from lmpipe.errors import UsageError
from lmpipe.models.loading import ModelSettings, load

PROMPTS = ["The quick brown fox", "Pipes connect small tools"]


@pytest.fixture(scope="module")
def lm(tiny_llama):
    return load(ModelSettings(str(tiny_llama)))


@pytest.fixture(scope="module")
def hf(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(tiny_llama))


def reference(model, ids: list[int], n: int, seed: int, temperature: float = 1.0, min_p: float = 0.0,
              bias: dict[int, float] | None = None, eos: int | None = None) -> tuple[list[int], int]:
    """Sampling written out over transformers' logits: bias, temperature, min_p (tokens less
    likely than min_p times the likeliest dropped), one multinomial draw per step from a
    generator seeded once. Also: how many steps min_p dropped a token at."""
    generator = torch.Generator().manual_seed(seed)
    out: list[int] = []
    dropped = 0
    for _ in range(n):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids + out])).logits[0, -1].float()
        for token, b in (bias or {}).items():
            logits[token] += b
        logits = logits / temperature
        probs = torch.softmax(logits, dim=-1)
        keep = probs >= min_p * probs.max()
        dropped += int(not keep.all())
        probs = torch.softmax(logits.masked_fill(~keep, float("-inf")), dim=-1)
        token = int(torch.multinomial(probs, 1, generator=generator))
        if token == eos:
            break
        out.append(token)
    return out, dropped


def completions(events) -> list[Completion]:
    done = sorted((e for e in events if isinstance(e, Completion)), key=lambda c: c.row)
    return done


def test_min_p_and_logit_bias_sample_as_the_reference_for_every_row(lm, hf):
    model, tok = hf
    prompts = [tok(p).input_ids for p in PROMPTS]
    bias = {tok.convert_tokens_to_ids("Ġfo"): 3.0, 7: -100.0}
    sampling = Sampling(temperature=1.5, min_p=0.2, max_new_tokens=12, seed=11, logit_bias=tuple(bias.items()))
    rows = completions(generate(lm.model, lm.tokenizer, prompts, sampling, device=lm.device))
    assert len(rows) == 2
    for ids, row in zip(prompts, rows, strict=True):
        expected, dropped = reference(model, ids, 12, 11, 1.5, 0.2, bias, tok.eos_token_id)
        assert list(row.ids) == expected
        assert dropped == len(expected)  # min_p dropped tokens at every step: it was applied
        assert 7 not in row.ids
    plain = completions(generate(lm.model, lm.tokenizer, prompts, Sampling(temperature=1.5, max_new_tokens=12, seed=11),
                                 device=lm.device))
    assert [list(c.ids) for c in plain] == [reference(model, ids, 12, 11, 1.5, eos=tok.eos_token_id)[0]
                                             for ids in prompts]
    assert [c.ids for c in plain] != [c.ids for c in rows]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_bias_of_100_forces_the_token_and_minus_100_bans_it(lm, hf, temperature):
    _, tok = hf
    prompts = [tok(p).input_ids for p in PROMPTS]
    forced = tok.convert_tokens_to_ids("Ġdog")
    sampling = Sampling(temperature=temperature, max_new_tokens=5, seed=3, logit_bias=((forced, 100.0),))
    rows = completions(generate(lm.model, lm.tokenizer, prompts, sampling, device=lm.device))
    assert [list(c.ids) for c in rows] == [[forced] * 5, [forced] * 5]
    greedy = completions(generate(lm.model, lm.tokenizer, prompts[:1], Sampling(max_new_tokens=1), device=lm.device))
    first = greedy[0].ids[0]
    banned = completions(generate(lm.model, lm.tokenizer, prompts[:1],
                                  Sampling(max_new_tokens=1, logit_bias=((first, -100.0),)), device=lm.device))
    assert banned[0].ids and banned[0].ids[0] != first


@pytest.mark.parametrize("settings, message", [
    ({"min_p": 1.5}, "--min-p must be in [0, 1]"),
    ({"logit_bias": ((5, 101.0),)}, "--logit-bias 5=101.0: the bias must be in [-100, 100]"),
    ({"logit_bias": ((-1, 1.0),)}, "--logit-bias -1: token ids are 0 or more"),
])
def test_settings_check_themselves(settings, message):
    with pytest.raises(UsageError) as caught:
        Sampling(**settings)
    assert str(caught.value) == message


def test_logit_bias_pairs_parse():
    assert parse_logit_bias(["5=100", "7=-2.5", "5=1"]) == ((5, 1.0), (7, -2.5))
    for bad in ("5", "x=1", "5=y"):
        with pytest.raises(UsageError):
            parse_logit_bias([bad])


def test_lm_generate_takes_min_p_and_logit_bias_into_the_manifest(tiny_llama, hf):
    _, tok = hf
    forced = tok.convert_tokens_to_ids("Ġdog")
    done = run_tool("lm-generate", "-m", str(tiny_llama), "--raw", "-n", "4", "--min-p", "0.1",
                    "--logit-bias", f"{forced}=100", "--top-probs", "1", input=PROMPTS[0] + "\n")
    assert done.returncode == 0, done.stderr.decode()
    record = jsonl(done.stdout)[0]
    assert [t["id"] for t in record["tokens"]] == [forced] * 4
    assert record["manifest"]["sampling"]["logit_bias"] == {str(forced): 100.0}
    assert record["manifest"]["sampling"]["min_p"] == 0.1
    outside = run_tool("lm-generate", "-m", str(tiny_llama), "--raw", "-n", "2", "--logit-bias", "99999=1",
                       input=PROMPTS[0] + "\n")
    assert outside.returncode == 2 and outside.stdout == b""
    assert outside.stderr.decode().strip().endswith(
        "--logit-bias 99999: not a token id of this model (its vocabulary has "
        f"{len(tok)})")
