"""Random-weight GGUFs of real shapes (lmpipe.models.synthetic): valid blocks, llama.cpp's Q4_K_M mix,
and a written file that loads in lmpipe as transformers loads it."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from lmpipe.errors import UsageError
from lmpipe.models import synthetic
from lmpipe.models.gguf_weights import own_scales_run
from lmpipe.models.kernels import vnni
from lmpipe.models.loading import ModelSettings, load

Q4_0_MODE = "q4_0" if own_scales_run() else "int4"  # on its own scale where lmpipe's kernels run (without AMX)


def test_q4_k_blocks_are_valid_and_centred():
    import numpy as np
    from gguf import GGMLQuantizationType, dequantize
    from gguf.quants import Q4_K

    data = synthetic.q4_k_blocks(32, 512, np.random.default_rng(0))
    assert data.shape == (32, 512 // 256 * 144)
    sc, m = Q4_K.get_scale_min(data.reshape(-1, 144)[:, 4:16].reshape(-1, 12))
    again = np.random.default_rng(0).integers(1, 64, size=(64, 8), dtype=np.uint8)  # the scales drawn first
    assert np.array_equal(sc.reshape(64, 8), again)
    assert np.array_equal(m.reshape(64, 8), np.rint(again * (15 / 16)).astype(np.uint8))
    w = dequantize(data, GGMLQuantizationType.Q4_K)
    assert abs(float(w.mean())) < 0.1 * synthetic.WEIGHT_STD
    assert 0.8 < float(w.std()) / synthetic.WEIGHT_STD < 1.2


def test_q4_k_m_follows_llama_cpps_mix():
    rule = synthetic.type_rule("Q4_K_M")
    assert [rule("ffn_down", i, 16) for i in range(16)].count("Q6_K") == 8  # llama.cpp's use_more_bits
    assert rule("token_embd_tied", -1, 16) == rule("output", -1, 16) == "Q6_K"
    assert rule("token_embd", -1, 16) == rule("attn_q", 3, 16) == "Q4_K"


def test_unknown_names_and_types_are_one_line_errors():
    with pytest.raises(UsageError, match="known: llama-3.2-1b"):
        synthetic.synthetic_path("llama-9")
    with pytest.raises(UsageError, match="Q4_K_M, Q4_0, F16"):
        synthetic.synthetic_path("tiny-llama:Q3_K")


def test_the_embedded_vocabulary_is_smollm2s_fields():
    vocabulary = synthetic.embedded_vocabulary()
    assert vocabulary.size == 49152  # SmolLM2's
    fields = {key: value for key, value, _, _ in vocabulary.fields}
    assert fields["tokenizer.ggml.model"] == "gpt2" and len(fields["tokenizer.ggml.merges"]) > 40000
    assert all(key.startswith("tokenizer.") for key in fields)


@pytest.fixture(scope="module")
def written(isolated_env):
    """tiny-llama written by ensure_synthetic with the tests' small vocabulary (SmolLM2's takes
    transformers tens of seconds to read out of a GGUF)."""
    from tiny_models import CHATML, train_tokenizer

    vocabulary = synthetic.vocabulary_of_tokenizer(train_tokenizer(), CHATML)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(synthetic, "embedded_vocabulary", lambda: vocabulary)
        return {kind: synthetic.ensure_synthetic(f"tiny-llama:{kind}") for kind in ("Q4_0", "Q4_K_M")}


def test_a_written_q4_0_file_gives_transformers_greedy_tokens(written):
    from transformers import AutoModelForCausalLM

    path = written["Q4_0"]
    assert path.parent.name == "synthetic" and synthetic.ensure_synthetic("tiny-llama:Q4_0") == path  # once
    lm = load(ModelSettings(str(path)))
    assert lm.identity["gguf_tensors"] == {"F32": {"float": 5}, "Q4_0": {Q4_0_MODE: 14, "int8": 1}}
    reference = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).eval()
    ids = lm.tokenizer("The quick brown fox", return_tensors="pt").input_ids
    assert lm.model.generate(ids, max_new_tokens=8, do_sample=False).tolist() == \
        reference.generate(ids, max_new_tokens=8, do_sample=False).tolist()


def test_a_written_q4_k_m_file_runs_its_mix(written):
    lm = load(ModelSettings(str(written["Q4_K_M"])))
    # 2 layers: layer 1's v and down, and the tied embedding, are Q6_K (llama.cpp's use_more_bits).
    q4_k = "q4k" if own_scales_run() else "int4"  # on its own scales where lmpipe's kernels run (without AMX)
    assert lm.identity["gguf_tensors"] == {"F32": {"float": 5}, "Q4_K": {q4_k: 12}, "Q6_K": {"int8": 3}}


def test_lm_bench_synthetic_measures_the_written_file(written, monkeypatch):
    from lmpipe.bin.bench import main
    from lmpipe.tasks import bench

    measured = []
    monkeypatch.setattr(bench, "run_bench", lambda settings, notify: measured.append(settings.model.model) or iter([]))
    result = CliRunner().invoke(main, ["--synthetic", "tiny-llama:Q4_0", "-b", "1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert measured == [str(written["Q4_0"])]
    result = CliRunner().invoke(main, ["--synthetic", "llama-9"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"lm-bench: error: --synthetic: no shape 'llama-9' (known: {', '.join(synthetic.SHAPES)})"]


def test_a_qwen2_shape_with_biases_runs_mapped_as_packed(tmp_path):
    """Qwen2's q, k and v biases: written, loaded, and put back beside the fused layer from the packed cache."""
    import torch
    from tiny_models import CHATML, train_tokenizer
    from transformers import AutoModelForCausalLM

    shape = synthetic.Shape("qwen2", 256, 2, 4, 2, 512, context=256)
    vocabulary = synthetic.vocabulary_of_tokenizer(train_tokenizer(), CHATML)
    path = synthetic.write_gguf(tmp_path / "qwen2-Q4_0.gguf", shape, "Q4_0", vocabulary)
    first = load(ModelSettings(str(path)))
    assert first.identity["gguf_tensors"] == {"F32": {"float": 11}, "Q4_0": {Q4_0_MODE: 14, "int8": 1}}
    ids = first.tokenizer("The quick brown fox", return_tensors="pt").input_ids
    reference = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).eval()
    assert first.model.generate(ids, max_new_tokens=8, do_sample=False).tolist() == \
        reference.generate(ids, max_new_tokens=8, do_sample=False).tolist()
    second = load(ModelSettings(str(path)))
    assert second.identity["packing"] == ("mapped" if vnni.available() else "packed")
    assert torch.equal(second.model(ids).logits, first.model(ids).logits)
