"""LoRA adapters in PEFT's format (adapter_config.json, adapter_model.safetensors), read with
the `peft` library's own config and weight loading, and run beside the base model's weights.

The base weights stay as they are (float or quantized); each adapter's A and B matrices are
stacked per layer, one slot per adapter (LoraStack), and every row of a batch picks its slot, as
vLLM's multi-LoRA does: lm-serve runs requests of several adapters and of none in one batch.
The update of a slot is its adapter's, times its scale (peft's `set_scale`: lora_alpha / r times
SCALE), in float32, added to the base layer's output. peft's merge_and_unload still writes a
merged model once (lm-pull --merge), and runs adapters that are more than a low-rank update.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError, first_line
from .derived import sha256_file

CONFIG = "adapter_config.json"
WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
EMBEDDING = "it adapts an embedding"  # plain_lora's answer for an embedding's LoRA


@dataclass(frozen=True)
class Adapter:
    path: str
    scale: float = 1.0

    @classmethod
    def parse(cls, text: str) -> Adapter:
        """--adapter PATH[:SCALE] (a path that itself ends in `:NUMBER` needs the scale written)."""
        path, sep, scale = text.rpartition(":")
        if sep:
            try:
                return cls(path, float(scale)).checked()
            except ValueError:
                pass
        return cls(text).checked()

    def checked(self) -> Adapter:
        folder = Path(self.path)
        if not (folder / CONFIG).is_file():
            raise UsageError(f"--adapter {self.path}: no {CONFIG} there (a PEFT adapter folder)")
        if not any((folder / name).is_file() for name in WEIGHTS):
            raise UsageError(f"--adapter {self.path}: no {WEIGHTS[0]} there (a PEFT adapter folder)")
        return self

    def identity(self) -> dict[str, Any]:
        """The manifest's: where, how strongly, and the weights' sha256."""
        weights = next(Path(self.path) / name for name in WEIGHTS if (Path(self.path) / name).is_file())
        return {"path": str(Path(self.path).resolve()), "scale": self.scale, "sha256": sha256_file(weights)}


def merge(model: Any, adapters: tuple[Adapter, ...]) -> Any:
    """`model` with each adapter's update merged into its weights (peft's merge_and_unload):
    lm-pull --merge's model, and the way for adapters lmpipe cannot keep apart (plain_lora)."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    for adapter in adapters:
        if getattr(model.config, "tie_word_embeddings", False) and plain_lora(adapter) == EMBEDDING:
            # merged into the shared matrix it would change the head too, which PeftModel's keeps
            raise UsageError(f"--adapter {adapter.path}: it adapts the embedding, which this model's head shares: "
                             "lmpipe cannot merge it")
        try:
            wrapped = PeftModel.from_pretrained(model, adapter.path, adapter_name="lmpipe")
        except (ValueError, RuntimeError, KeyError, OSError) as exc:
            raise UsageError(f"--adapter {adapter.path}: does not fit this model: {first_line(exc)}") from None
        if adapter.scale != 1.0:
            for module in wrapped.modules():
                if isinstance(module, LoraLayer):
                    module.set_scale("lmpipe", adapter.scale)
        model = wrapped.merge_and_unload()
    return model


def plain_lora(adapter: Adapter) -> str | None:
    """Why lmpipe cannot run `adapter` beside the base weights (None: it can): plain LoRA on linear
    layers only; DoRA, LoRA biases, modules saved whole and embeddings' LoRA change more than a
    linear layer's low-rank update."""
    from peft import LoraConfig

    try:
        config = LoraConfig.from_pretrained(adapter.path)
    except (ValueError, TypeError, OSError) as exc:
        raise UsageError(f"--adapter {adapter.path}: {first_line(exc)}") from None
    for feature in ("use_dora", "lora_bias", "fan_in_fan_out", "modules_to_save", "layer_replication",
                    "trainable_token_indices"):
        if getattr(config, feature, None):
            return f"{feature} is set"
    weights = Path(adapter.path) / WEIGHTS[0]
    if weights.is_file():
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            if any(".lora_embedding_" in key for key in f.keys()):
                return EMBEDDING
    return None


@dataclass(frozen=True)
class Lora:
    """One layer's low-rank updates, one per adapter slot (slot 0: none, zeros), rank padded with
    zeros: delta = (x @ a[i]^T) @ b[:, i]^T, the adapter's scale folded into b. Float32, beside a
    base layer of any kind (float or quantized): only its output is added to."""

    a: Any  # [slots, rank, in]
    b: Any  # [out, slots, rank]

    def __call__(self, x, slots):
        """x [B, T, in] (or [B, in]); `slots`: one slot for every row (an int), or each row's as a
        one-hot mask [B, 1, slots, 1] (Lora.mask)."""
        h = x.to(self.a.dtype)
        if isinstance(slots, int):
            return ((h @ self.a[slots].T) @ self.b[:, slots].T).to(x.dtype)
        # Rows of several adapters: every slot's product at once, each row keeping its own slot's
        # (the others times 0), then one matmul over all slots' ranks. Two matmuls of slots x rank
        # columns, no copy of the matrices gathered per row (cheaper than bmm over gathered ones).
        n, r = self.a.shape[0], self.a.shape[1]
        wide = h @ self.a.view(n * r, -1).T
        mask = slots if wide.dim() == 3 else slots[:, 0]
        wide = (wide.unflatten(-1, (n, r)) * mask).flatten(-2)
        return (wide @ self.b.view(-1, n * r).T).to(x.dtype)

    @staticmethod
    def mask(slots, count: int):
        """Each row's slot (a [B] tensor of indices) as the one-hot mask [B, 1, count, 1] __call__ takes."""
        import torch

        return torch.nn.functional.one_hot(slots, count).to(torch.float32)[:, None, :, None]

    @staticmethod
    def joined(parts: list[Lora | None], sizes: list[int]) -> Lora | None:
        """The updates of layers fused into one (q/k/v packed as one quantized matmul): ranks side
        by side, each part's b in its own outputs' rows."""
        import torch

        known = [p for p in parts if p is not None]
        if not known:
            return None
        slots, inputs = known[0].a.shape[0], known[0].a.shape[2]
        ranks = [p.a.shape[1] if p is not None else 0 for p in parts]
        a = torch.zeros((slots, sum(ranks), inputs), dtype=known[0].a.dtype, device=known[0].a.device)
        b = torch.zeros((sum(sizes), slots, sum(ranks)), dtype=known[0].b.dtype, device=known[0].b.device)
        row = col = 0
        for part, rank, size in zip(parts, ranks, sizes, strict=True):
            if part is not None:
                a[:, col:col + rank] = part.a
                b[row:row + size, :, col:col + rank] = part.b
            row, col = row + size, col + rank
        return Lora(a, b)


class LoraStack:
    """The adapters a loaded model runs beside its base weights, as vLLM's multi-LoRA does: each
    row of a batch picks its slot (0: none). `default` is the slot of rows that name none (the
    generating tools' --adapter, all of them in one slot: their updates add up, as merging each
    in turn would); the named slots are lm-serve's --lora NAME=PATH.

    The fast path reads `layers` (a Lora per layer module); transformers' forward runs them
    through forward hooks, with `rows` the batch's slots (None: `default` for every row).
    """

    def __init__(self, layers: dict[str, Lora], names: dict[str, int], default: int, modules: dict[int, Lora],
                 count: int):
        self.layers = layers  # by module name
        self.names = names  # lm-serve's adapter name -> slot
        self.default = default
        self.by_module = modules  # id(module) -> its Lora (the fast path finds its layers' by module)
        self.count = count  # slots, the none slot included
        # the batch's slots as Lora.mask makes them, set by the backend running transformers' forward
        self.rows: Any = None

    def slot(self, name: str | None) -> int:
        if name is None:
            return self.default
        if name not in self.names:
            raise UsageError(f"no adapter named {name} on this model")
        return self.names[name]

    def hook(self, lora: Lora) -> Callable:
        def add(module: Any, args: tuple, output: Any) -> Any:
            rows = self.rows if self.rows is not None else self.default
            if isinstance(rows, int) and rows == 0:
                return None
            return output + lora(args[0], rows)

        return add



def _read(adapter: Adapter, modules: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """One adapter's (a, b) per module name, in float32, b times the adapter's scale: peft's own
    config and weight loading, checked against the model's layers."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists
    from peft.utils import load_peft_weights
    from peft.utils.other import get_pattern_key

    def unfit(why: str) -> UsageError:
        return UsageError(f"--adapter {adapter.path}: does not fit this model: {why}")

    try:
        config = LoraConfig.from_pretrained(adapter.path)
        weights = load_peft_weights(adapter.path, device="cpu")
    except (ValueError, RuntimeError, KeyError, OSError) as exc:
        raise unfit(first_line(exc)) from None
    parts: dict[str, dict[str, Any]] = {}
    for key, tensor in weights.items():
        name, _, kind = key.removeprefix("base_model.model.").rpartition(".lora_")
        if kind not in ("A.weight", "B.weight"):
            raise unfit(f"{key} is not a LoRA layer's weight")
        parts.setdefault(name, {})[kind[0]] = tensor.float()
    out: dict[str, tuple[Any, Any]] = {}
    for name, ab in sorted(parts.items()):
        module = modules.get(name)
        if module is None or not check_target_module_exists(config, name):
            raise unfit(f"target modules {sorted(config.target_modules or ())} do not hold its layer {name}")
        a, b = ab.get("A"), ab.get("B")
        fits = a is not None and b is not None and a.shape[0] == b.shape[1] \
            and a.shape[1] == getattr(module, "in_features", a.shape[1]) \
            and b.shape[0] == getattr(module, "out_features", b.shape[0])
        if not fits:
            raise unfit(f"{name}'s LoRA weights do not match the layer's shape")
        ranks, alphas = config.rank_pattern or {}, config.alpha_pattern or {}  # None in some peft releases
        r = ranks.get(get_pattern_key(list(ranks), name), config.r)
        alpha = alphas.get(get_pattern_key(list(alphas), name), config.lora_alpha)
        scaling = adapter.scale * alpha / (math.sqrt(r) if config.use_rslora else r)  # peft's set_scale
        out[name] = (a, b * scaling)
    if not out:
        raise unfit("it holds no LoRA weights")
    return out


def attach(model: Any, every_row: tuple[Adapter, ...], named: tuple[tuple[str, Adapter], ...]) -> LoraStack:
    """Keep `model`'s weights as they are and stack its adapters' updates beside them (slot 0:
    none; then `every_row`'s together, if any; then each named one), hooked into transformers'
    forward; lmpipe.models.fastpath reads the stack directly. Call it after any quantization."""
    import torch

    modules = dict(model.named_modules())
    slots: list[dict[str, tuple[Any, Any]]] = [{}]
    if every_row:
        together: dict[str, tuple[Any, Any]] = {}
        for adapter in every_row:  # their updates add up: ranks side by side
            for name, (a, b) in _read(adapter, modules).items():
                if name in together:
                    a, b = torch.cat([together[name][0], a]), torch.cat([together[name][1], b], dim=1)
                together[name] = (a, b)
        slots.append(together)
    names = {}
    for name, adapter in named:
        names[name] = len(slots)
        slots.append(_read(adapter, modules))
    device = next(model.parameters()).device
    layers: dict[str, Lora] = {}
    for name in sorted({n for slot in slots for n in slot}):
        rank = max(slot[name][0].shape[0] for slot in slots if name in slot)
        shaped = next(slot[name] for slot in slots if name in slot)
        a = torch.zeros((len(slots), rank, shaped[0].shape[1]), device=device)
        b = torch.zeros((shaped[1].shape[0], len(slots), rank), device=device)
        for i, slot in enumerate(slots):
            if name in slot:
                r = slot[name][0].shape[0]
                a[i, :r], b[:, i, :r] = slot[name]
        layers[name] = Lora(a, b)
    stack = LoraStack(layers, names, 1 if every_row else 0, {id(modules[n]): lora for n, lora in layers.items()},
                      len(slots))
    for name, lora in layers.items():
        modules[name].register_forward_hook(stack.hook(lora))
    model._lmpipe_loras = stack
    return stack


def stack_of(model: Any) -> LoraStack | None:
    """The model's adapters kept beside its weights (lmpipe.models.adapters.attach), if any."""
    return getattr(model, "_lmpipe_loras", None)
