"""--quantize loads through a quantized copy in lmpipe's cache, never holding the float weights twice."""

from __future__ import annotations

import pytest
import torch
from tiny_models import build_tiny_llama

from lmpipe import paths
from lmpipe.models import gguf
from lmpipe.models.loading import ModelSettings, load
from lmpipe.models.quantize import choose_kernels
from lmpipe.models.quantized_layers import quantize


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_first_load_makes_a_quantized_copy_and_later_loads_read_it(tmp_path, mode):
    tiny_llama_raw = build_tiny_llama(tmp_path / "model", chat=False)  # its own, so no other test made its copy
    messages: list[str] = []
    first = load(ModelSettings(str(tiny_llama_raw), quantize=mode), messages.append)
    copies = [d for d in paths.models_dir().iterdir()
              if (gguf.conversion_info(d) or {}).get("source") == str(tiny_llama_raw.resolve())]
    assert len(copies) == 1 and gguf.conversion_info(copies[0])["quantize"] == mode  # lm-cache-ls lists it
    assert any("quantizing" in m for m in messages)
    messages.clear()
    again = load(ModelSettings(str(tiny_llama_raw), quantize=mode), messages.append)
    assert not any("quantizing" in m for m in messages)  # read, not made again
    assert again.identity["quantize"] == mode

    # Both equal quantizing the float32 model after loading it the usual way, number for number.
    from transformers import AutoModelForCausalLM

    usual = AutoModelForCausalLM.from_pretrained(tiny_llama_raw, dtype=torch.float32).eval()
    quantize(usual, mode)
    # with the kernels a load chooses (cached per CPU and shape): where two measure alike, either
    # may be this CPU's choice for a row range, and each instruction set sums in its own order
    choose_kernels(usual)
    ids = torch.tensor([[5, 17, 42, 9, 3]])
    assert torch.equal(logits(first.model, ids), logits(usual, ids))
    assert torch.equal(logits(again.model, ids), logits(usual, ids))
    assert again.model.generation_config.eos_token_id == usual.generation_config.eos_token_id
    float_bytes = sum(f.stat().st_size for f in tiny_llama_raw.glob("*.safetensors"))
    assert (copies[0] / "model.safetensors").stat().st_size < float_bytes


def test_a_model_the_quantized_loader_does_not_know_is_quantized_after_loading(tmp_path, monkeypatch):
    import lmpipe.models.quantized_loading

    folder = build_tiny_llama(tmp_path / "model", chat=False)
    monkeypatch.setattr(lmpipe.models.quantized_loading, "COPIED_FAMILIES", ())
    messages: list[str] = []
    lm = load(ModelSettings(str(folder), quantize="int8"), messages.append)
    assert type(lm.model.lm_head).__name__ == "QuantizedLinear"
    assert not any("quantizing" in m for m in messages)  # the usual way: load, then quantize in memory
