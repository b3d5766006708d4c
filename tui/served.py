"""The models screen's view of running servers: every lm-serve recorded in lmpipe's home (and
LMPIPE_SERVER, when set), asked for its /v1/models. A server that does not answer is named with
why, not raised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from lmpipe.backends import warm
from lmpipe.backends.remote import api_base

PROBE_TIMEOUT = 2.0  # seconds; these are local servers


@dataclass(frozen=True)
class ServedModel:
    server: str  # its base URL
    id: str
    loaded: bool
    keep_alive_s: float | None = None
    expires_in_s: float | None = None
    error: str | None = None  # the server did not answer: why (id is then "?")

    @property
    def state(self) -> str:
        if self.error:
            return self.error
        if not self.loaded:
            return "not loaded"
        return f"loaded, unloads in {self.expires_in_s:.0f} s" if self.expires_in_s is not None else "loaded"


def servers() -> dict[str, str | None]:
    """The API bases to ask (lmpipe.backends.remote.api_base, as --server takes a URL), each with
    the key to send: LMPIPE_SERVER first (LMPIPE_API_KEY's), then the servers running here (the
    token of their entry in lmpipe's home)."""
    found: dict[str, str | None] = {}
    if os.environ.get("LMPIPE_SERVER"):
        found[api_base(os.environ["LMPIPE_SERVER"])] = os.environ.get("LMPIPE_API_KEY") or None
    for entry in warm.running():
        found.setdefault(api_base(entry["url"]), entry.get("token"))
    return found


def served_models(bases: dict[str, str | None] | list[str] | None = None) -> list[ServedModel]:
    import httpx

    out: list[ServedModel] = []
    keys = servers() if bases is None else bases if isinstance(bases, dict) else dict.fromkeys(bases)
    for base, key in keys.items():
        url = base.removesuffix("/v1")  # shown as the server's root, as lm-serve says where it listens
        headers = {"Authorization": f"Bearer {key}"} if key else None
        try:
            response = httpx.get(base + "/models", timeout=PROBE_TIMEOUT, headers=headers)
            response.raise_for_status()
            data: list[dict[str, Any]] = response.json()["data"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            out.append(ServedModel(url, "?", False, error=f"no answer ({type(exc).__name__})"))
            continue
        for m in data:
            out.append(ServedModel(url, str(m.get("id")), bool(m.get("loaded", True)), m.get("keep_alive_s"),
                                   m.get("expires_in_s")))
    return out
