"""The models screen's view of running servers: every lm-serve recorded in lmpipe's home (and
LMPIPE_SERVER, when set), asked for its /v1/models. A server that does not answer is named with
why, not raised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

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


def servers() -> list[str]:
    """The API bases to ask (lmpipe.backends.remote.api_base, as --server takes a URL):
    LMPIPE_SERVER first, then the servers running here."""
    from lmpipe.backends import warm
    from lmpipe.backends.remote import api_base

    urls = [os.environ["LMPIPE_SERVER"]] if os.environ.get("LMPIPE_SERVER") else []
    return list(dict.fromkeys(api_base(url) for url in [*urls, *(entry["url"] for entry in warm.running())]))


def served_models(bases: list[str] | None = None) -> list[ServedModel]:
    import httpx

    out: list[ServedModel] = []
    for base in servers() if bases is None else bases:
        url = base.removesuffix("/v1")  # shown as the server's root, as lm-serve says where it listens
        try:
            response = httpx.get(base + "/models", timeout=PROBE_TIMEOUT)
            response.raise_for_status()
            data: list[dict[str, Any]] = response.json()["data"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            out.append(ServedModel(url, "?", False, error=f"no answer ({type(exc).__name__})"))
            continue
        for m in data:
            out.append(ServedModel(url, str(m.get("id")), bool(m.get("loaded", True)), m.get("keep_alive_s"),
                                   m.get("expires_in_s")))
    return out
