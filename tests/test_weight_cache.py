"""The converted-weights cache: convert once, then serve from a safetensors file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import preheat.loader.weight_cache as weight_cache
from preheat.loader.model_loader import load_model
from preheat.cache_dir import resolve_cache_dir
from preheat.loader.weight_cache import cached_weights_path, file_sha256, load_or_convert


@pytest.fixture
def source(tmp_path) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"pretend this is a GGUF file")
    return path


class CountingConverter:
    """Stands in for the GGUF dequantizer and counts how often it runs."""

    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        generator = torch.Generator().manual_seed(0)
        yield "a.weight", torch.randn(4, 8, generator=generator)
        yield "b.bias", torch.randn(8, generator=generator)


def test_converts_once_then_reads_cache(tmp_path, source):
    convert = CountingConverter()
    first = load_or_convert(source, torch.float32, convert, total=2, cache_dir=tmp_path / "cache")
    second = load_or_convert(source, torch.float32, convert, total=2, cache_dir=tmp_path / "cache")
    assert convert.calls == 1
    assert first.converted and not second.converted
    assert first.path == second.path and second.path.exists()
    assert first.weights.keys() == second.weights.keys()
    for name in first.weights:
        assert torch.equal(first.weights[name], second.weights[name])
    assert not [p for p in second.path.parent.iterdir() if p.suffix == ".tmp"]


def test_key_covers_content_dtype_and_converter_version(tmp_path, source, monkeypatch):
    base = cached_weights_path(source, torch.float32, tmp_path)
    assert cached_weights_path(source, torch.bfloat16, tmp_path) != base
    monkeypatch.setattr(weight_cache, "CONVERTER_VERSION", weight_cache.CONVERTER_VERSION + 1)
    assert cached_weights_path(source, torch.float32, tmp_path) != base
    monkeypatch.undo()
    source.write_bytes(b"a different model")
    assert cached_weights_path(source, torch.float32, tmp_path) != base


def test_hash_is_memoized_by_path_size_and_mtime(tmp_path, source, monkeypatch):
    digest = file_sha256(source, tmp_path)
    sidecar = json.loads((tmp_path / "file-hashes.json").read_text())
    assert sidecar[str(source.resolve())]["sha256"] == digest

    def no_rehash(*args, **kwargs):
        raise AssertionError("the file was hashed again")

    monkeypatch.setattr(weight_cache.hashlib, "file_digest", no_rehash)
    assert file_sha256(source, tmp_path) == digest
    monkeypatch.undo()
    source.write_bytes(b"changed content, changed size")
    assert file_sha256(source, tmp_path) != digest


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("PREHEAT_CACHE_DIR", str(tmp_path / "env"))
    assert resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_cache_dir() == tmp_path / "env"
    monkeypatch.delenv("PREHEAT_CACHE_DIR")
    assert resolve_cache_dir().name == "preheat"


def test_failed_conversion_leaves_no_cache_entry(tmp_path, source):
    def broken():
        yield "a.weight", torch.zeros(2)
        raise RuntimeError("corrupt tensor")

    with pytest.raises(RuntimeError):
        load_or_convert(source, torch.float32, broken, cache_dir=tmp_path)
    assert not cached_weights_path(source, torch.float32, tmp_path).exists()


@pytest.mark.slow
def test_embedded_model_warm_start_uses_cache(tmp_path, monkeypatch):
    cold = load_model(cache_dir=tmp_path)
    files = list((tmp_path / "weights").glob("*.safetensors"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again instead of reading the cache")

    monkeypatch.setattr("preheat.loader.model_loader.gguf_weights", no_conversion)
    warm = load_model(cache_dir=tmp_path)
    assert files[0].stat().st_mtime_ns == stamp
    assert warm.config == cold.config
    assert warm.weights.keys() == cold.weights.keys()
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.norm.weight"):
        assert torch.equal(warm.weights[name], cold.weights[name])


def test_unwritable_cache_dir_still_loads(tmp_path, source):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache dir should be")
    convert = CountingConverter()
    result = load_or_convert(source, torch.float32, convert, cache_dir=blocker / "cache")
    assert result.converted and set(result.weights) == {"a.weight", "b.bias"}
