"""Warm servers: a running lm-serve records where it listens and what it holds in lmpipe's home,
and a tool that would load the same model with the same settings answers through it instead.

Each server writes one JSON file in paths.servers_dir() (written whole under a temporary name,
then renamed, so a reader never sees half of one) and removes it when it stops. The file holds
the URL, the server's pid and `holds`: for each model it serves, the model's resolved id and every
setting that could change a token (device, dtype, attention, quantization, the decoding settings),
exactly as `holds()` computes them on both sides, so a tool uses a server only where its records
would be the same (and names the model in its requests: a server may serve several).
A server killed without stopping leaves its file behind: the next tool that finds it sees its
pid gone (or connects once, is refused) and removes it. Like Ollama's daemon, but opt-in:
nothing starts a server.

Nothing found there is trusted as found: the folder is this user's with mode 0700, and an entry
is used only when it is a file of this user's with mode 0600, its pid is alive and its URL is
loopback (another local process that took a dead server's port, or planted a file, must not
receive the next tool's prompts). Each entry carries a random token the server accepts as an
API key, which tools that found it this way send (a server with --api-key serves them too).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import secrets
import socket
import stat
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .. import paths
from ..models.loading import load
from ..models.resolve import resolve
from .agent import through_server
from .generate import GenerateTask

CONNECT_TIMEOUT = 1.0  # seconds; a local refusal answers in microseconds, this only bounds a hung host


def holds(model_id: str, model: Any, decoding: Any, chat_template: str | None = None) -> dict[str, Any]:
    """What a server holds, as both sides compare it: the resolved model id and the settings that
    decide its tokens (lmpipe.models.loading.ModelSettings without the name typed; Decoding; the
    sha256 of a --chat-template, which a tool never sends: a server with one is not the model's)."""
    template = hashlib.sha256(chat_template.encode("utf-8")).hexdigest() if chat_template is not None else None
    return {"model": model_id, "device": model.device, "dtype": model.dtype, "attention": model.attention,
            "quantize": model.quantize, "decoding": asdict(decoding), "chat_template": template,
            "adapters": [[str(Path(a.path).resolve()), a.scale] for a in getattr(model, "adapters", ())]}


@dataclass(frozen=True)
class Found:
    """A running server found in lmpipe's home: where it listens, and the token it accepts."""

    url: str
    token: str | None


def new_token() -> str:
    return secrets.token_urlsafe(32)


def _own_folder(create: bool) -> Path | None:
    """The servers' folder, this user's alone (0700); None when it is missing or not this user's."""
    folder = paths.servers_dir()
    if create:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        facts = folder.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(facts.st_mode) or facts.st_uid != os.getuid():
        return None
    if stat.S_IMODE(facts.st_mode) != 0o700:
        folder.chmod(0o700)
    return folder


def register(url: str, held: list[dict[str, Any]], token: str) -> Path | None:
    """Record a server that now listens at `url`, holding `held` (one `holds()` per model) and
    accepting `token`; returns its file (remove it with `unregister`), or None when lmpipe's
    servers folder is not this user's (nothing is recorded then)."""
    folder = _own_folder(create=True)
    if folder is None:
        return None
    where = urlsplit(url)
    path = folder / f"{where.hostname}-{where.port}.json"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)  # mode 0600
    with os.fdopen(fd, "w") as f:
        json.dump({"url": url, "pid": os.getpid(), "token": token, "holds": held}, f)
    os.replace(tmp, path)
    return path


def unregister(path: Path | None) -> None:
    """Remove a server's file, unless another server has since taken its address."""
    if path is None:
        return
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


def loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def trusted(path: Path) -> dict[str, Any] | None:
    """The entry in `path` if it may be used: a file of this user's, mode 0600, naming a loopback
    URL and a pid that is alive; a dead server's file is removed on the way. Else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        facts = os.fstat(fd)
        if not stat.S_ISREG(facts.st_mode) or facts.st_uid != os.getuid() or stat.S_IMODE(facts.st_mode) != 0o600:
            return None
        with os.fdopen(os.dup(fd), "rb") as f:
            entry = json.loads(f.read())
    except (OSError, ValueError):
        return None  # being replaced by its server right now, or not ours
    finally:
        os.close(fd)
    if not isinstance(entry, dict) or not isinstance(entry.get("url"), str) or not loopback(entry["url"]):
        return None
    pid = entry.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        path.unlink(missing_ok=True)
        return None
    except PermissionError:
        return None  # alive, but another user's process
    return entry


def running(wanted: Callable[[dict[str, Any]], bool] = lambda entry: True) -> list[dict[str, Any]]:
    """The trusted entries (url, pid, token, holds) of the servers running now that `wanted`
    accepts; only those are connected to. Files of servers that are gone are removed on the way
    (a dead pid, or one refused local connect)."""
    folder = _own_folder(create=False)
    if folder is None:
        return []
    out = []
    for path in sorted(folder.glob("*.json")):
        entry = trusted(path)
        if entry is None or not wanted(entry):
            continue
        if listening(entry["url"]):
            out.append(entry)
        else:
            path.unlink(missing_ok=True)
    return out


def find(held: dict[str, Any], default: bool = False) -> Found | None:
    """A running server that holds exactly `held`, or None; with `default`, only one whose first
    model (the one a request naming none gets) is `held`."""
    def holding(entry: dict[str, Any]) -> bool:
        models = entry.get("holds")
        models = models if isinstance(models, list) else [models]  # a server of one model wrote it bare
        return held in (models[:1] if default else models)

    found = running(holding)
    if not found:
        return None
    token = found[0].get("token")
    return Found(found[0]["url"], token if isinstance(token, str) else None)


def agent_variants(base: Any, model_settings: Any, served_id: str):
    """AgentTasks' variants for a warm server found on the tool's behalf: records for the served
    model go to it; a record whose agent names another model loads that one here, as it would
    have without the server (through an explicit --server it is sent by name instead)."""
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
