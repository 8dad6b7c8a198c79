"""On-disk cache of converted (dequantized) weights as `.safetensors` files.

Dequantizing a GGUF is slow, so it happens once per (file content, dtype, converter version);
later starts memory-map the cached safetensors file instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from safetensors.torch import load_file, save_file

from preheat.cache_dir import resolve_cache_dir

logger = logging.getLogger(__name__)

# Bump whenever the converter's output for the same input changes (names, layout, rounding).
CONVERTER_VERSION = 1
_HASHES_FILE = "file-hashes.json"

Converter = Callable[[], Iterable[tuple[str, torch.Tensor]]]


@dataclass(frozen=True)
class CachedWeights:
    """Weights served from (or just written to) the cache."""

    weights: dict[str, torch.Tensor]
    path: Path
    converted: bool  # True when this call ran the converter, False on a cache hit


def cached_weights_path(source: Path, dtype: torch.dtype, cache_dir: Path | None = None) -> Path:
    """Where the converted weights of `source` in `dtype` live (whether or not they exist yet)."""
    root = resolve_cache_dir(cache_dir)
    digest = file_sha256(source, root)
    dtype_name = str(dtype).removeprefix("torch.")
    return root / "weights" / f"{digest}-{dtype_name}-v{CONVERTER_VERSION}.safetensors"


def load_or_convert(
    source: Path,
    dtype: torch.dtype,
    convert: Converter,
    *,
    total: int | None = None,
    cache_dir: Path | None = None,
) -> CachedWeights:
    """Load `source`'s converted weights from the cache, running `convert` first on a miss.

    `convert` yields `(name, tensor)` pairs already in `dtype`; `total` (the number of pairs)
    sizes the progress bar shown on stderr during conversion.
    """
    path = cached_weights_path(source, dtype, cache_dir)
    if path.exists():
        return CachedWeights(load_file(path), path, converted=False)
    weights = _run_with_progress(convert, total, f"converting {Path(source).name}")
    try:
        _save_atomically(weights, path)
    except OSError as exc:  # a read-only or full cache dir costs speed next time, not this start
        logger.warning("could not cache converted weights at %s: %s", path, exc)
    return CachedWeights(weights, path, converted=True)


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


def _run_with_progress(convert: Converter, total: int | None, label: str) -> dict[str, torch.Tensor]:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    weights: dict[str, torch.Tensor] = {}
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(label, total=total)
        for name, tensor in convert():
            weights[name] = tensor.contiguous()
            progress.advance(task)
    return weights


def _save_atomically(weights: dict[str, torch.Tensor], path: Path) -> None:
    metadata = {"converter_version": str(CONVERTER_VERSION)}
    _write_atomically(path, lambda tmp: save_file(weights, str(tmp), metadata=metadata))


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
