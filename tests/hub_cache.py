"""A Hugging Face cache built for tests by lm-pull from the local test hub: two models, one with
two revisions that share a blob, and one converted GGUF model in lmpipe's own cache."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from conftest import run_tool
from hub_server import TestHub

SHARED = os.urandom(40_000)  # in both revisions of acme/tiny: one blob
TINY_MAIN = {"config.json": b'{"v": 1}', "model.safetensors": SHARED}
TINY_DEV = {"config.json": b'{"v": 2, "dev": true}', "model.safetensors": SHARED, "extra.bin": os.urandom(5_000)}
OTHER = {"config.json": b"{}", "weights.bin": os.urandom(90_000)}


@dataclass
class Caches:
    hub: Path  # HF_HUB_CACHE
    home: Path  # LMPIPE_HOME
    main: str
    dev: str

    @property
    def env(self) -> dict[str, str]:
        return {"HF_HUB_CACHE": str(self.hub), "LMPIPE_HOME": str(self.home)}


def build(root: Path) -> Caches:
    with TestHub() as hub:
        tiny = hub.repo("acme/tiny")
        main, dev = tiny.add_commit("m", TINY_MAIN, ref="main"), tiny.add_commit("d", TINY_DEV, ref="dev")
        hub.repo("acme/other").add_commit("o", OTHER, ref="main")
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(root / "hub")}
        for name in ("acme/tiny", "acme/tiny@dev", "acme/other"):
            done = run_tool("lm-pull", name, "--progress", "none", env=env)
            assert done.returncode == 0, done.stderr
    converted = root / "home" / "models" / "tiny.Q4_0-0123456789abcdef"
    converted.mkdir(parents=True)
    (converted / "model.safetensors").write_bytes(os.urandom(20_000))
    info = {"source": "/somewhere/tiny.Q4_0.gguf", "sha256": "ab" * 32}
    (converted / "lmpipe-conversion.json").write_text(json.dumps(info))
    (root / "home" / "models" / "half-done").mkdir()  # no marker: not a model
    (root / "home" / "models" / "half-done" / "model.safetensors").write_bytes(b"x" * 10)
    return Caches(root / "hub", root / "home", main, dev)


def copy(caches: Caches, root: Path) -> Caches:
    """A copy to delete from (the snapshots' relative symlinks still point into the copy)."""
    shutil.copytree(caches.hub, root / "hub", symlinks=True)
    shutil.copytree(caches.home, root / "home", symlinks=True)
    return Caches(root / "hub", root / "home", caches.main, caches.dev)


def disk_bytes(root: Path) -> dict[Path, int]:
    """Every regular file under root and its size (symlinks are not files of their own)."""
    return {p: p.lstat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink()}
