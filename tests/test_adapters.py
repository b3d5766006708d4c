"""LoRA adapters in PEFT's format, made by peft here, run beside the base weights: the fast path's
tokens and log-probabilities equal PeftModel's on transformers (float32), a row of each adapter and
a row of none in one batch, through lm-generate and lm-serve; beside quantized layers too."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import torch
from conftest import jsonl, run_tool
from serve_helpers import Server

from lmpipe.engine.decoding import Decoding
from lmpipe.engine.events import Completion
from lmpipe.engine.generation import generate
from lmpipe.engine.sampling import Sampling
from lmpipe.errors import UsageError
from lmpipe.models.adapters import Adapter
from lmpipe.models.loading import ModelSettings, load
from lmpipe.models.merged import MergeSettings

PROMPT = "The quick brown fox"
N = 8


def make_adapter(base: Path, folder: Path, seed: int, **options) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(seed)
    config = LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "o_proj", "down_proj"],
                           "init_lora_weights": False, **options})
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # updates large enough to change the greedy tokens of a random model
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.mul_(4.0)
    peft_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def adapters(tiny_llama, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return make_adapter(tiny_llama, root / "one", 1), make_adapter(tiny_llama, root / "two", 2)


def peft_reference(base: Path, adapter: Path | None, ids: list[int], scale: float = 1.0):
    """Greedy tokens and each one's log-probability from PeftModel on transformers (float32)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter).eval()
        if scale != 1.0:
            from peft.tuners.lora import LoraLayer

            for module in model.modules():
                if isinstance(module, LoraLayer):
                    module.set_scale("default", scale)
    out, logprobs = [], []
    for _ in range(N):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids + out])).logits[0, -1].float()
        lp = torch.log_softmax(logits, dim=-1)
        token = int(lp.argmax())
        out.append(token)
        logprobs.append(float(lp[token]))
    return out, logprobs


def lmpipe_greedy(lm, ids: list[int]) -> tuple[list[int], list[float]]:
    return lmpipe_rows(lm, [ids])[0]


def lmpipe_rows(lm, prompts: list[list[int]], adapters=(), decoding=Decoding()) -> list[tuple[list[int], list[float]]]:
    """Each row's greedy tokens and their log-probabilities, the rows in one batch."""
    done = sorted((e for e in generate(lm.model, lm.tokenizer, prompts, Sampling(max_new_tokens=N), top_probs=1,
                                       device=lm.device, adapters=adapters, decoding=decoding)
                   if isinstance(e, Completion)), key=lambda c: c.row)
    out = []
    for c in done:
        tokens = [*c.tokens, *((c.end,) if c.end is not None else ())]
        out.append(([t.id for t in tokens], [t.logprob for t in tokens]))
    return out


def same_as_peft(got: tuple[list[int], list[float]], expected: tuple[list[int], list[float]]) -> bool:
    """The same greedy tokens (as many as lmpipe gave: it stops at end of sequence), log-probabilities within 1e-4."""
    (ids, lps), (want, want_lps) = got, expected
    return bool(ids) and ids == want[:len(ids)] and all(abs(a - b) < 1e-4
                                                        for a, b in zip(lps, want_lps[:len(lps)], strict=True))


@pytest.mark.parametrize("cache", ["fast", "dynamic"])
def test_rows_of_two_adapters_and_of_none_share_a_batch(tiny_llama, adapters, cache):
    """vLLM's multi-LoRA: each row runs its own adapter's update (the fast path gathers each row's A
    and B; transformers' forward through the adapters' hooks), prompts of different lengths."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    prompts = [tok(p).input_ids for p in (PROMPT, "Paris is the capital of France and", "Hello")]
    lm = load(ModelSettings(str(tiny_llama), loras=(("one", Adapter(str(adapters[0]))),
                                                    ("two", Adapter(str(adapters[1]), 2.5)))))
    rows = lmpipe_rows(lm, prompts, ["one", "two", None], Decoding(cache=cache))
    expected = [peft_reference(tiny_llama, adapters[0], prompts[0]),
                peft_reference(tiny_llama, adapters[1], prompts[1], 2.5), peft_reference(tiny_llama, None, prompts[2])]
    for got, want in zip(rows, expected, strict=True):
        assert same_as_peft(got, want)
    alone = lmpipe_rows(lm, prompts[:1], ["two"])[0]  # the adapters do change the tokens
    assert alone[0] != rows[0][0]


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_fast_path_equals_peft_model(tiny_llama, adapters, scale):
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(tiny_llama)(PROMPT).input_ids
    lm = load(ModelSettings(str(tiny_llama), adapters=(Adapter(str(adapters[0]), scale),)))
    expected, expected_lp = peft_reference(tiny_llama, adapters[0], ids, scale)
    got, got_lp = lmpipe_greedy(lm, ids)
    assert got == expected[:len(got)] and len(got) >= 1
    for a, b in zip(got_lp, expected_lp[:len(got)], strict=True):
        assert abs(a - b) < 1e-4
    base = lmpipe_greedy(load(ModelSettings(str(tiny_llama))), ids)[0]
    assert base == peft_reference(tiny_llama, None, ids)[0][:len(base)] and base != got  # the adapter changed them


def test_a_dora_adapter_is_merged_at_load_and_still_equals_peft_model(tiny_llama, tmp_path):
    """More than a low-rank update (DoRA's magnitudes): peft's merge_and_unload at load, as before."""
    from transformers import AutoTokenizer

    from lmpipe.models.adapters import plain_lora, stack_of

    folder = make_adapter(tiny_llama, tmp_path / "dora", 3, use_dora=True)
    assert plain_lora(Adapter(str(folder))) == "use_dora is set"
    ids = AutoTokenizer.from_pretrained(tiny_llama)(PROMPT).input_ids
    lm = load(ModelSettings(str(tiny_llama), adapters=(Adapter(str(folder)),)))
    assert stack_of(lm.model) is None  # merged: nothing beside the weights
    assert same_as_peft(lmpipe_greedy(lm, ids), peft_reference(tiny_llama, folder, ids))
    embedding = make_adapter(tiny_llama, tmp_path / "embedding", 4, target_modules=["embed_tokens", "q_proj"])
    with pytest.raises(UsageError, match="it adapts the embedding, which this model's head shares"):  # never wrong
        load(ModelSettings(str(tiny_llama), adapters=(Adapter(str(embedding)),)))


def test_lm_generate_adapter_and_manifest(tiny_llama, adapters):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    done = run_tool("lm-generate", "-m", str(tiny_llama), "--raw", "-n", str(N), "--top-probs", "1",
                    "--adapter", f"{adapters[1]}:1.0", "--no-server", input=PROMPT + "\n")
    assert done.returncode == 0, done.stderr.decode()
    record = jsonl(done.stdout)[0]
    expected = peft_reference(tiny_llama, adapters[1], tok(PROMPT).input_ids)[0]
    assert [t["id"] for t in record["tokens"]] == expected[:len(record["tokens"])]
    [part] = record["manifest"]["adapters"]
    assert part["path"] == str(adapters[1].resolve()) and part["scale"] == 1.0 and len(part["sha256"]) == 64


def test_a_missing_or_mismatched_adapter_is_one_line(tiny_llama, adapters, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = run_tool("lm-generate", "-m", str(tiny_llama), "--adapter", str(empty), input=PROMPT + "\n")
    assert missing.returncode == 2 and missing.stdout == b""
    assert missing.stderr.decode().strip() == (f"lm-generate: error: --adapter {empty}: no adapter_config.json there "
                                              "(a PEFT adapter folder)")
    wrong = tmp_path / "wrong"
    shutil.copytree(adapters[0], wrong)
    config = json.loads((wrong / "adapter_config.json").read_text())
    (wrong / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["w_nowhere"]}))
    with pytest.raises(UsageError) as caught:
        load(ModelSettings(str(tiny_llama), adapters=(Adapter(str(wrong)),)))
    assert str(caught.value).startswith(f"--adapter {wrong}: does not fit this model: ")
    assert "\n" not in str(caught.value) and "w_nowhere" in str(caught.value)


def test_lm_serve_lora_by_name(tiny_llama, adapters):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    ids = tok(PROMPT).input_ids
    server = Server(tiny_llama, "--lora", f"one={adapters[0]}", "--lora", f"two={adapters[1]}:2.5")
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)
        listed = {m.id: m for m in client.models.list().data}
        base_id = str(tiny_llama)
        assert listed["one"].parent == base_id and listed["two"].parent == base_id
        assert listed["one"].root == str(adapters[0])
        asked = (("one", adapters[0], 1.0), ("two", adapters[1], 2.5), (base_id, None, 1.0))

        def ask(name: str):
            return client.completions.create(model=name, prompt=ids, max_tokens=N, temperature=0, logprobs=0)

        with ThreadPoolExecutor(len(asked)) as pool:  # at once: their rows may share the base model's batch
            answers = list(pool.map(ask, [name for name, _, _ in asked]))
        for (name, adapter, scale), answer in zip(asked, answers, strict=True):
            expected = peft_reference(tiny_llama, adapter, ids, scale)[0]
            got = answer.choices[0].logprobs.tokens
            assert answer.model == name
            assert got == [tok.decode([t]) for t in expected[:len(got)]] and got
    finally:
        server.stop()


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_an_adapter_beside_quantized_layers_is_the_dequantized_model_with_peft(tiny_llama, adapters, mode):
    """--quantize with --adapter: the base layers quantized, each adapter's update in float32 added to
    their output. The reference: the float32 model holding the quantized values (dequantized), under
    PeftModel. Bound 1e-3 on the logits: lmpipe's kernels against float32 matmuls over the same values."""
    from peft import PeftModel
    from test_quantize import dequantized
    from transformers import AutoTokenizer

    from lmpipe.models.fastpath import FastDecoder, fast_model

    ids = torch.tensor([AutoTokenizer.from_pretrained(tiny_llama)(PROMPT).input_ids])

    def fast_logits(settings: ModelSettings):
        lm = load(settings)
        return FastDecoder(fast_model(lm.model), torch.ones_like(ids), 1).prefill(ids)[0]

    got = fast_logits(ModelSettings(str(tiny_llama), quantize=mode, adapters=(Adapter(str(adapters[0])),)))
    bare = fast_logits(ModelSettings(str(tiny_llama), quantize=mode))
    reference = PeftModel.from_pretrained(dequantized(tiny_llama, mode)[0], adapters[0]).eval()
    with torch.no_grad():
        want = reference(input_ids=ids).logits[0, -1].float()
    assert float((got - want).abs().max()) < 1e-3
    assert float((got - bare).abs().max()) > 0.05  # the adapter changed them


def test_lm_pull_merge_writes_a_model_whose_greedy_tokens_are_peft_models(tiny_llama, adapters, tmp_path):
    from click.testing import CliRunner
    from transformers import AutoTokenizer

    from lmpipe.bin.pull import main

    out = tmp_path / "merged"
    done = CliRunner().invoke(main, [str(tiny_llama), "--adapter", f"{adapters[1]}:2.5", "--merge", str(out)],
                              catch_exceptions=False)
    assert done.exit_code == 0, done.output
    [record] = jsonl(done.stdout_bytes)
    assert record["path"] == str(out.resolve()) and record["adapters"][0]["scale"] == 2.5
    assert (out / "model.safetensors").is_file() and (out / "lmpipe-merge.json").is_file()
    ids = AutoTokenizer.from_pretrained(out)(PROMPT).input_ids
    got = lmpipe_greedy(load(ModelSettings(str(out))), ids)
    assert same_as_peft(got, peft_reference(tiny_llama, adapters[1], ids, 2.5))
    with pytest.raises(UsageError, match="already there and not an empty folder"):  # never written over
        MergeSettings(str(tiny_llama), (Adapter(str(adapters[1])),), out)
