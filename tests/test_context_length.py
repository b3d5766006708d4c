"""The context a sequence may hold: --ctx-size, lm-serve's --max-model-len, --rope-scaling/--rope-factor."""

from __future__ import annotations

import httpx
import orjson
import pytest
import torch
from click.testing import CliRunner
from serve_helpers import Server

import lmpipe

TEXT = "Paris is the capital of France. Madrid is the capital of Spain."


def generate(folder, *args, text=TEXT):
    from lmpipe.bin.generate import main

    return CliRunner().invoke(main, ["-m", str(folder), "--raw", "-n", "50", *args], input=text + "\n",
                              catch_exceptions=False)


def prompt_length(folder) -> int:
    return len(lmpipe.load(str(folder)).prompt_ids(TEXT, raw=True))


def test_ctx_size_refuses_a_prompt_one_token_over_and_clamps_the_answer(tiny_llama_raw):
    n = prompt_length(tiny_llama_raw)
    over = generate(tiny_llama_raw, "--ctx-size", str(n - 1))
    assert over.exit_code == 1
    record = orjson.loads(over.stdout)
    assert record["error"] == f"prompt is {n} tokens; the model's context is {n - 1}" and record["line"] == 1
    room = generate(tiny_llama_raw, "--ctx-size", str(n + 3))
    assert room.exit_code == 0, room.output
    record = orjson.loads(room.stdout)
    assert record["stats"]["output_tokens"] == 3 and record["stats"]["finish_reason"] == "length"
    assert record["manifest"]["ctx_size"] == n + 3


def test_each_row_of_a_batch_is_clamped_to_its_own_room(tiny_llama_raw):
    n = prompt_length(tiny_llama_raw)
    result = generate(tiny_llama_raw, "--ctx-size", str(n + 3), "-b", "2", "-n", "8", text=TEXT + "\nParis")
    assert result.exit_code == 0, result.output
    long, short = (orjson.loads(line)["stats"] for line in result.stdout.splitlines())
    assert (long["output_tokens"], long["finish_reason"]) == (3, "length")
    assert short["output_tokens"] > 3  # not the long row's room


def test_the_python_api_takes_ctx_size(tiny_llama_raw):
    from lmpipe.errors import RecordError

    n = prompt_length(tiny_llama_raw)
    model = lmpipe.load(str(tiny_llama_raw), ctx_size=n + 2)
    result = model.complete(TEXT, raw=True, max_new_tokens=50)
    assert (result.stats["output_tokens"], result.finish_reason) == (2, "length")
    with pytest.raises(RecordError, match=f"prompt is {n} tokens"):
        lmpipe.load(str(tiny_llama_raw), ctx_size=n).complete(TEXT, raw=True)


def test_past_the_trained_context_only_with_rope_scaling(tiny_llama_raw):
    refused = generate(tiny_llama_raw, "--ctx-size", "1024")
    assert refused.exit_code == 2 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and "past" in refused.stderr and "trained context of 256" in refused.stderr
    stretched = generate(tiny_llama_raw, "--ctx-size", "1024", "--rope-scaling", "yarn", "--rope-factor", "4")
    assert stretched.exit_code == 0, stretched.output
    manifest = orjson.loads(stretched.stdout)["manifest"]
    assert (manifest["rope_scaling"], manifest["rope_factor"], manifest["cache"]) == ("yarn", 4.0, "fast")
    lonely = generate(tiny_llama_raw, "--rope-scaling", "yarn")
    assert lonely.exit_code == 2 and "--rope-factor" in lonely.stderr


@pytest.fixture(scope="module")
def spread_llama(tmp_path_factory):
    """A tiny Llama with weights spread wide enough that positions move its logits (trained context 256)."""
    from tiny_models import build_tiny_family

    return build_tiny_family(tmp_path_factory.mktemp("llama"), "llama")


@pytest.mark.parametrize("kind", ["yarn", "linear", "dynamic"])
def test_rope_scaling_gives_transformers_logits_for_the_same_overridden_config(spread_llama, kind):
    """A prompt past the trained 256 positions: lmpipe's fast path against transformers' own
    forward on a config with the same rope parameters written in."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from lmpipe.models.fastpath import FastDecoder, fast_model

    model = lmpipe.load(str(spread_llama), ctx_size=1024, rope_scaling=kind, rope_factor=4.0).lm.model
    config = AutoConfig.from_pretrained(spread_llama)
    config.rope_parameters = {**config.rope_parameters, "rope_type": kind, "factor": 4.0,
                              "original_max_position_embeddings": 256}
    theirs = AutoModelForCausalLM.from_pretrained(spread_llama, config=config, dtype=torch.float32).eval()
    torch.manual_seed(0)
    ids = torch.randint(10, 300, (1, 400))
    with torch.no_grad():
        expected = theirs(input_ids=ids).logits[:, -1].float()
        plain = AutoModelForCausalLM.from_pretrained(spread_llama, dtype=torch.float32)(input_ids=ids).logits[:, -1]
    got = FastDecoder(fast_model(model), torch.ones_like(ids), 1).prefill(ids)
    assert (got - expected).abs().max() < 1e-4
    assert (plain - expected).abs().max() > 1e-2  # the scaling changes the numbers: the test can fail


def test_lm_serve_max_model_len_is_reported_and_a_prompt_one_over_is_vllms_400(tiny_llama_raw, tiny_llama):
    """--max-model-len for every model, and --model-option MODEL ctx-size=N for one (the same tokenizer:
    the prompt is as long for both)."""
    n = prompt_length(tiny_llama_raw)
    sizes = {str(tiny_llama_raw): n - 1, str(tiny_llama): n - 2}
    server = Server(tiny_llama_raw, "--max-model-len", str(n - 1), "-m", str(tiny_llama),
                    "--model-option", str(tiny_llama), f"ctx-size={n - 2}")
    try:
        models = httpx.get(server.url + "/v1/models", timeout=30).json()["data"]
        # Before the models load: the server was told.
        assert {m["id"]: m["max_model_len"] for m in models} == sizes
        for model, size in sizes.items():
            body = {"model": model, "prompt": TEXT, "max_tokens": 4}
            response = httpx.post(server.url + "/v1/completions", json=body, timeout=120)
            assert response.status_code == 400
            assert response.json()["error"]["message"] == (
                f"This model's maximum context length is {size} tokens. However, you requested {n} tokens in the "
                "messages, Please reduce the length of the messages.")
            assert response.json()["error"]["code"] == "context_length_exceeded"
    finally:
        server.stop()


def test_one_over_long_prompt_is_the_same_one_error_at_every_front_door(tiny_llama):
    """One request preparation (lmpipe.engine.preparation): the same chat, one token over the
    context, through the Python API, lm-generate, the dashboard's pool and lm-serve."""
    from starlette.testclient import TestClient

    from lmpipe.engine.preparation import ContextExceeded
    from lmpipe.engine.scheduler import SchedulerSettings
    from lmpipe.models.loading import ModelSettings
    from lmpipe.serve.app import create_app
    from lmpipe.serve.roster import ModelRoster, RosterSettings
    from lmpipe.tui.pool import ChatSettings, ModelPool, chat_turn

    messages = [{"role": "user", "content": TEXT}]
    n = len(lmpipe.load(str(tiny_llama)).prompt_ids(messages))
    size = n - 1
    expected = f"prompt is {n} tokens; the model's context is {size}"

    with pytest.raises(ContextExceeded) as api:
        lmpipe.load(str(tiny_llama), ctx_size=size).complete(messages)
    assert str(api.value) == expected

    from lmpipe.bin.generate import main

    tool = CliRunner().invoke(main, ["-m", str(tiny_llama), "--ctx-size", str(size)],
                              input=orjson.dumps({"messages": messages}) + b"\n", catch_exceptions=False)
    assert tool.exit_code == 1
    record = orjson.loads(tool.stdout)
    assert (record["error"], record["line"]) == (expected, 1)

    pool = ModelPool(ModelSettings(ctx_size=size))
    with pytest.raises(ContextExceeded) as dash:
        chat_turn(pool, messages, ChatSettings(model=str(tiny_llama)), lambda _text, _n: None, lambda: False)
    assert str(dash.value) == expected

    roster = ModelRoster(RosterSettings((SchedulerSettings(model=ModelSettings(str(tiny_llama), ctx_size=size)),)))
    try:
        with TestClient(create_app(roster)) as client:
            response = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 4})
    finally:
        for scheduler in roster.all():
            scheduler.close()
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": f"This model's maximum context length is {size} tokens. However, you requested {n} tokens in "
                   "the messages, Please reduce the length of the messages.",
        "type": "invalid_request_error", "code": "context_length_exceeded"}
