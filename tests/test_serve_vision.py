"""lm-serve with a vision-language model, through the openai client: an image_url data: URL gives
lm-generate's text; a remote URL is a 400 naming the rule; local paths only with --allow-local-images."""

from __future__ import annotations

import base64

import openai
import pytest
from click.testing import CliRunner
from conftest import jsonl
from serve_helpers import Server

from lmpipe.bin.generate import main as generate

N = 8
QUESTION = "Describe this image."


def chat(client, url, text=QUESTION):
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]
    return client.chat.completions.create(model=client.models.list().data[0].id, max_tokens=N, temperature=0,
                                          messages=[{"role": "user", "content": content}])


def data_url(path) -> str:
    return f"data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}"


def lm_generate(folder, path) -> dict:
    result = CliRunner().invoke(generate, ["-m", str(folder), "-n", str(N), "--no-server", "--image", str(path),
                                           QUESTION], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return jsonl(result.stdout_bytes)[0]


@pytest.fixture(scope="module")
def served(tiny_qwen2_vl):
    s = Server(tiny_qwen2_vl, "--preload")
    yield openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    s.stop()


def test_a_data_url_gives_the_text_lm_generate_gives(served, tiny_qwen2_vl, photos):
    for name in ("wide", "tall"):
        answer = chat(served, data_url(photos[name]))
        record = lm_generate(tiny_qwen2_vl, photos[name])
        assert answer.choices[0].message.content == record["generated"] != ""
        assert answer.usage.prompt_tokens == record["stats"]["input_tokens"]
        assert answer.usage.completion_tokens == record["stats"]["output_tokens"]
    assert chat(served, data_url(photos["wide"])).choices[0].message.content != chat(
        served, data_url(photos["tall"])).choices[0].message.content


def test_a_remote_url_is_a_400_that_says_to_send_the_image_inline(served):
    with pytest.raises(openai.BadRequestError) as caught:
        chat(served, "https://example.com/cat.jpg")
    assert "send the image inline as a data: URL" in str(caught.value)
    assert "the server fetches nothing" in str(caught.value)


def test_local_paths_are_refused_unless_allowed(served, tiny_qwen2_vl, photos):
    for url in (str(photos["wide"]), photos["wide"].as_uri()):
        with pytest.raises(openai.BadRequestError) as caught:
            chat(served, url)
        assert "--allow-local-images" in str(caught.value)
    expected = chat(served, data_url(photos["wide"])).choices[0].message.content
    s = Server(tiny_qwen2_vl, "--allow-local-images", str(photos["wide"].parent), "--max-images-per-request", "4",
               "--max-pixels", "2000")
    try:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=300)
        for url in (str(photos["wide"]), photos["wide"].as_uri()):
            assert chat(client, url).choices[0].message.content == expected
        for outside in (str(photos["wide"].parent / ".." / "elsewhere.png"), "/etc/passwd"):
            with pytest.raises(openai.BadRequestError) as caught:
                chat(client, outside)
            assert "outside the folder lm-serve's --allow-local-images allows" in str(caught.value)
        with pytest.raises(openai.BadRequestError) as caught:  # 64 x 64 pixels: over --max-pixels
            chat(client, str(photos["square"]))
        assert "2000" in str(caught.value)
        garbage = "data:image/png;base64," + base64.b64encode(b"not an image").decode()
        content = [{"type": "image_url", "image_url": {"url": garbage}} for _ in range(5)]
        with pytest.raises(openai.BadRequestError) as caught:  # refused on the count, before any is decoded
            client.chat.completions.create(model=client.models.list().data[0].id, max_tokens=N,
                                           messages=[{"role": "user", "content": content}])
        assert caught.value.code == "too_many_images"
        with pytest.raises(openai.BadRequestError) as caught:  # still the server's own rule for remote URLs
            chat(client, "http://example.com/cat.jpg")
        assert "the server fetches nothing" in str(caught.value)
    finally:
        s.stop()


def test_lm_generate_through_the_server_sends_a_records_images_and_writes_the_same_records(served, tiny_qwen2_vl,
                                                                                          photos):
    import json

    url = str(served.base_url)
    records = [{"text": QUESTION, "image": str(photos["wide"])},
               {"text": QUESTION, "images": [str(photos["tall"]), str(photos["wide"])]},
               {"text": QUESTION, "image": "/no/such/photo.png"}]
    lines = "".join(json.dumps(r) + "\n" for r in records)

    def run(*args):
        result = CliRunner().invoke(generate, ["-m", str(tiny_qwen2_vl), "-n", str(N), "--seed", "1", *args],
                                    input=lines, catch_exceptions=False)
        assert result.exit_code == 1, result.stderr  # the missing photo
        return jsonl(result.stdout_bytes)

    here, there = run("--no-server"), run("--server", url)
    assert [r.get("generated") for r in there] == [r.get("generated") for r in here]
    assert there[0]["generated"] and there[2]["error"] == here[2]["error"] == "no such file: /no/such/photo.png"
    assert [r["image"] for r in (here[0], there[0])] == [str(photos["wide"])] * 2  # the record as it came
    assert there[1]["stats"]["input_tokens"] == here[1]["stats"]["input_tokens"]
    one = CliRunner().invoke(generate, ["-m", str(tiny_qwen2_vl), "-n", str(N), "--server", url, "--image",
                                        str(photos["wide"]), QUESTION], catch_exceptions=False)
    assert one.exit_code == 0 and jsonl(one.stdout_bytes)[0]["generated"] == here[0]["generated"]
