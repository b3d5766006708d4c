"""lm-bench --concurrency: a running server's throughput under concurrent streamed chats.

The same requests go to any OpenAI-compatible server (lm-serve, vLLM, llama-server), so two
servers of the same model on the same machine compare like with like: greedy chats with
different prompts, `concurrency` in flight at a time, twice that many in all, each streamed
with its usage in the last chunk. The figure is completion tokens over the wall time of the
whole load.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..backends.remote import ServerClient, ServerSettings
from ..engine.timing import per_second
from ..errors import UsageError
from .bench_cases import summary

TOPICS = ("the sea", "a lighthouse", "winter", "a library", "the moon", "a market", "a storm", "trains",
          "bees", "a garden", "mountains", "a violin", "bread", "rivers", "a clock", "the desert")


def load_requests(concurrency: int, gen_tokens: int, model: str) -> list[dict[str, Any]]:
    """Twice `concurrency` chat requests, each with its own prompt (a server's prompt cache shares only
    the template)."""
    return [{"model": model, "max_tokens": gen_tokens, "temperature": 0,
             "messages": [{"role": "user", "content": f"Write a long story about {TOPICS[i % len(TOPICS)]} "
                                                      f"(number {i + 1})."}]}
            for i in range(2 * concurrency)]


def server_load(url: str, concurrency: int, gen_tokens: int, model: str) -> dict[str, Any]:
    # lmpipe's own client streams each request with its usage and times its first token; no
    # retries, so a refused request fails the load rather than hiding in its time.
    client = ServerClient(ServerSettings(url, concurrency=concurrency, retries=0))
    requests = load_requests(concurrency, gen_tokens, model)

    def one(body: dict[str, Any]) -> tuple[float, int]:
        answer = client.complete(body, chat=True, stream=True)
        tokens = answer.usage.get("completion_tokens")
        if not isinstance(tokens, int):
            raise UsageError(f"--concurrency: {client.base} sent no usage (stream_options.include_usage)")
        assert answer.ttft_s is not None  # a streamed answer is timed
        return answer.ttft_s, tokens

    one(requests[0] | {"max_tokens": 2})  # warms the server (it may load the model), off the clock
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        done = list(pool.map(one, requests))
    seconds = round(time.perf_counter() - start, 3)
    tokens = sum(t for _, t in done)
    return {"impl": "server", "case": "server-load", "server": client.base, "concurrency": concurrency,
            "requests": len(requests), "gen_tokens": gen_tokens, "tokens": tokens, "seconds": seconds,
            "aggregate_tok_s": per_second(tokens, seconds), "ttft_s": summary([f for f, _ in done])}
