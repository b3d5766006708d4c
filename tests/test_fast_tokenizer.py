"""The fast tokenizer path (tokenizer.json with the `tokenizers` library) equals transformers'
AutoTokenizer: ids, offsets, tokens, special and added flags, decoding (issue 18, acceptance 2)."""

from __future__ import annotations

import orjson
import pytest
from click.testing import CliRunner
from conftest import jsonl, run_tool
from test_tokenize import SAMPLES

from lmpipe.bin.tokenize import main
from lmpipe.models.fast_tokenizer import JsonTokenizer

# The multilingual sample, and texts that hold special tokens, spaces and punctuation decoding may clean up.
TEXTS = SAMPLES + ["<|im_start|>user\nhi<|im_end|>", "<s> x </s> <pad> <mask>", "  two  spaces  ", "don't , stop .", ""]
MODELS = ["embedded", "tiny_llama", "tiny_owlvit", "tiny_t5", "tiny_bart", "tiny_mbart", "tiny_nllb"]


def expected(tok, text: str, special: bool) -> dict:
    """What lm-tokenize writes, computed with transformers."""
    enc = tok(text, add_special_tokens=special, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    specials, added = set(tok.all_special_ids), set(tok.get_added_vocab().values())
    return {"ids": ids, "tokens": tok.convert_ids_to_tokens(ids), "count": len(ids),
            "special": [i in specials for i in ids], "added": [i in added and i not in specials for i in ids],
            "offsets": [list(o) for o in enc["offset_mapping"]]}


@pytest.mark.parametrize("name", MODELS)
def test_lm_tokenize_equals_autotokenizer(name, request):
    from transformers import AutoTokenizer

    folder = request.getfixturevalue(name)
    hf = AutoTokenizer.from_pretrained(folder)
    data = b"".join(orjson.dumps({"text": t}) + b"\n" for t in TEXTS)
    for flags, special in (([], True), (["--no-special"], False)):
        result = CliRunner().invoke(main, ["-m", str(folder), *flags], input=data, catch_exceptions=False)
        assert result.exit_code == 0 and result.stderr == ""
        for text, record in zip(TEXTS, jsonl(result.stdout_bytes), strict=True):
            assert {k: record[k] for k in ("ids", "tokens", "count", "special", "added", "offsets")} == \
                expected(hf, text, special), text
    ids = [hf(t)["input_ids"] for t in TEXTS]
    back = CliRunner().invoke(main, ["-m", str(folder), "--decode"],
                              input=b"".join(orjson.dumps({"ids": i}) + b"\n" for i in ids))
    assert [r["text"] for r in jsonl(back.stdout_bytes)] == [hf.decode(i) for i in ids]


@pytest.mark.parametrize("name", MODELS)
def test_the_tokenizer_config_applies_as_in_transformers(name, request):
    """Special tokens (named and extra), added tokens, size and chat template, as AutoTokenizer has them."""
    from transformers import AutoTokenizer

    folder = request.getfixturevalue(name)
    hf, ours = AutoTokenizer.from_pretrained(folder), JsonTokenizer(folder)
    assert ours.special_tokens_map == hf.special_tokens_map
    assert ours.all_special_ids == hf.all_special_ids
    assert ours.get_added_vocab() == hf.get_added_vocab()
    assert len(ours) == len(hf)
    assert ours.chat_template == hf.chat_template
    for text in TEXTS:
        enc = hf(text, return_special_tokens_mask=True)
        assert ours.encode(text).special_tokens_mask == enc["special_tokens_mask"]


def test_add_bos_token_in_the_config_is_ignored_as_transformers_ignores_it(tiny_llama, tmp_path):
    """transformers 5 takes BOS and EOS from tokenizer.json's post-processor, not from the config's
    add_bos_token and add_eos_token, when the file exists."""
    import json
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path / "bos"
    shutil.copytree(tiny_llama, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "add_bos_token": True, "add_eos_token": True}))
    hf, ours = AutoTokenizer.from_pretrained(folder), JsonTokenizer(folder)
    assert ours.encode("hi there").ids == hf("hi there")["input_ids"]
    assert hf.bos_token_id not in ours.encode("hi there").ids


def test_a_saved_tokenizer_loads_the_same_in_transformers(embedded, tmp_path):
    from transformers import AutoTokenizer

    run = CliRunner().invoke(main, ["--add-token", "<tool>", "--add-special-token", "<|sep|>", "--save",
                                    str(tmp_path / "tok")], input=b"")
    assert run.exit_code == 0, run.stderr
    hf, ours = AutoTokenizer.from_pretrained(tmp_path / "tok"), JsonTokenizer(tmp_path / "tok")
    text = "a <tool> b <|sep|> Café"
    assert ours.encode(text).ids == hf(text)["input_ids"]
    assert ours.all_special_ids == hf.all_special_ids and ours.chat_template == hf.chat_template


def test_the_converted_embedded_model_has_a_tokenizer_json(embedded):
    assert (embedded / "tokenizer.json").is_file()


def test_a_model_without_tokenizer_json_takes_the_slow_path_and_says_so(tiny_marian):
    from transformers import AutoTokenizer

    assert not (tiny_marian / "tokenizer.json").exists()
    result = run_tool("lm-tokenize", "-m", str(tiny_marian), input=b'{"text": "A small model."}\n')
    assert result.returncode == 0
    assert result.stderr.decode().startswith(f"lm-tokenize: {tiny_marian} has no tokenizer.json: "
                                      "loading the slow tokenizer through transformers\n")
    assert jsonl(result.stdout)[0]["ids"] == AutoTokenizer.from_pretrained(tiny_marian)("A small model.")["input_ids"]


def test_a_gguf_not_yet_converted_takes_the_slow_path_and_says_so(embedded, tmp_path):
    from transformers import AutoTokenizer

    from lmpipe.models.resolve import embedded_gguf

    result = run_tool("lm-tokenize", input=b'{"text": "Hello, world"}\n', env={"LMPIPE_HOME": str(tmp_path)})
    assert result.returncode == 0
    assert result.stderr.decode() == ("lm-tokenize: smollm2 is a GGUF not converted yet: "
                                      "loading the slow tokenizer through transformers\n")
    gguf = embedded_gguf()
    hf = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    assert jsonl(result.stdout)[0]["ids"] == hf("Hello, world")["input_ids"]


@pytest.mark.parametrize("name", ["embedded", "tiny_llama"])
def test_a_chat_is_tokenized_as_lm_generate_prompts_the_model(name, request):
    """A `messages` record: the template rendered with jinja2 (no transformers), the ids lm-generate feeds."""
    from transformers import AutoTokenizer

    from lmpipe.chat.prompts import PromptSettings, prompt_ids

    folder = request.getfixturevalue(name)
    hf = AutoTokenizer.from_pretrained(folder)
    chat = {"messages": [{"role": "system", "content": "Réponds en français."},
                         {"role": "user", "content": "Où est Köln? 東京?"}]}
    result = CliRunner().invoke(main, ["-m", str(folder)], input=orjson.dumps(chat) + b"\n", catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    record = jsonl(result.stdout_bytes)[0]
    assert record["prompt"] == hf.apply_chat_template(chat["messages"], add_generation_prompt=True, tokenize=False)
    assert record["ids"] == prompt_ids(chat, hf, PromptSettings())
    assert [record["prompt"][a:b] for a, b in record["offsets"]][-3:] == \
        [hf.decode([i]) for i in record["ids"][-3:]]
