"""lm-bench's measurements, llama-bench style: the same cases for lmpipe and for a baseline.

Each case times whole calls, the same way for every implementation, so the ratios compare
like with like: a call with one new token gives the time to first token (prompt processing);
a call with `gen_tokens` new tokens gives the aggregate rate, and its decode rate is timed
inside that same call, from its first new token to its end (subtracting two calls' times
instead gives noise, or a rate near infinity when the prompt outweighs the new tokens). Warm-up
runs happen before any clock is read; every case is repeated and reported as min and median.
"""

from __future__ import annotations

import json
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..backends.remote import ServerClient, ServerSettings
from ..engine.decoding import Decoding, settled
from ..engine.events import Completion, Token
from ..engine.generation import generate
from ..engine.sampling import Sampling
from ..engine.speculative import load_draft, manifest_part
from ..engine.timing import per_second
from ..errors import UsageError
from ..models.loading import LoadedModel, ModelSettings, load
from ..models.perplexity import perplexity, sample_text
from ..records.manifest import manifest

BASELINES = ("transformers", "llama-cpp")


@dataclass(frozen=True)
class Timed:
    """What one call generated, and when: `counts` new tokens per row; `decode_s` from the
    call's first new token (any row's) to its end, in which the other max(counts) - 1 came."""

    counts: list[int]
    decode_s: float


# A call: (prompts as token ids, new tokens) -> what it generated.
Call = Callable[[list[list[int]], int], Timed]


class FirstToken:
    """perf_counter at the first new token, for calls whose tokens arrive as they come."""

    def __init__(self) -> None:
        self.at: float | None = None

    def seen(self) -> None:
        if self.at is None:
            self.at = time.perf_counter()

    def timed(self, counts: list[int]) -> Timed:
        end = time.perf_counter()
        return Timed(counts, end - (self.at if self.at is not None else end))


@dataclass(frozen=True)
class BenchSettings:
    model: ModelSettings = field(default_factory=ModelSettings)
    decoding: Decoding = field(default_factory=Decoding)
    prompt_tokens: int = 64
    gen_tokens: int = 32
    batches: tuple[int, ...] = (1, 4, 16)
    repetitions: int = 3
    baseline: str | None = None
    perplexity: bool = False
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.prompt_tokens < 1 or self.gen_tokens < 2:
            raise UsageError("--prompt-tokens must be at least 1 and --gen-tokens at least 2")
        if not self.batches or min(self.batches) < 1:
            raise UsageError("--batch sizes must be 1 or more")
        if self.repetitions < 1:
            raise UsageError("--repetitions must be at least 1")
        if self.baseline not in (None, *BASELINES):
            raise UsageError(f"--baseline must be one of {', '.join(BASELINES)}")


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"min": round(min(values), 4), "median": round(statistics.median(values), 4)}


def peak_rss_mb() -> float:
    """This process's peak resident memory, MiB.

    Linux's VmHWM belongs to the process image, so a child started by lm-bench reports its own
    peak; ru_maxrss would carry over the parent's from before the exec.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def memory_probe(impl: str, model: ModelSettings, prompt_tokens: int, tokens: int = 8) -> dict[str, Any]:
    """Peak memory of a fresh process that loads the model, reads a prompt of `prompt_tokens` (the
    timed cases' length, so a long prompt's KV cache and activations count) and generates `tokens`.

    One process per implementation, so neither's peak hides inside the other's. `import_rss_mb`
    is that process after importing torch and transformers; `model_peak_mb` is the rest of
    its peak, the part the model is responsible for.
    """
    code = ("import sys, json; from lmpipe.tasks.bench_cases import _probe; "
            "_probe(sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))")
    command = [sys.executable, "-c", code, impl, json.dumps(asdict(model)), str(prompt_tokens), str(tokens)]
    return json.loads(probe_output(command, "the memory probe"))


def probe_output(command: list[str], what: str, env: dict[str, str] | None = None, timeout: int = 900) -> str:
    """The last line a fresh process measuring something printed; `what` failed, in one line, if it did."""
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return done.stdout.strip().splitlines()[-1]


def _probe(impl: str, settings: dict[str, Any], prompt_tokens: int, tokens: int) -> None:
    import torch  # noqa: F401  (imported before the first reading: it is not the model's)
    import transformers  # noqa: F401

    imported = peak_rss_mb()
    lm = load(ModelSettings(**settings), lambda m: None)
    prompt = bench_prompt(lm.tokenizer, prompt_tokens)
    call = lmpipe_call(lm, Decoding()) if impl == "lmpipe" else transformers_call(lm.model, lm.tokenizer)
    call([prompt], tokens)
    peak = peak_rss_mb()
    print(json.dumps({"peak_rss_mb": peak, "import_rss_mb": imported, "model_peak_mb": round(peak - imported, 1)}))


def model_mb(model: Any) -> float:
    tensors = [*model.parameters(), *model.buffers()]
    seen = {t.data_ptr(): t.numel() * t.element_size() for t in tensors}  # tied weights once
    return round(sum(seen.values()) / 2**20, 1)


def bench_prompt(tokenizer: Any, n: int) -> list[int]:
    """`n` tokens of the shipped public-domain text (repeated if it is too short)."""
    ids = list(tokenizer(sample_text(), add_special_tokens=False)["input_ids"])
    while len(ids) < n:
        ids += ids
    return ids[:n]


def lmpipe_call(lm: LoadedModel, decoding: Decoding, draft: Any = None) -> Call:
    def call(prompts: list[list[int]], new: int) -> Timed:
        counts = [0] * len(prompts)
        first = FirstToken()
        for event in generate(lm.model, lm.tokenizer, prompts, Sampling(max_new_tokens=new), device=lm.device,
                              decoding=decoding, draft=draft):
            if isinstance(event, Token):
                first.seen()
            elif isinstance(event, Completion):
                first.seen()  # a row whose only token ended it has no Token event
                counts[event.row] = event.output_tokens + (event.finish_reason == "eos")
        return first.timed(counts)

    return call


def transformers_call(model: Any, tokenizer: Any) -> Call:
    """Plain `model.generate`, greedy, left-padded: what a transformers user writes."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    from transformers.generation.streamers import BaseStreamer

    class TokenClock(BaseStreamer):
        """generate's streamer gets the prompt first, then each step's new tokens."""

        def __init__(self) -> None:
            self.first, self.prompt_seen = FirstToken(), False

        def put(self, value: Any) -> None:
            if self.prompt_seen:
                self.first.seen()
            self.prompt_seen = True

        def end(self) -> None:
            pass

    def call(prompts: list[list[int]], new: int) -> Timed:
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        clock = TokenClock()
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=False,
                             pad_token_id=pad, streamer=clock)
        return clock.first.timed([int((row != pad).sum()) for row in out[:, width:]])

    return call


def llama_cpp_context(settings: BenchSettings) -> int:
    """llama.cpp's n_ctx: the --ctx-size lmpipe runs with, else room for the bench's prompt and answer."""
    return settings.model.ctx_size or max(2048, settings.prompt_tokens + settings.gen_tokens)


def llama_cpp_call(path: str, threads: int | None, n_ctx: int) -> Call:
    try:
        from llama_cpp import Llama
    except ImportError as exc:  # not installed, or one of its own dependencies missing
        raise UsageError(f"--baseline llama-cpp needs llama-cpp-python (pip install llama-cpp-python): {exc}") from None
    llm = Llama(model_path=path, n_ctx=n_ctx, n_threads=threads or None, verbose=False)

    def call(prompts: list[list[int]], new: int) -> Timed:
        counts, decode_s = [], 0.0
        for p in prompts:  # llama-cpp-python serves one sequence at a time: each one's decode time adds up
            llm.reset()  # it would reuse the last prompt's keys and values: time the prompt, as for the others
            first, count = FirstToken(), 0
            # generate yields one token id at a time (greedy at temp 0), as llama.cpp decodes them;
            # create_completion's streamed chunks may hold several tokens' text
            for token in llm.generate(p, temp=0.0):
                first.seen()
                count += 1
                if count >= new or token == llm.token_eos():
                    break
            counts.append(count)
            decode_s += first.timed([count]).decode_s
        return Timed(counts, decode_s)

    return call


def measure(calls: dict[str, Call], prompt: list[int], settings: BenchSettings) -> Iterator[dict[str, Any]]:
    """Per batch size: prompt processing and time to first token, decode and aggregate rates.

    The implementations take turns within every repetition, so a machine whose load drifts
    (a shared one) weighs on all of them alike and the ratios stay fair.
    """
    for batch in settings.batches:
        prompts = [list(prompt) for _ in range(batch)]
        for call in calls.values():
            call(prompts, 2)  # warm-up, outside the clock
        times: dict[str, dict[str, list[float]]] = {
            impl: {"ttft": [], "decode": [], "aggregate": [], "total": []} for impl in calls}
        for _ in range(settings.repetitions):
            for impl, call in calls.items():
                start = time.perf_counter()
                call(prompts, 1)
                ttft = time.perf_counter() - start
                start = time.perf_counter()
                done = call(prompts, settings.gen_tokens)
                total = time.perf_counter() - start
                t = times[impl]
                t["ttft"].append(ttft)
                t["total"].append(total)
                t["decode"].append(per_second(max(done.counts) - 1, done.decode_s))
                t["aggregate"].append(per_second(sum(done.counts), total))
        for impl, t in times.items():
            yield {
                "impl": impl, "batch": batch, "prompt_tokens": len(prompt), "gen_tokens": settings.gen_tokens,
                "pp_tok_s": summary([per_second(batch * len(prompt), x) for x in t["ttft"]]),
                "ttft_s": summary(t["ttft"]),
                "decode_tok_s": summary(t["decode"]),
                "aggregate_tok_s": summary(t["aggregate"]),
                "total_s": summary(t["total"]),
                "repetitions": settings.repetitions,
            }


def ratios(rows: list[dict[str, Any]], baseline: str) -> dict[str, Any]:
    """The issue's targets as ratios of medians, lmpipe over the baseline."""
    ours = {r["batch"]: r for r in rows if r["impl"] == "lmpipe"}
    base = {r["batch"]: r for r in rows if r["impl"] == baseline}
    out: dict[str, Any] = {"impl": "ratio", "baseline": baseline}
    if 1 in ours and 1 in base:
        single = base[1]["decode_tok_s"]["median"]
        out["decode_b1"] = round(ours[1]["decode_tok_s"]["median"] / single, 2)
        out["ttft_b1"] = round(base[1]["ttft_s"]["median"] / ours[1]["ttft_s"]["median"], 2)
        for b in sorted(ours):
            out[f"aggregate_b{b}_vs_baseline_b1_decode"] = round(ours[b]["aggregate_tok_s"]["median"] / single, 2)
    for b in sorted(set(ours) & set(base)):
        out[f"aggregate_b{b}"] = round(ours[b]["aggregate_tok_s"]["median"] / base[b]["aggregate_tok_s"]["median"], 2)
    return out


def run_bench(settings: BenchSettings, notify: Callable[[str], None]) -> Iterator[dict[str, Any]]:
    """Every record lm-bench writes, as it is measured."""
    import torch

    if settings.threads:
        torch.set_num_threads(settings.threads)
    lm = load(settings.model)
    settings = replace(settings, decoding=settled(settings.decoding, lm.model, notify))
    info = manifest(lm.identity, {"decoding": {"cache": settings.decoding.cache, "compile": settings.decoding.compile},
                                  "threads": torch.get_num_threads()}, lm.device, lm.dtype)
    draft = load_draft(settings.decoding, lm, Sampling(), notify)
    info.update(manifest_part(settings.decoding, draft))
    prompt = bench_prompt(lm.tokenizer, settings.prompt_tokens)
    notify("peak memory, one fresh process each")
    ours = memory_probe("lmpipe", settings.model, settings.prompt_tokens)
    yield {"impl": "lmpipe", "case": "memory", "model_mb": model_mb(lm.model), **ours, "manifest": info}
    calls: dict[str, Call] = {"lmpipe": lmpipe_call(lm, settings.decoding, draft.model if draft else None)}
    base_model = None
    if settings.baseline == "transformers":
        # A GGUF file's reference is the file dequantized to float32, as transformers loads it.
        plain = ModelSettings(settings.model.model, settings.model.device, settings.model.dtype, dequantize=True)
        base_model = lm.model if not settings.model.quantize and lm.ref.kind != "gguf" else load(plain).model
        theirs = memory_probe("transformers", plain, settings.prompt_tokens)
        yield {"impl": "transformers", "case": "memory", "model_mb": model_mb(base_model), **theirs,
               "model_peak_ratio": round(ours["model_peak_mb"] / theirs["model_peak_mb"], 2)
               if theirs["model_peak_mb"] > 0 else None}
        calls["transformers"] = transformers_call(base_model, lm.tokenizer)
    elif settings.baseline == "llama-cpp":
        if lm.ref.kind not in ("embedded", "gguf"):
            raise UsageError("--baseline llama-cpp needs a GGUF model (the embedded one or a .gguf file)")
        calls["llama-cpp"] = llama_cpp_call(str(lm.ref.path), settings.threads, llama_cpp_context(settings))
    notify(f"measuring {', '.join(calls)} ({settings.decoding.cache} cache, {settings.model.quantize or lm.dtype})")
    rows: list[dict[str, Any]] = []
    for row in measure(calls, prompt, settings):
        rows.append(row)
        yield {**row, "case": "generate"}
    if settings.baseline:
        yield {**ratios(rows, settings.baseline), "case": "ratio"}
    if settings.perplexity:
        notify("perplexity on the shipped text")
        own = perplexity(lm.model, lm.tokenizer, sample_text())
        record: dict[str, Any] = {"impl": "lmpipe", "case": "perplexity", "perplexity": round(own, 4)}
        if base_model is not None and base_model is not lm.model:
            baseline = perplexity(base_model, lm.tokenizer, sample_text())
            record.update(baseline_perplexity=round(baseline, 4), change=round(own / baseline - 1, 4))
        yield record


def server_ttft(url: str, repetitions: int) -> dict[str, Any]:
    """Time to the first streamed text of a short chat request to a running, otherwise idle server."""
    client = ServerClient(ServerSettings(url, retries=0))
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "temperature": 0}
    # Each answer is read to its end, so the next request finds the server idle rather than finishing this one;
    # the first one warms the server (it may load the model).
    answers = [client.complete(body, chat=True, stream=True) for _ in range(repetitions + 1)][1:]
    times = [a.ttft_s for a in answers if a.ttft_s is not None]  # a streamed answer is always timed
    return {"impl": "lmpipe", "case": "server-ttft", "server": client.base, "seconds": summary(times),
            "repetitions": repetitions}


def pipeline_seconds(records: int, server: str | None, model: str | None = None,
                     found: bool = False) -> dict[str, Any]:
    """A three-stage shell pipeline of `records` records, each stage its own lm-generate process:
    in-process, or through `server` (`found`: the warm server each stage finds with no flags)."""
    tool = shlex.quote(shutil.which("lm-generate") or str(Path(sys.executable).parent / "lm-generate"))
    if server and found:
        extra, how = "", " (each finding the warm server)"
    elif server:
        extra, how = f" --server {shlex.quote(server)}", " (each with --server)"
    else:  # in-process means it: a warm lm-serve recorded in lmpipe's home would otherwise answer instead
        extra, how = " --no-server", " (each with --no-server)"
    extra += f" -m {shlex.quote(model)}" if model else ""
    stages = [f"{tool} -n 8 -o a{extra}", f"{tool} -f a -n 8 -o b{extra}", f"{tool} -f b -n 8 -o c{extra}"]
    command = " | ".join(stages)
    lines = "".join(f"Say something about the number {i}.\n" for i in range(records)).encode()
    start = time.perf_counter()
    done = subprocess.run(command, shell=True, input=lines, capture_output=True)
    seconds = time.perf_counter() - start
    return {"impl": "lmpipe", "case": "pipeline-server" if server else "pipeline", "records": records,
            "stages": 3, "seconds": round(seconds, 3), "ok": done.returncode == 0,
            "command": "lm-generate -n 8 -o a | lm-generate -f a -n 8 -o b | lm-generate -f b -n 8 -o c" + how}
