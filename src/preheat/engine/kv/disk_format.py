"""The disk tier's files, byte for byte: the versioned contract between a server and the
files an earlier run (or another server) left.

Two kinds of file, both

    magic (8 bytes) | header length (u32) | header (JSON) | token ids (int32) | [KV bytes] | crc32

all integers little-endian. A *segment* (``<key>.seg``) holds a run of whole blocks: its
header names the namespace, the segment before it (``parent``, None from block 0), its
``first_block``, ``num_tokens`` and ``kv_shape`` ``[layers, 2, blocks, *block_shape]``; its
tokens are its own blocks' and the KV bytes follow them. A *pin* (``<key>.pin``) names one
pinned prefix: namespace, ``ttl``, ``expiry`` (wall clock) and ``num_tokens``; its tokens
are all of the prefix's, and no KV follows. Every header also carries ``version`` and the
cache's ``fingerprint``.

Files live under ``<root>/<fingerprint[:32]>/<namespace_dir>/``. A segment's key is
``block_keys`` of its last block (a hash of the namespace and every token through that
block); a pin's is ``prefix_key`` of its tokens. The crc covers everything before it, and a
file is written to a hidden temporary name and renamed, so a truncated, corrupted or
half-written file never reads.

Changing any byte of this means a new ``FORMAT_VERSION`` (part of every fingerprint, so
files of the old version are then simply not found). Nothing here decides what to keep or
when to write: that is ``disk_tier.py``'s.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SEGMENT_MAGIC = b"PHKVSEG\x02"
PIN_MAGIC = b"PHKVPIN\x02"
FORMAT_VERSION = 2
SEGMENT_SUFFIX, PIN_SUFFIX = ".seg", ".pin"
CRC_BYTES = 4
LOAD_ERRORS = (OSError, KeyError, TypeError, ValueError)  # what reading a file may raise


class CorruptEntry(ValueError):
    pass


# ---- names --------------------------------------------------------------------------


def cache_fingerprint(**parts: object) -> str:
    """Names one cache configuration (model content, weight format, KV dtype, block size...):
    files written under another fingerprint are never read."""
    text = json.dumps({"format": FORMAT_VERSION, **{k: str(v) for k, v in parts.items()}}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def prefix_key(namespace: str, tokens: tuple[int, ...]) -> str:
    """The file name (without suffix) of a namespace's pinned prefix."""
    h = hashlib.sha256(namespace.encode())
    h.update(np.asarray(tokens, dtype="<i4").tobytes())
    return h.hexdigest()[:40]


def block_keys(namespace: str, tokens: tuple[int, ...], block_size: int) -> list[str]:
    """``prefix_key`` of each whole-block prefix of ``tokens``: entry b ends after block b."""
    h = hashlib.sha256(namespace.encode())
    ids = np.asarray(tokens, dtype="<i4")
    keys = []
    for b in range(len(tokens) // block_size):
        h.update(ids[b * block_size: (b + 1) * block_size].tobytes())
        keys.append(h.copy().hexdigest()[:40])
    return keys


def namespace_dir(namespace: str) -> str:
    return hashlib.sha256(f"preheat-kv-namespace\0{namespace}".encode()).hexdigest()[:24]


def cache_dir(root: Path, fingerprint: str) -> Path:
    """Where the files of the cache configuration ``fingerprint`` live under ``root``."""
    return Path(root) / fingerprint[:32]


def entry_path(directory: Path, namespace: str, key: str, suffix: str) -> Path:
    """The file of ``key`` (a segment's or a pin's, by ``suffix``) in a ``cache_dir``."""
    return directory / namespace_dir(namespace) / f"{key}{suffix}"


# ---- encoding -------------------------------------------------------------------------


def file_size(parts: list) -> int:
    """Bytes a file of ``parts`` takes, its crc included."""
    return sum(len(p) for p in parts) + CRC_BYTES


def write_file(path: Path, parts: list) -> None:
    """Write ``parts`` and their crc32 to a temporary name, then rename it to ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            crc = 0
            for part in parts:
                f.write(part)
                crc = zlib.crc32(part, crc)
            f.write(struct.pack("<I", crc))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def _file_parts(magic: bytes, header: dict, tokens: tuple[int, ...], kv: np.ndarray | None = None) -> list:
    head = json.dumps(header).encode()
    parts = [magic, struct.pack("<I", len(head)), head, np.asarray(tokens, dtype="<i4").tobytes()]
    if kv is not None:
        parts.append(memoryview(kv).cast("B"))
    return parts


# ---- decoding -------------------------------------------------------------------------


def _parse_head(data: memoryview, magic: bytes) -> tuple[dict, tuple[int, ...], int]:
    """(header, tokens, offset of what follows the tokens) from the start of a file."""
    if bytes(data[: len(magic)]) != magic:
        raise CorruptEntry("not a preheat KV file of this kind")
    at = len(magic)
    (head_len,) = struct.unpack("<I", data[at: at + 4])
    at += 4
    header = json.loads(bytes(data[at: at + head_len]))
    at += head_len
    n = int(header["num_tokens"])
    if len(data) < at + 4 * n:
        raise CorruptEntry("truncated")
    tokens = tuple(np.frombuffer(data[at: at + 4 * n], dtype="<i4").tolist())
    return header, tokens, at + 4 * n


def _verified(data: memoryview, magic: bytes) -> tuple[dict, tuple[int, ...], int]:
    """``_parse_head`` of a whole file whose crc32 matches."""
    if len(data) < len(magic) + 8:
        raise CorruptEntry("truncated")
    (crc,) = struct.unpack("<I", data[-CRC_BYTES:])
    if zlib.crc32(data[:-CRC_BYTES]) != crc:
        raise CorruptEntry("checksum mismatch")
    return _parse_head(data[:-CRC_BYTES], magic)


def _read_head(path: Path, magic: bytes) -> tuple[dict, tuple[int, ...]]:
    """Header and tokens of a segment file, checking its size against the header (not its crc)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        start = f.read(len(magic) + 4)
        if len(start) < len(magic) + 4:
            raise CorruptEntry("truncated")
        (head_len,) = struct.unpack("<I", start[len(magic):])
        head = f.read(head_len)
        ids = f.read(4 * int(json.loads(head)["num_tokens"]))
    header, tokens, at = _parse_head(memoryview(start + head + ids), magic)
    if size != at + int(np.prod(header["kv_shape"])) + CRC_BYTES:
        raise CorruptEntry("truncated or padded")
    return header, tokens


# ---- one cache's files ------------------------------------------------------------------


@dataclass(frozen=True)
class CacheFiles:
    """The files of one cache configuration: written with its ``fingerprint``, and read only
    when they carry it and KV of its shape (``num_layers`` layers of K and V, blocks of
    ``block_shape`` bytes each: ``(block_size, kv_heads, head_dim * element size)``)."""

    fingerprint: str
    num_layers: int
    block_shape: tuple[int, int, int]

    @property
    def block_size(self) -> int:
        return self.block_shape[0]

    def segment_parts(self, namespace: str, parent: str | None, first_block: int,
                      tokens: tuple[int, ...], kv: np.ndarray) -> list:
        """A segment's bytes (crc aside): ``tokens`` and ``kv`` are its own blocks' from
        ``first_block`` on; ``parent`` is the key of the segment before it."""
        header = {"version": FORMAT_VERSION, "fingerprint": self.fingerprint, "namespace": namespace,
                  "parent": parent, "first_block": first_block, "num_tokens": len(tokens),
                  "kv_shape": list(kv.shape)}
        return _file_parts(SEGMENT_MAGIC, header, tokens, kv)

    def pin_parts(self, namespace: str, tokens: tuple[int, ...], ttl: float, expiry: float) -> list:
        """A pin's bytes (crc aside); ``expiry`` is wall clock."""
        header = {"version": FORMAT_VERSION, "fingerprint": self.fingerprint, "namespace": namespace,
                  "ttl": ttl, "expiry": expiry, "num_tokens": len(tokens)}
        return _file_parts(PIN_MAGIC, header, tokens)

    def read_segment(self, path: Path) -> tuple[dict, tuple[int, ...], np.ndarray]:
        """A whole segment file, crc checked: (header, tokens, KV ``[layers, 2, blocks, *block_shape]``)."""
        data = np.fromfile(path, dtype=np.uint8)
        header, tokens, at = _verified(memoryview(data), SEGMENT_MAGIC)
        self.check(header)
        shape = tuple(header["kv_shape"])
        kv = data[at: len(data) - CRC_BYTES]
        if kv.size != int(np.prod(shape)) or shape[2] * self.block_size != len(tokens):
            raise CorruptEntry("KV size does not match its header")
        return header, tokens, kv.reshape(shape)

    def segment_head(self, path: Path) -> tuple[dict, tuple[int, ...]]:
        """A segment file's header and tokens, its size checked but not its crc (the KV is not read)."""
        header, tokens = _read_head(path, SEGMENT_MAGIC)
        self.check(header)
        if len(tokens) != header["kv_shape"][2] * self.block_size:
            raise CorruptEntry("token count does not match its blocks")
        return header, tokens

    def read_pin(self, data: memoryview) -> tuple[dict, tuple[int, ...]]:
        """A whole pin file's header and tokens, crc checked."""
        header, tokens, _ = _verified(data, PIN_MAGIC)
        self.check(header)
        return header, tokens

    def check(self, header: dict) -> None:
        """Raise ``CorruptEntry`` unless ``header`` was written by this cache configuration."""
        if header.get("version") != FORMAT_VERSION or header.get("fingerprint") != self.fingerprint:
            raise CorruptEntry("written by another model, format or cache configuration")
        shape = header.get("kv_shape")
        if shape is not None and (len(shape) != 6 or shape[0] != self.num_layers or shape[1] != 2
                                  or tuple(shape[3:]) != self.block_shape):
            raise CorruptEntry("KV shape does not match this cache")
