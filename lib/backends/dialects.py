"""What each kind of OpenAI-compatible server understands beyond OpenAI's own fields.

The chat and completion requests are OpenAI's everywhere; constraints, sampling knobs past
OpenAI's, and the meaning of `finish_reason` and token counts are not. A `ServerKind` is found
once per server (`detect`) or named with `--server-kind`, and everything that differs between
lm-serve, vLLM, llama.cpp's server and Ollama is decided here, so a record through any of them
is the record lmpipe would have written in-process, or a one-line reason why it cannot be.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError

KINDS = ("lmpipe", "vllm", "llama.cpp", "ollama", "openai")


@dataclass(frozen=True)
class ServerKind:
    name: str  # one of KINDS; "openai" is any other server: OpenAI's fields only
    version: str | None = None

    def manifest(self) -> dict[str, Any]:
        return {"kind": self.name, "version": self.version}


Get = Callable[[str], Any]  # a GET of a path on the server's root ("/version"), its JSON or None


def detect(models: list[dict[str, Any]], get: Get) -> ServerKind:
    """The kind of server from its /v1/models entries (vLLM, llama.cpp and Ollama each sign them
    in `owned_by`), then its version from the kind's own endpoint."""
    owners = {str(m.get("owned_by", "")) for m in models}
    if "lmpipe" in owners:
        return ServerKind("lmpipe", _field(get("/health"), "version"))
    if "vllm" in owners:
        return ServerKind("vllm", _field(get("/version"), "version"))
    if "llamacpp" in owners:
        props = get("/props")
        return ServerKind("llama.cpp", _field(props, "build_info") or _field(props, "version"))
    ollama = get("/api/version")
    if ollama is not None and "version" in ollama:
        return ServerKind("ollama", ollama["version"])
    return ServerKind("openai")


def _field(data: Any, name: str) -> str | None:
    return str(data[name]) if isinstance(data, dict) and data.get(name) is not None else None


def _version(text: str | None) -> tuple[int, ...]:
    parts = []
    for piece in (text or "").split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def constraint_fields(kind: ServerKind, c: Any) -> dict[str, Any]:
    """The request fields that make this kind of server enforce constraint `c` (kind json_schema,
    regex or choice); UsageError where it has no way to."""
    if c.kind == "json_schema":
        schema = c.schema or {}
        if kind.name == "llama.cpp":
            return {"json_schema": schema}
        return {"response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}}
    field = "regex" if c.kind == "regex" else "choice"
    value: Any = c.source if c.kind == "regex" else list(c.choices)
    if kind.name == "lmpipe":
        return {field: value}
    if kind.name == "vllm":
        # vLLM 0.10.2 moved guided_* into structured_outputs, and later releases dropped guided_*.
        if kind.version and _version(kind.version) < (0, 10, 2):
            return {f"guided_{field}": value}
        return {"structured_outputs": {field: value}}
    if kind.name == "llama.cpp" and c.kind == "choice":
        return {"grammar": "root ::= " + " | ".join(_gbnf_string(s) for s in c.choices)}
    raise UsageError(f"--{field} cannot be enforced by {describe(kind)}: it has no {field} constraint"
                     + (" (llama.cpp takes --choice and --json-schema)" if kind.name == "llama.cpp" else
                        " (it takes --json-schema)"))


def _gbnf_string(s: str) -> str:
    escaped = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def sampling_fields(kind: ServerKind, s: Any) -> dict[str, Any]:
    """Sampling settings `s` in the fields this kind of server reads, each with lmpipe's meaning
    (llama.cpp's own defaults, top_k 40 and min_p 0.05, are turned off unless asked for)."""
    out: dict[str, Any] = {"temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_new_tokens,
                           "seed": s.seed, "presence_penalty": s.presence_penalty,
                           "frequency_penalty": s.frequency_penalty}
    if s.stop:
        out["stop"] = list(s.stop)
    if s.logit_bias:  # OpenAI's own field: every kind reads it
        out["logit_bias"] = {str(token): bias for token, bias in s.logit_bias}
    if s.min_p and kind.name in ("lmpipe", "vllm"):  # off is both servers' default: sent only when on
        out["min_p"] = s.min_p
    if kind.name == "lmpipe":
        return {**out, "top_k": s.top_k, "repetition_penalty": s.repetition_penalty}
    if kind.name == "vllm":
        return {**out, "top_k": s.top_k if s.top_k > 0 else -1, "repetition_penalty": s.repetition_penalty}
    if kind.name == "llama.cpp":
        return {**out, "top_k": s.top_k, "min_p": s.min_p, "repeat_penalty": s.repetition_penalty}
    for name, value, off in (("top_k", s.top_k, 0), ("min_p", s.min_p, 0.0),
                             ("repetition_penalty", s.repetition_penalty, 1.0)):
        if value != off:
            raise UsageError(f"--{name.replace('_', '-')} cannot be sent to {describe(kind)}: "
                             "its OpenAI API has no such field")
    return out


def finish_reason(kind: ServerKind, choice: dict[str, Any], asked_stop: bool) -> str:
    """lmpipe's finish reason (eos, stop, length, tool_calls) for a server's choice. OpenAI's "stop"
    covers both the end token and a stop string; vLLM tells them apart in `stop_reason`, and with
    no stop strings asked there is only the end token."""
    reason = choice.get("finish_reason") or "stop"
    if reason != "stop":
        return reason
    if kind.name == "vllm" or kind.name == "lmpipe":
        return "eos" if choice.get("stop_reason") is None else "stop"
    return "stop" if asked_stop else "eos"


def output_tokens(kind: ServerKind, completion_tokens: int | None, finish: str) -> int | None:
    """Generated tokens counted as in-process (the end token is not counted); vLLM and llama.cpp count it."""
    if completion_tokens is not None and kind.name in ("vllm", "llama.cpp") and finish == "eos":
        return completion_tokens - 1
    return completion_tokens


def streams_tools(kind: ServerKind) -> bool:
    """Whether answers that may call tools can be streamed (llama.cpp's server answers 500
    "Cannot use tools with stream"); unstreamed ones have no time to first token."""
    return kind.name != "llama.cpp"


def describe(kind: ServerKind) -> str:
    names = {"lmpipe": "lm-serve", "vllm": "vLLM", "llama.cpp": "llama.cpp's server", "ollama": "Ollama",
             "openai": "this server"}
    return names[kind.name] + (f" {kind.version}" if kind.version and kind.name != "openai" else "")
