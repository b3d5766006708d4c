"""lm-generate with vision-language models: greedy tokens equal transformers' generate with the
model's processor, alone and batched with images of different sizes; bad images are error records."""

import base64

import orjson
import pytest
from click.testing import CliRunner
from conftest import jsonl, run_tool

from lmpipe.bin.generate import main

N = 8
FAMILIES = ["tiny_llava", "tiny_idefics3", "tiny_qwen2_vl"]


def invoke(*args, input=b""):
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def records(photos):
    return [
        {"id": "wide", "text": "Describe this image.", "image": str(photos["wide"])},
        {"id": "tall", "text": "What is it?", "image": str(photos["tall"])},
        {"id": "two", "text": "Compare them.", "images": [str(photos["square"]), str(photos["wide"])]},
        {"id": "none", "text": "No image here."},
    ]


def reference(folder, rows, batched):
    """transformers' own: the processor (its chat template, padding=True on the left) and generate."""
    import torch
    from PIL import Image
    from transformers import AutoConfig, AutoModelForImageTextToText

    from lmpipe.models.processors import load_processor

    processor = load_processor(folder, AutoConfig.from_pretrained(folder))
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    texts, images = [], []
    for r in rows:
        paths = [r["image"]] if "image" in r else r.get("images", [])
        content = [{"type": "image"} for _ in paths] + [{"type": "text", "text": r["text"]}]
        texts.append(processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                                   tokenize=False))
        images.append([Image.open(p).convert("RGB") for p in paths])
    groups = [list(range(len(rows)))] if batched else [[i] for i in range(len(rows))]
    out, counts = [], []
    image_token = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    for g in groups:
        extra = {"padding": True, "padding_side": "left"} if len(g) > 1 else {}
        group_images = [images[i] for i in g]
        enc = processor(text=[texts[i] for i in g], images=group_images if any(group_images) else None,
                        return_tensors="pt", **extra)
        with torch.no_grad():
            generated = model.generate(**enc, max_new_tokens=N, do_sample=False)
        counts += (enc["input_ids"] == image_token).sum(dim=1).tolist()
        eos = model.generation_config.eos_token_id
        for row in generated[:, enc["input_ids"].shape[1]:].tolist():
            out.append(row[:row.index(eos)] if eos in row else row)
    return out, counts


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_tokens_equal_transformers_generate_alone_and_batched(family, request, photos):
    folder = request.getfixturevalue(family)
    rows = records(photos)
    data = b"".join(orjson.dumps(r) + b"\n" for r in rows)
    for batch in (1, 4):
        result = invoke("-m", str(folder), "-n", str(N), "-b", str(batch), "--top-probs", "1", input=data)
        assert result.exit_code == 0, result.stderr
        got = jsonl(result.stdout_bytes)
        expected, image_tokens = reference(folder, rows, batched=batch > 1)
        assert [[t["id"] for t in r["tokens"]] for r in got] == expected, batch
        # The image matters: the same question about other images gets other tokens.
        assert len({tuple(e) for e in expected}) == len(expected)
        assert [r["stats"]["image_tokens"] for r in got] == image_tokens
        assert image_tokens[3] == 0 and min(image_tokens[:3]) > 0


def test_image_options_fields_and_parts_name_the_same_image(tiny_llava, photos):
    """--image, the `image` field, `image_b64`, a data: URL and an image_url part all give one prompt."""
    path = photos["wide"]
    b64 = base64.b64encode(path.read_bytes()).decode()
    url = f"data:image/png;base64,{b64}"
    parts = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                       {"type": "text", "text": "Describe this image."}]}]}
    rows = [{"text": "Describe this image.", "image": str(path)}, {"text": "Describe this image.", "image_b64": b64},
            {"text": "Describe this image.", "image": url}, parts]
    data = b"".join(orjson.dumps(r) + b"\n" for r in rows)
    got = jsonl(invoke("-m", str(tiny_llava), "-n", str(N), input=data).stdout_bytes)
    alone = invoke("-m", str(tiny_llava), "-n", str(N), "--image", str(path), "Describe this image.")
    assert alone.exit_code == 0, alone.stderr
    answers = {r["generated"] for r in got} | {jsonl(alone.stdout_bytes)[0]["generated"]}
    assert len(answers) == 1 and all(r["stats"]["image_tokens"] == 16 for r in got)


def test_images_for_a_text_model_are_refused(tiny_llama, photos):
    result = invoke("-m", str(tiny_llama), "--image", str(photos["wide"]), "Describe this.")
    assert result.exit_code == 2 and "--image needs a vision-language model" in result.stderr
    image = {"type": "image_url", "image_url": {"url": str(photos["wide"])}}
    part = {"messages": [{"role": "user", "content": [image]}]}
    result = invoke("-m", str(tiny_llama), "-n", "2", input=orjson.dumps(part) + b"\n")
    assert result.exit_code == 1
    assert "this model takes no images" in jsonl(result.stdout_bytes)[0]["error"]


def test_bad_images_are_error_records_and_the_others_come_out_in_order(tiny_llava, photos, tmp_path):
    """Acceptance 3, through the installed command: no traceback, exit 1."""
    from tiny_images import (
        save_16bit,
        save_bomb,
        save_cmyk,
        save_corrupt,
        save_exif_rotated,
        save_palette,
        save_truncated,
    )

    (tmp_path / "notes.txt").write_text("not an image at all\n")
    bad = {
        "missing": str(tmp_path / "missing.png"),
        "corrupt": str(save_corrupt(tmp_path / "corrupt.png")),
        "truncated": str(save_truncated(tmp_path / "truncated.png")),
        "not-an-image": str(tmp_path / "notes.txt"),
        "bomb": str(save_bomb(tmp_path / "bomb.png")),
        "folder": str(tmp_path),
        "remote": "https://example.com/cat.jpg",
        "bad-b64": None,
    }
    good = {
        "cmyk": str(save_cmyk(tmp_path / "cmyk.jpg")), "16-bit": str(save_16bit(tmp_path / "16.png")),
        "palette": str(save_palette(tmp_path / "palette.png")), "exif": str(save_exif_rotated(tmp_path / "exif.png")),
        "plain": str(photos["tall"]),
    }
    rows = []
    for name in ["plain", "missing", "cmyk", "corrupt", "truncated", "16-bit", "not-an-image", "palette", "bomb",
                 "exif", "folder", "remote", "bad-b64"]:
        path = bad.get(name, good.get(name))
        rows.append({"id": name, "text": "What is it?", **({"image": path} if path else {"image_b64": "%%%"})})
    data = b"".join(orjson.dumps(r) + b"\n" for r in rows)
    result = run_tool("lm-generate", "-m", str(tiny_llava), "-n", "3", "-b", "4", input=data)
    assert result.returncode == 1
    assert b"Traceback" not in result.stderr
    out = jsonl(result.stdout)
    assert [r["id"] for r in out] == [r["id"] for r in rows]
    for r, line in zip(out, range(1, len(rows) + 1), strict=True):
        if r["id"] in good:
            assert "error" not in r and isinstance(r["generated"], str) and r["stats"]["image_tokens"] == 16
        else:
            assert r["line"] == line and "\n" not in r["error"] and "generated" not in r, r
    errors = {r["id"]: r["error"] for r in out if "error" in r}
    assert errors["missing"].startswith("no such file")
    assert "decompression bomb" in errors["bomb"]
    assert "not an image" in errors["not-an-image"]
    assert "send the image inline as a data: URL" in errors["remote"]
    assert "base64" in errors["bad-b64"]
    assert f"{len(bad)} of {len(rows)} records failed" in result.stderr.decode()


@pytest.mark.parametrize("option, message", [
    (("--cache", "static"), "drop --cache static"), (("--cache", "fast", "--compile"), "drop --compile")])
def test_what_a_vision_language_model_cannot_decode_with_is_refused(tiny_llava, option, message):
    result = CliRunner().invoke(main, ["-m", str(tiny_llava), "--no-server", *option, "hi"])
    assert result.exit_code == 2
    assert result.stderr == ("lm-generate: error: a vision-language model decodes with transformers' "
                             f"dynamic cache: {message}\n")
