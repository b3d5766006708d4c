"""Embeddings: texts or token ids in, one vector each out, pooled as the model itself says.

A sentence-transformers folder (modules.json) is loaded by sentence-transformers with its own
modules: pooling, dense layers, normalization. A plain transformers encoder gets
sentence-transformers' default (mean pooling); a decoder gets last-token pooling. lmpipe
tokenizes itself rather than letting sentence-transformers do it, because sentence-transformers
truncates a text past the model's window silently: here such a text is an error, or, when asked,
is cut into windows whose vectors are averaged (weighted by their tokens).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import RecordError, UsageError
from ..models.device import choose_device, choose_dtype
from ..models.loading import LOAD_LOCK, ModelSettings, files_folder, identity
from ..records.manifest import manifest

ENCODINGS = ("float", "base64")


@dataclass(frozen=True)
class EmbedSettings:
    normalize: bool = False  # scale every vector to length 1 (a model whose modules normalize already does)
    chunk: bool = False  # a text past the window: average its windows' vectors instead of failing
    dimensions: int | None = None  # shorten vectors to this many (models trained for it only)

    def manifest(self) -> dict[str, Any]:
        return {"normalize": self.normalize, "chunk": self.chunk, "dimensions": self.dimensions}


def is_decoder(config: Any) -> bool:
    architectures = getattr(config, "architectures", None) or []
    return bool(getattr(config, "is_decoder", False)) or any(
        a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)


def encoded(vector: Any, encoding: str) -> Any:
    """OpenAI's encodings: floats, or base64 of the little-endian float32 bytes. Floats stay a float32
    array, which orjson (OPT_SERIALIZE_NUMPY) writes in the shortest digits that read back exactly."""
    import numpy as np

    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return np.asarray(vector, dtype=np.float32)


def decoded(value: list[float] | str) -> Any:
    """A vector as lm-embed or /v1/embeddings wrote it, as float32."""
    import numpy as np

    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), dtype="<f4")
    return np.asarray(value, dtype=np.float32)


class Embedder:
    """One embedding model, loaded: `embed_texts` and `embed_ids` give float32 vectors."""

    def __init__(self, settings: ModelSettings, notify: Callable[[str], None] = lambda _: None):
        ref = settings.ref()  # first: an unknown model fails before torch loads
        from sentence_transformers.sentence_transformer.modules import Normalize
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        device = choose_device(settings.device)
        dtype = choose_dtype(settings.dtype, device)
        folder = files_folder(ref, notify)
        with LOAD_LOCK:  # never beside another load in this process (lm-serve's request threads)
            model = self._build(ref, folder, device, dtype)
        model.eval()
        self.model, self.ref, self.device = model, ref, device
        self.dtype = str(dtype).removeprefix("torch.")
        self.tokenizer = model.tokenizer
        if self.tokenizer.pad_token is None:  # decoders often have none; padding is masked out anyway
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.normalizes = any(isinstance(m, Normalize) for m in model)
        self.dimension = int(model.get_embedding_dimension())
        self.window = int(model.max_seq_length or self.tokenizer.model_max_length)
        self.prefix, self.suffix = self._special_tokens()
        self.identity = {**identity(ref, folder), "pooling": self.pooling}

    def _build(self, ref: Any, folder: Any, device: str, dtype: Any) -> Any:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

        kwargs: dict[str, Any] = {"model_kwargs": {"dtype": dtype}, "local_files_only": True}
        try:
            if (folder / "modules.json").is_file():
                model = SentenceTransformer(str(folder), device=device, **kwargs)
                pools = [m.pooling_mode for m in model if isinstance(m, Pooling)]
                self.pooling = str(pools[0]) if pools else "none"
            else:
                from transformers import AutoConfig

                config = AutoConfig.from_pretrained(folder)
                body = Transformer(str(folder), model_kwargs={"dtype": dtype})
                self.pooling = "lasttoken" if is_decoder(config) else "mean"
                pool = Pooling(body.get_embedding_dimension(), pooling_mode=self.pooling)
                model = SentenceTransformer(modules=[body, pool], device=device)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot load {ref.name} as an embedding model: {str(exc).splitlines()[0]}") from None
        return model

    def _special_tokens(self) -> tuple[list[int], list[int]]:
        """What the tokenizer puts around a text's tokens ([CLS] ... [SEP], <bos> ..., ... <eos>):
        found by tokenizing a probe with and without them, so token ids given bare get them too."""
        probe = "lmpipe"
        bare = self.tokenizer(probe, add_special_tokens=False)["input_ids"]
        full = self.tokenizer(probe, add_special_tokens=True)["input_ids"]
        for start in range(len(full) - len(bare) + 1):
            if full[start:start + len(bare)] == bare:
                return full[:start], full[start + len(bare):]
        return [], []

    @property
    def room(self) -> int:
        """Tokens of text that fit in one window besides the special tokens."""
        return self.window - len(self.prefix) - len(self.suffix)

    def token_ids(self, text: str) -> list[int]:
        """A text's tokens, without special tokens."""
        return self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]

    def check_dimensions(self, dimensions: int | None) -> None:
        if dimensions is None or dimensions == self.dimension:
            return
        if not 0 < dimensions < self.dimension:
            raise UsageError(f"dimensions must be between 1 and {self.dimension} for {self.ref.name}")
        if not self.matryoshka():
            raise UsageError(f"{self.ref.name} was not trained for shortened vectors; "
                             f"it gives {self.dimension} dimensions only")

    def matryoshka(self) -> bool:
        """Whether the model was trained so that a prefix of its vector is itself an embedding
        (sentence-transformers writes the loss it was trained with into the model card)."""
        card = self.ref.path / "README.md"
        try:
            return "MatryoshkaLoss" in card.read_text(errors="replace") if card.is_file() else False
        except OSError:
            return False

    def embed_ids(self, inputs: Sequence[Sequence[int]], settings: EmbedSettings, batch_size: int = 32) -> list[Any]:
        """One vector per input (token ids without special tokens). An input past the window raises
        RecordError, or, with settings.chunk, is the token-weighted mean of its windows' vectors."""
        import numpy as np

        self.check_dimensions(settings.dimensions)
        windows: list[list[int]] = []
        parts_of: list[list[int]] = []  # each input's windows, as indices into `windows`
        for ids in inputs:
            ids = list(ids)
            if len(ids) > self.room and not settings.chunk:
                raise RecordError(f"text is {len(ids) + len(self.prefix) + len(self.suffix)} tokens; "
                                  f"{self.ref.name} reads at most {self.window} (--chunk averages windows)")
            parts_of.append([])
            for start in range(0, max(len(ids), 1), self.room):
                parts_of[-1].append(len(windows))
                windows.append(self.prefix + ids[start:start + self.room] + self.suffix)
        vectors = self._forward(windows, batch_size)
        out = []
        for parts in parts_of:
            if len(parts) == 1:
                vector = vectors[parts[0]]
            else:
                weights = np.array([len(windows[k]) for k in parts], dtype=np.float32)
                vector = (vectors[parts] * weights[:, None]).sum(0) / weights.sum()
                if self.normalizes:
                    vector = vector / np.linalg.norm(vector)
            if settings.dimensions:
                vector = vector[:settings.dimensions]
                vector = vector / np.linalg.norm(vector) if self.normalizes else vector
            if settings.normalize:
                vector = vector / (np.linalg.norm(vector) or 1.0)
            out.append(vector.astype(np.float32))
        return out

    def embed_texts(self, texts: Sequence[str], settings: EmbedSettings, batch_size: int = 32) -> list[Any]:
        return self.embed_ids([self.token_ids(t) for t in texts], settings, batch_size)

    def _forward(self, windows: list[list[int]], batch_size: int) -> Any:
        """The model's modules over token-id windows, longest first so that a batch pads little."""
        import numpy as np
        import torch

        order = sorted(range(len(windows)), key=lambda k: -len(windows[k]))
        vectors = np.zeros((len(windows), self.dimension), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                features = self.tokenizer.pad({"input_ids": [windows[k] for k in rows]}, return_tensors="pt")
                features = {k: v.to(self.device) for k, v in features.items()}
                out = self.model(features)["sentence_embedding"]
                vectors[rows] = out.float().cpu().numpy()
        return vectors

    def manifest(self, settings: EmbedSettings) -> dict[str, Any]:
        return manifest(self.identity, settings.manifest(), self.device, self.dtype)
