"""The model digest that names disk-tier entries: memoized file hashes, folder digests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import preheat.loader.model_digest as model_digest_module
from preheat.cache_dir import resolve_cache_dir
from preheat.loader.model_digest import file_sha256, model_digest


@pytest.fixture
def source(tmp_path) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"pretend this is a GGUF file")
    return path


def test_hash_is_memoized_by_path_size_and_mtime(tmp_path, source, monkeypatch):
    digest = file_sha256(source, tmp_path)
    sidecar = json.loads((tmp_path / "file-hashes.json").read_text())
    assert sidecar[str(source.resolve())]["sha256"] == digest

    def no_rehash(*args, **kwargs):
        raise AssertionError("the file was hashed again")

    monkeypatch.setattr(model_digest_module.hashlib, "file_digest", no_rehash)
    assert file_sha256(source, tmp_path) == digest
    monkeypatch.undo()
    source.write_bytes(b"changed content, changed size")
    assert file_sha256(source, tmp_path) != digest


def test_folder_digest_covers_config_and_weights(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "README.md").write_text("not part of the model")
    first = model_digest(folder, tmp_path / "cache")
    (folder / "README.md").write_text("edited")
    assert model_digest(folder, tmp_path / "cache") == first
    (folder / "model.safetensors").write_bytes(b"other weights")
    assert model_digest(folder, tmp_path / "cache") != first


def test_unwritable_cache_dir_still_hashes(tmp_path, source):
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("")
    assert file_sha256(source, blocker / "cache") == file_sha256(source, tmp_path)


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("PREHEAT_CACHE_DIR", str(tmp_path / "env"))
    assert resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_cache_dir() == tmp_path / "env"
    monkeypatch.delenv("PREHEAT_CACHE_DIR")
    assert resolve_cache_dir().name == "preheat"
