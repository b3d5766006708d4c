"""lm-model-info: figures from the config and safetensors headers, and exact ones with --load."""

from __future__ import annotations

import json
import re
from pathlib import Path

from click.testing import CliRunner
from conftest import jsonl, run_tool

from lmpipe.bin import model_info as tool


def info(*args: str, input: str | None = None) -> tuple[int, list[dict]]:
    result = CliRunner().invoke(tool.main, [*args, "--json"], input=input, catch_exceptions=False)
    return result.exit_code, jsonl(result.stdout_bytes)


def test_embedded_model_loaded(embedded):
    code, [record] = info("smollm2", "--load")
    assert code == 0
    assert record["parameters"] == 134_515_008 and record["parameters_from"] == "loaded"
    assert (record["layers"], record["heads"], record["kv_heads"]) == (30, 9, 3)
    assert (record["hidden_size"], record["vocab_size"]) == (576, 49_152)
    assert record["chat_template"] is True and record["kind"] == "embedded"
    assert record["architecture"] == "LlamaForCausalLM" and record["dtype"] == "float32"
    assert record["special_tokens"]["eos"] == "<|im_end|>"
    assert record["converted_path"] == str(embedded)


def test_embedded_model_from_headers_agrees_without_loading(embedded):
    code, [record] = info()  # no argument: the default model
    assert code == 0 and record["id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert record["parameters"] == 134_515_008 and record["parameters_from"] == "safetensors"
    assert record["context_length"] == 8192 and record["size_bytes"] == Path(record["path"]).stat().st_size


def test_tiny_models_match_transformers(tiny_llama, tiny_llama_raw):
    from transformers import AutoModelForCausalLM

    code, (chat, raw) = info(str(tiny_llama), str(tiny_llama_raw))
    assert code == 0
    config = json.loads((tiny_llama / "config.json").read_text())
    expected = AutoModelForCausalLM.from_pretrained(tiny_llama).num_parameters()
    assert chat["parameters"] == expected
    assert (chat["layers"], chat["heads"], chat["kv_heads"], chat["hidden_size"], chat["vocab_size"]) == (
        config["num_hidden_layers"], config["num_attention_heads"], config["num_key_value_heads"],
        config["hidden_size"], config["vocab_size"])
    assert chat["chat_template"] is True and raw["chat_template"] is False
    assert chat["kind"] == "folder" and chat["size_bytes"] == sum(
        p.stat().st_size for p in tiny_llama.iterdir() if p.is_file())


def test_models_from_records_on_stdin(tiny_llama):
    lines = json.dumps({"model": str(tiny_llama), "keep": 1}) + "\n" + json.dumps({"model": "no/such-model"}) + "\n"
    code, (ok, failed) = info(input=lines)
    assert code == 1
    assert ok["keep"] == 1 and ok["layers"] == 2
    assert failed["line"] == 2 and "not in the Hugging Face cache" in failed["error"]


def test_an_unknown_model_is_a_one_line_usage_error():
    done = run_tool("lm-model-info", "./nowhere")
    assert done.returncode == 2 and done.stdout == b""
    assert done.stderr.decode().count("\n") == 1 and "no model at nowhere" in done.stderr.decode()


def test_the_terminal_panel_shows_the_record(tiny_llama):
    from rich.console import Console

    from lmpipe.models.modelinfo import model_info
    from lmpipe.terminal.tables import model_panel

    record = model_info(str(tiny_llama))
    console = Console(width=120, record=True, file=open("/dev/null", "w"))
    console.print(model_panel(record))
    text = console.export_text()
    assert f"{record['parameters']:,} (safetensors)" in text
    assert re.search(r"chat template +yes", text) and re.search(rf"vocabulary +{record['vocab_size']:,}", text)
