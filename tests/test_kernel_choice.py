"""The quantized layers' kernel per range of rows, chosen by measurement (lmpipe.models.kernels.choice):
timings are faked here, since what is tested is what the choice does with them."""

from __future__ import annotations

import json

import pytest
import torch

from lmpipe.errors import UsageError
from lmpipe.models.kernels import choice, vnni
from lmpipe.models.quantize import quantize_weight

needs_kernel = pytest.mark.skipif(not vnni.available(), reason=f"lmpipe's kernels cannot run here: {vnni.reason}")


def test_row_counts_fall_in_ranges():
    assert [choice.row_range(r) for r in (1, 2, 4, 5, 16, 17, 512)] == ["1", "4", "4", "16", "16", "prompt", "prompt"]


@pytest.mark.parametrize("mode", ["int4", "int8"])
def test_the_weight_dequantized_from_the_packing_is_the_portable_ones(mode):
    torch.manual_seed(0)
    weight = quantize_weight(torch.randn(48, 128), mode)
    if mode == "int4":
        packed, scales = vnni.int4_pack(weight.int4_values(), weight.scales, weight.zeros), None
    else:
        packed, scales = vnni.int8_pack(weight.values), weight.scales.float()
    assert torch.equal(choice.dequantized(mode, packed, scales, 48), weight.dequantized())


@pytest.fixture
def faked(monkeypatch, tmp_path):
    """choice.timings from a table {kernel: {range: seconds}}; the cache in a folder of the test's own."""
    table: dict[str, dict[str, float]] = {}
    measured: list[int] = []

    def timings(runs, x):
        measured.append(x.shape[0])
        name = choice.row_range(x.shape[0])
        return {kernel: table[kernel][name] for kernel in runs}

    monkeypatch.setattr(choice, "timings", timings)
    monkeypatch.setattr(choice, "_cache_file", lambda: tmp_path / "choices.json")
    return table, measured, tmp_path / "choices.json"


def _load(folder, kernel=None, activations="exact"):
    from lmpipe.models.loading import ModelSettings, load

    return load(ModelSettings(str(folder), quantize="int4", kernel=kernel, activations=activations))


@needs_kernel
def test_where_every_quantized_kernel_is_slower_float32_runs_said_once(tiny_llama_raw, faked, capfd):
    from lmpipe.models.quantized_layers import QuantizedLinear

    table, measured, cache = faked
    for kernel in choice.candidates():
        table[kernel] = dict.fromkeys(("1", "4", "16", "prompt"), 1.0 if kernel == choice.FLOAT else 2.0)
    lm = _load(tiny_llama_raw)
    assert lm.identity["kernels"] == dict.fromkeys(("1", "4", "16", "prompt"), "float32")  # the manifest says so
    err = capfd.readouterr().err
    assert err.count("slower than float32") == 1 and "those run float32 on the dequantized weights" in err
    layers = [m for m in lm.model.modules() if isinstance(m, QuantizedLinear) and m.vnni]
    assert layers and all(set(m.kernels.values()) == {"float32"} for m in layers)
    # the layer's product is float32's on the weight its packing holds
    layer = layers[0]
    x = torch.randn(3, layer.in_features)
    want = x @ choice.dequantized(layer.mode, layer.packed, layer.packed_scales, layer.out_features).t()
    assert torch.allclose(layer(x), want if layer.bias is None else want + layer.bias, rtol=1e-5, atol=1e-6)
    # cached: the next load measures nothing, and names the same kernels
    assert measured and all(key.endswith(",".join(choice.candidates())) for key in json.loads(cache.read_text()))
    measured.clear()
    assert _load(tiny_llama_raw).identity["kernels"] == lm.identity["kernels"] and not measured


@needs_kernel
def test_each_range_of_rows_takes_its_fastest_kernel(tiny_llama_raw, faked, capfd):
    table, _, _ = faked
    quantized = next(k for k in choice.candidates() if k not in choice.SAME_BELOW)  # timed at every row count
    for kernel in choice.candidates():
        table[kernel] = {"1": 3.0, "4": 3.0, "16": 3.0, "prompt": 3.0}
    table[quantized].update({"1": 1.0, "4": 1.0, "16": 1.0})
    table[choice.FLOAT]["prompt"] = 1.0
    lm = _load(tiny_llama_raw)
    assert lm.identity["kernels"] == {"1": quantized, "4": quantized, "16": quantized, "prompt": "float32"}
    assert capfd.readouterr().err.count("slower than float32") == 1


@needs_kernel
def test_kernel_forces_one_for_every_range_without_measuring(tiny_llama_raw, faked, capfd):
    _, measured, cache = faked
    lm = _load(tiny_llama_raw, kernel="lmpipe-avx2")
    assert lm.identity["kernels"] == dict.fromkeys(("1", "4", "16", "prompt"), "lmpipe-avx2")
    assert not measured and not cache.exists() and "float32" not in capfd.readouterr().err


@needs_kernel
def test_int8_activations_run_every_layer_on_one_part_measured_apart_and_the_manifest_says_so(tiny_llama_raw, faked):
    from lmpipe.models.quantized_layers import QuantizedLinear

    table, measured, cache = faked
    for kernel in (*choice.candidates(), *choice.NAMES.values()):
        table[kernel] = dict.fromkeys(("1", "4", "16", "prompt"), 1.0 if kernel == "lmpipe-amx" else 2.0)
    exact = _load(tiny_llama_raw)
    lm = _load(tiny_llama_raw, activations="int8")
    assert lm.identity["activations"] == "int8" and "activations" not in exact.identity
    assert "lmpipe-amx" not in json.dumps(lm.identity["kernels"])  # AMX's tiles take two parts
    keys = json.loads(cache.read_text())
    assert sum(key.endswith(" activations=int8") for key in keys) == len(keys) // 2 > 0  # each measured apart
    layers = [m for m in lm.model.modules() if isinstance(m, QuantizedLinear) and m.vnni]
    assert layers and all(m.parts == 1 for m in layers)
    layer, twin = layers[0], next(m for m in exact.model.modules() if isinstance(m, QuantizedLinear) and m.vnni)
    assert twin.parts == 2 and torch.equal(layer.packed, twin.packed)
    x = torch.randn(5, layer.in_features)
    difference = float((layer(x) - twin(x)).norm() / twin(x).norm())
    assert 1e-4 < difference < 3e-2  # 8-bit activations: close to, and not, the exact product


def test_int8_activations_without_lmpipes_kernels_are_a_usage_error(tiny_llama_raw):
    from lmpipe.models.loading import ModelSettings, load

    why = r"this model has no quantized layer" if vnni.available() else r".+"  # else: why the kernels cannot run
    with pytest.raises(UsageError, match=rf"^--activations int8 is for quantized layers on lmpipe's kernels, and "
                                         rf"none run here \({why}\)$"):
        load(ModelSettings(str(tiny_llama_raw), activations="int8"))  # float32: no quantized layer
    with pytest.raises(UsageError, match=r"^--activations must be one of exact, int8$"):
        ModelSettings(str(tiny_llama_raw), activations="int4")


@needs_kernel
def test_int8_weights_on_torchs_kernels_move_onto_lmpipes_for_int8_activations(tiny_llama_raw):
    """--quantize int8 keeps oneDNN's exact split product where the CPU has VNNI; its products take
    exact activations only, so --activations int8 moves each int8 layer onto lmpipe's int8 kernel,
    and the tied embedding with its head."""
    from lmpipe.models.loading import ModelSettings, load
    from lmpipe.models.quantized_layers import QuantizedEmbedding, QuantizedLinear

    exact = load(ModelSettings(str(tiny_llama_raw), quantize="int8"))
    lm = load(ModelSettings(str(tiny_llama_raw), quantize="int8", activations="int8"))
    assert lm.identity["activations"] == "int8"
    layers = [m for m in lm.model.modules() if isinstance(m, QuantizedLinear)]
    assert layers and all(m.vnni and m.parts == 1 and m.packed.dtype == torch.uint8 for m in layers)
    head = lm.model.get_output_embeddings()
    embedding = lm.model.get_input_embeddings()
    # tied: its rows are the repacked head's, not a stale copy
    assert isinstance(embedding, QuantizedEmbedding) and embedding.values is head.packed
    assert embedding.scales is head.packed_scales
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    assert torch.equal(embedding(ids), exact.model.get_input_embeddings()(ids))  # the same values, looked up
    got, want = lm.model(ids).logits, exact.model(ids).logits
    assert 1e-5 < float((got - want).norm() / want.norm()) < 5e-2  # 8-bit activations: close, and not exact


def test_amxs_kernel_forced_with_int8_activations_is_refused_in_one_line(faked, monkeypatch):
    monkeypatch.setattr(choice, "candidates", lambda: ("lmpipe-amx", "lmpipe-vnni", "float32"))
    with pytest.raises(UsageError, match=r"^--kernel lmpipe-amx takes exact activations, not --activations int8$"):
        choice.choose([object()], forced="lmpipe-amx", activations="int8")


def test_a_kernel_this_cpu_cannot_run_is_a_usage_error(faked, monkeypatch):
    monkeypatch.setattr(choice, "candidates", lambda: ("lmpipe-avx2", "float32"))
    refused = r"^--kernel lmpipe-vnni cannot run on this CPU \(here: lmpipe-avx2, float32\)$"
    with pytest.raises(UsageError, match=refused):
        choice.choose([object()], forced="lmpipe-vnni")


def test_the_candidates_are_the_runnable_instruction_sets_kernels_and_float32():
    """lmpipe-amx where this CPU and Linux let AMX run (the choice then measures it), never elsewhere."""
    if not vnni.available():
        assert choice.candidates() == (choice.FLOAT,)
    elif vnni.forced():
        assert choice.candidates() == (choice.NAMES[vnni.selected], choice.FLOAT)
    else:
        assert choice.candidates() == (*(choice.NAMES[isa] for isa in vnni.runnable()), choice.FLOAT)
        assert ("lmpipe-amx" in choice.candidates()) == ("amx" in vnni.runnable())


def test_amx_is_timed_only_where_it_runs_its_tiles(monkeypatch):
    """Below 16 rows lmpipe-amx runs lmpipe-vnni's code: with both offered it is timed from 16 rows
    on, and takes the ranges where it is fastest; offered alone (LMPIPE_KERNEL_ISA=amx), everywhere."""
    timed: dict[int, tuple[str, ...]] = {}
    seconds = {"lmpipe-amx": 1.0, "lmpipe-vnni": 2.0, "float32": 3.0}

    def timings(runs, x):
        timed[x.shape[0]] = tuple(runs)
        return {kernel: seconds[kernel] for kernel in runs}

    monkeypatch.setattr(choice, "timings", timings)
    runs = dict.fromkeys(seconds, lambda x: x)
    assert choice.fastest(runs, 8) == {"1": "lmpipe-vnni", "4": "lmpipe-vnni", "16": "lmpipe-amx",
                                       "prompt": "lmpipe-amx"}
    assert timed == {1: ("lmpipe-vnni", "float32"), 4: ("lmpipe-vnni", "float32"),
                     16: ("lmpipe-amx", "lmpipe-vnni", "float32"),
                     choice.PROMPT_ROWS: ("lmpipe-amx", "lmpipe-vnni", "float32")}
    del runs["lmpipe-vnni"]
    assert choice.fastest(runs, 8) == dict.fromkeys(("1", "4", "16", "prompt"), "lmpipe-amx")


def test_a_forced_amx_kernel_on_a_cpu_without_it_is_a_one_line_usage_error(faked, monkeypatch):
    monkeypatch.setattr(choice, "candidates", lambda: ("lmpipe-vnni", "lmpipe-avx2", "float32"))
    with pytest.raises(UsageError) as refused:
        choice.choose([object()], forced="lmpipe-amx")
    assert str(refused.value) == "--kernel lmpipe-amx cannot run on this CPU (here: lmpipe-vnni, lmpipe-avx2, float32)"


def test_each_timed_call_follows_an_untimed_one_of_the_same_kernel_and_float32_goes_last():
    """Timed right after float32, a kernel would read its weight from memory where float32's dequantized
    copy pushed it out of the caches, and one timed right after another kernel would find its own
    there: the choice at few rows would follow the order the candidates are offered in."""
    calls: list[str] = []
    runs = {name: (lambda x, name=name: calls.append(name)) for name in ("float32", "lmpipe-vnni", "lmpipe-avx2")}
    assert set(choice.timings(runs, None)) == set(runs)
    turns = [[name, name] for _ in range(choice.REPEATS) for name in ("lmpipe-vnni", "lmpipe-avx2")]
    assert calls == sum(turns, []) + ["float32"] * (1 + choice.REPEATS)


def test_int8_activations_with_only_amxs_kernel_forced_are_refused_in_one_line(faked, monkeypatch):
    monkeypatch.setattr(choice, "candidates", lambda: ("lmpipe-amx", "float32"))  # LMPIPE_KERNEL_ISA=amx
    with pytest.raises(UsageError, match=r"^--activations int8: AMX's tiles \(LMPIPE_KERNEL_ISA=amx\) take exact "):
        choice.choose([object()], activations="int8")


def test_lm_generate_refuses_int8_activations_for_a_float_model_in_one_line(tiny_llama_raw):
    import re

    from click.testing import CliRunner

    from lmpipe.bin.generate import main

    result = CliRunner().invoke(main, ["-m", str(tiny_llama_raw), "--activations", "int8", "-n", "2"],
                                input='{"text": "hi"}\n')
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.fullmatch(
        r"lm-generate: error: --activations int8 is for quantized layers on lmpipe's kernels, and none run here \(.+\)",
        lines[0]), lines
