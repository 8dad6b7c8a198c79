"""A model's content digest, which names its entries in the KV disk tier.

Hashing a multi-GB file takes seconds, so a file's sha256 is memoized in a JSON sidecar in
the cache folder, keyed by its path, size and modification time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from preheat.cache_dir import resolve_cache_dir

logger = logging.getLogger(__name__)

_HASHES_FILE = "file-hashes.json"


def file_sha256(path: Path, cache_dir: Path) -> str:
    """sha256 of a file, memoized in a JSON sidecar keyed by (absolute path, size, mtime_ns)."""
    path = Path(path).resolve()
    stat = path.stat()
    sidecar = cache_dir / _HASHES_FILE
    known = _read_json(sidecar)
    entry = known.get(str(path))
    if entry and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
        return entry["sha256"]
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    known[str(path)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    try:
        _write_atomically(sidecar, lambda tmp: tmp.write_text(json.dumps(known, indent=1)))
    except OSError as exc:  # the memo only saves time
        logger.warning("could not record file hash in %s: %s", sidecar, exc)
    return digest


def model_digest(source: Path, cache_dir: Path | None = None) -> str:
    """sha256 naming a model's content: its GGUF file, or a folder's config and weight files."""
    root = resolve_cache_dir(cache_dir)
    source = Path(source)
    if source.is_file():
        return file_sha256(source, root)
    files = sorted(p for p in source.iterdir()
                   if p.suffix in (".safetensors", ".json") and p.is_file())
    h = hashlib.sha256()
    for path in files:
        h.update(f"{path.name}\0{file_sha256(path, root)}\n".encode())
    return h.hexdigest()


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Write via a temp file in the same folder + rename, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
