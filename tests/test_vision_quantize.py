"""--quantize on LLaVA quantizes its Llama (the language model and head), as lolama's --quantize
does, and leaves the vision tower float; the answer agrees with the dequantized model within the
bounds of test_quantize."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from conftest import jsonl

from lmpipe.bin.generate import main as generate
from lmpipe.models.loading import ModelSettings, load


def prefill_logits(lm, path, text="Describe this image."):
    from PIL import Image

    from lmpipe.engine.decoding import ImageRows
    from lmpipe.engine.multimodal import image_prompt

    content = [{"type": "image"}, {"type": "text", "text": text}]
    prompt = lm.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                              tokenize=False)
    image = image_prompt(lm.processor, prompt, [Image.open(path).convert("RGB")])
    return ImageRows(lm.model, dict(image.alone), "cpu").prefill(None)


def dequantized(folder, mode):
    """The float model whose language-model linears hold exactly the quantized values."""
    from lmpipe.models.loading import language_parts
    from lmpipe.models.quantize import quantizable, quantize_weight

    lm = load(ModelSettings(str(folder)))
    under = language_parts(lm.model)
    for name, module in lm.model.named_modules():
        inside = any(name == u or name.startswith(u + ".") for u in under)
        if inside and isinstance(module, torch.nn.Linear) and quantizable(module, mode):
            module.weight = torch.nn.Parameter(quantize_weight(module.weight, mode).dequantized(), requires_grad=False)
    return lm


@pytest.mark.parametrize("mode, tolerance", [("int8", 0.12), ("int4", 0.08)])
def test_llava_quantized_computes_what_its_dequantized_language_model_does(tiny_llava, photos, mode, tolerance):
    from lmpipe.models.quantized_layers import QuantizedLinear, QuantizedPart

    lm = load(ModelSettings(str(tiny_llava), quantize=mode))
    packed = (QuantizedLinear, QuantizedPart)
    names = [n for n, m in lm.model.named_modules() if isinstance(m, packed)]
    assert names and all(n.startswith(("model.language_model.", "lm_head")) for n in names)
    assert not any(isinstance(m, packed) for m in lm.model.model.vision_tower.modules())
    assert lm.identity["quantize"] == mode
    reference = dequantized(tiny_llava, mode)
    for name in ("wide", "tall"):
        got, expected = prefill_logits(lm, photos[name]), prefill_logits(reference, photos[name])
        assert float((got - expected).norm() / expected.norm()) < tolerance, name


def test_lm_generate_quantize_runs_a_llava(tiny_llava, photos):
    result = CliRunner().invoke(generate, ["-m", str(tiny_llava), "--quantize", "int8", "--no-server", "-n", "6",
                                           "--image", str(photos["wide"]), "Describe this image."],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    record = jsonl(result.stdout_bytes)[0]
    assert record["manifest"]["quantize"] == "int8" and record["stats"]["output_tokens"] == 6
    assert record["stats"]["image_tokens"] == 16
