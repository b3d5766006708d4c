"""Warm servers: a running lm-serve records where it listens and what it holds in lmpipe's home,
and a tool that would load the same model with the same settings answers through it instead.

Each server writes one JSON file in paths.servers_dir() (written whole under a temporary name,
then renamed, so a reader never sees half of one) and removes it when it stops. The file holds
the URL, the server's pid and `holds`: for each model it serves, the model's resolved id and every
setting that could change a token (device, dtype, attention, quantization, the decoding settings),
exactly as `holds()` computes them on both sides, so a tool uses a server only where its records
would be the same (and names the model in its requests: a server may serve several).
A server killed without stopping leaves its file behind: the next tool that finds it connects
once, is refused, and removes it. Like Ollama's daemon, but opt-in: nothing starts a server.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from .. import paths

CONNECT_TIMEOUT = 1.0  # seconds; a local refusal answers in microseconds, this only bounds a hung host


def holds(model_id: str, model: Any, decoding: Any, chat_template: str | None = None) -> dict[str, Any]:
    """What a server holds, as both sides compare it: the resolved model id and the settings that
    decide its tokens (lmpipe.models.loading.ModelSettings without the name typed; Decoding; the
    sha256 of a --chat-template, which a tool never sends: a server with one is not the model's)."""
    template = hashlib.sha256(chat_template.encode("utf-8")).hexdigest() if chat_template is not None else None
    return {"model": model_id, "device": model.device, "dtype": model.dtype, "attention": model.attention,
            "quantize": model.quantize, "decoding": asdict(decoding), "chat_template": template,
            "adapters": [[str(Path(a.path).resolve()), a.scale] for a in getattr(model, "adapters", ())]}


def register(url: str, held: list[dict[str, Any]]) -> Path:
    """Record a server that now listens at `url`, holding `held` (one `holds()` per model); returns
    its file (remove it with `unregister`)."""
    folder = paths.servers_dir()
    folder.mkdir(parents=True, exist_ok=True)
    where = urlsplit(url)
    path = folder / f"{where.hostname}-{where.port}.json"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": url, "pid": os.getpid(), "holds": held}, f)
    os.replace(tmp, path)
    return path


def unregister(path: Path) -> None:
    """Remove a server's file, unless another server has since taken its address."""
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def listening(url: str) -> bool:
    where = urlsplit(url)
    try:
        with socket.create_connection((where.hostname, where.port), timeout=CONNECT_TIMEOUT):
            return True
    except OSError:
        return False


def running(wanted: Callable[[dict[str, Any]], bool] = lambda entry: True) -> list[dict[str, Any]]:
    """The entries (url, pid, holds) of the servers running now that `wanted` accepts; only those
    are connected to. Files of servers that are gone are removed on the way (one refused local
    connect each)."""
    folder = paths.servers_dir()
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being replaced by its server right now, or not ours
        if not wanted(entry):
            continue
        if listening(entry["url"]):
            out.append(entry)
        else:
            path.unlink(missing_ok=True)
    return out


def find(held: dict[str, Any], default: bool = False) -> str | None:
    """The URL of a running server that holds exactly `held`, or None; with `default`, only one
    whose first model (the one a request naming none gets) is `held`."""
    def holding(entry: dict[str, Any]) -> bool:
        models = entry.get("holds")
        models = models if isinstance(models, list) else [models]  # a server of one model wrote it bare
        return held in (models[:1] if default else models)

    found = running(holding)
    return found[0]["url"] if found else None


def agent_variants(base: Any, model_settings: Any, served_id: str):
    """AgentTasks' variants for a warm server found on the tool's behalf: records for the served
    model go to it; a record whose agent names another model loads that one here, as it would
    have without the server (through an explicit --server it is sent by name instead)."""
    from dataclasses import replace

    from ..models.loading import load
    from ..models.resolve import resolve
    from .agent import through_server
    from .generate import GenerateTask

    remote = through_server(base)
    loaded: dict[str, Any] = {}

    def variant(model: str | None, settings: Any) -> Any:
        ref = resolve(model) if model is not None else None
        if ref is None or ref.id == served_id:
            return remote(None, settings)
        if ref.id not in loaded:
            loaded[ref.id] = load(replace(model_settings, model=model))
        return GenerateTask(loaded[ref.id], settings)

    return variant
