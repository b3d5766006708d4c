"""GGUF conversion: written once, atomically, found again by content."""

import shutil

import pytest

from lmpipe.models import gguf


@pytest.fixture(autouse=True)
def own_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LMPIPE_HOME", str(tmp_path / "home"))


def fake_gguf(tmp_path, name="m.gguf", data=b"GGUF" + b"x" * 5000):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_an_interrupted_conversion_leaves_nothing_under_the_final_name(tmp_path, monkeypatch):
    src = fake_gguf(tmp_path)

    def half_then_crash(_, out):
        (out / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf, "_convert", half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        gguf.ensure_converted(src)
    target = gguf.converted_folder(src)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # the temporary folder is gone too


def test_converts_once_and_records_the_sha256(tmp_path, monkeypatch):
    src = fake_gguf(tmp_path)
    calls = []
    monkeypatch.setattr(gguf, "_convert", lambda g, out: calls.append(out) or (out / "config.json").write_text("{}"))
    first = gguf.ensure_converted(src)
    second = gguf.ensure_converted(src)
    assert first == second and len(calls) == 1
    assert gguf.conversion_info(first)["sha256"] == gguf.sha256_file(src)


def test_the_key_follows_content_not_path(tmp_path):
    a = fake_gguf(tmp_path, "a.gguf")
    (tmp_path / "elsewhere").mkdir()
    b = tmp_path / "elsewhere" / "a.gguf"
    shutil.copy(a, b)
    c = fake_gguf(tmp_path, "c.gguf", data=b"GGUF" + b"y" * 5000)
    assert gguf.cache_key(a) == gguf.cache_key(b) != gguf.cache_key(c)


def test_a_gguf_is_parsed_once_per_load_and_as_gguf_py_parses_it(tmp_path, monkeypatch):
    """The plain-view reader (lmpipe.models.gguf_reader) reads the fields and tensors gguf-py's own
    reader does, and a first load (description and weights) parses the file once."""
    import gguf as gguf_py
    import numpy as np
    from gguf.gguf_reader import GGUFReader
    from tiny_gguf import write_tiny_llama_gguf

    from lmpipe.models import gguf_reader
    from lmpipe.models.loading import ModelSettings, load

    path = write_tiny_llama_gguf(tmp_path / "tiny-Q4_K.gguf", "Q4_K")
    ours, theirs = gguf_reader.reader(path), GGUFReader(str(path))
    assert list(ours.fields) == list(theirs.fields)
    for key, field in theirs.fields.items():
        assert ours.fields[key].types == field.types and ours.fields[key].contents() == field.contents(), key
    assert [(t.name, t.tensor_type, t.shape.tolist()) for t in ours.tensors] == \
        [(t.name, t.tensor_type, t.shape.tolist()) for t in theirs.tensors]
    assert all(np.array_equal(a.data, b.data) for a, b in zip(ours.tensors, theirs.tensors, strict=True))

    parses = []
    plain = gguf_reader._reader_class()

    class Counted(plain):
        def __init__(self, *args, **kwargs):
            parses.append(args[0])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(gguf_reader, "_reader_class", lambda: Counted)
    loaded = load(ModelSettings(str(path)))
    assert loaded.identity["gguf_tensors"]  # read from the file's own tensors, not a conversion
    assert parses == [str(path)]
    assert gguf_py.GGUFReader is GGUFReader  # transformers' name for the reader, restored
