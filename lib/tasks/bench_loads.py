"""lm-bench --loads: how long a model takes to load, each load a fresh process.

The first load fills an empty lmpipe cache (a GGUF's description, its packed layers); the second
maps what the first wrote: what a user waits for the first time they name a model, and every
time after. Both run after torch and transformers are imported (a cost of any model, which
`--cold` measures) in a fresh lmpipe home of their own, which shares this machine's built
kernels and their measured choice: those are made once per machine, not once per model.
With --baseline llama-cpp, llama.cpp loads the same file in a fresh process too.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .. import paths
from ..models.loading import ModelSettings
from .bench_cases import probe_output

PROBE = ("import sys, json, time; import torch, transformers; "
         "from lmpipe.models.loading import ModelSettings, load; "
         "settings = ModelSettings(**json.loads(sys.argv[1])); "
         "start = time.perf_counter(); load(settings, lambda m: None); print(time.perf_counter() - start)")
LLAMA_CPP_PROBE = ("import sys, time; from llama_cpp import Llama; start = time.perf_counter(); "
                   "Llama(model_path=sys.argv[1], n_ctx=int(sys.argv[2]), verbose=False); "
                   "print(time.perf_counter() - start)")


def _seconds(command: list[str], env: dict[str, str] | None = None) -> float:
    return float(probe_output(command, "the load probe", env, timeout=3600))


def _bytes_under(folder: Path, part: str) -> int:
    return sum(f.stat().st_size for d in folder.glob(f"*{part}*") if d.is_dir() for f in d.rglob("*") if f.is_file())


def load_records(settings: ModelSettings, llama_cpp_ctx: int | None) -> list[dict[str, Any]]:
    """The `load` records: lmpipe's first and second load (and its packed cache's size, against a
    GGUF file's), then llama.cpp's load where `llama_cpp_ctx` is given."""
    paths.kernels_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lm-bench-loads-") as fresh:
        home = Path(fresh)
        (home / "kernels").symlink_to(paths.kernels_dir(), target_is_directory=True)
        env = {**os.environ, "LMPIPE_HOME": str(home)}
        command = [sys.executable, "-c", PROBE, json.dumps(asdict(settings))]
        first, second = _seconds(command, env), _seconds(command, env)
        record: dict[str, Any] = {"impl": "lmpipe", "case": "load", "first_s": round(first, 3),
                                  "second_s": round(second, 3)}
        ref = settings.ref()
        if ref.kind == "gguf":  # the embedded model is converted to float32, not packed
            cache = _bytes_under(home / "models", "-packed-")
            record.update(cache_mb=round(cache / 2**20, 1), cache_ratio=round(cache / ref.path.stat().st_size, 3))
    records = [record]
    if llama_cpp_ctx is not None and ref.kind in ("gguf", "embedded"):
        probe = [sys.executable, "-c", LLAMA_CPP_PROBE, str(ref.path), str(llama_cpp_ctx)]
        records.append({"impl": "llama-cpp", "case": "load", "seconds": round(_seconds(probe), 3)})
        records.append({"impl": "ratio", "case": "load", "baseline": "llama-cpp",
                        "first_load": round(first / records[-1]["seconds"], 2)})
    return records
