"""lm-evaluation-harness (installed with the test extra) scores a multiple-choice task through
lm-serve (`local-completions`: echo, logprobs 1, token-id prompts) exactly as its `hf` model
scores it in-process on the same SmolLM2 weights: lmpipe can evaluate any model it serves."""

from __future__ import annotations

import json

import pytest
from serve_helpers import Server

CAPITALS = [("France", "Paris"), ("Italy", "Rome"), ("Germany", "Berlin"), ("Spain", "Madrid"),
            ("Japan", "Tokyo"), ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Greece", "Athens"),
            ("Norway", "Oslo"), ("Egypt", "Cairo")]
SUMS = [(2, 3), (4, 4), (1, 6), (5, 3), (7, 2), (3, 3), (6, 4), (8, 1), (2, 7), (9, 0)]


def questions() -> list[dict]:
    """20 questions of 4 choices each, the answer's place rotating."""
    out = []
    cities = [city for _, city in CAPITALS]
    for i, (country, city) in enumerate(CAPITALS):
        wrong = [c for c in cities if c != city][i % 6: i % 6 + 3]
        choices = wrong[:]
        choices.insert(i % 4, city)
        out.append({"question": f"The capital of {country} is", "choices": choices, "answer": i % 4})
    for i, (a, b) in enumerate(SUMS):
        right = a + b
        choices = [str(right + d) for d in (1, 2, 3)]
        choices.insert(i % 4, str(right))
        out.append({"question": f"{a} + {b} =", "choices": choices, "answer": i % 4})
    return out


TASK = """task: lmpipe_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
"""


@pytest.fixture(scope="module")
def server(embedded):
    s = Server(embedded, "--max-batch", "8", "--preload")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm-eval-task")
    data = folder / "questions.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in questions()))
    (folder / "lmpipe_mc.yaml").write_text(TASK.format(data=data))
    return folder


def evaluate(task_dir, model: str, model_args: str) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    return simple_evaluate(model=model, model_args=model_args, tasks=["lmpipe_mc"], batch_size=1, device="cpu",
                           task_manager=TaskManager(include_path=str(task_dir)), log_samples=True)


def test_local_completions_scores_as_hf_does(server, embedded, task_dir, monkeypatch):
    import httpx

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    served = httpx.get(server.url + "/v1/models", timeout=30).json()["data"][0]["id"]
    remote = evaluate(task_dir, "local-completions",
                      f"model={served},base_url={server.url}/v1/completions,tokenizer_backend=huggingface,"
                      f"tokenizer={embedded},num_concurrent=1,max_retries=1")
    local = evaluate(task_dir, "hf", f"pretrained={embedded},dtype=float32")

    def scores(result: dict) -> list[list[float]]:
        samples = sorted(result["samples"]["lmpipe_mc"], key=lambda s: s["doc_id"])
        return [[ll for ll, _ in s["filtered_resps"]] for s in samples]

    ours, theirs = scores(remote), scores(local)
    assert len(ours) == len(theirs) == 20 and all(len(row) == 4 for row in ours)
    for a, b in zip(ours, theirs, strict=True):
        assert a == pytest.approx(b, abs=1e-3)
    acc = remote["results"]["lmpipe_mc"]["acc,none"]
    assert acc == local["results"]["lmpipe_mc"]["acc,none"] and acc > 0.25  # better than chance
