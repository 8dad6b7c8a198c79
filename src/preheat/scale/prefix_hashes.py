"""Names for a prompt's prefixes that every process computes alike.

The router compares the prefixes a request starts with against those each replica holds,
without tokens crossing the wire: a prefix of length ``n`` is named by a 64-bit hash of
its tokens, the same whatever follows it and whichever other prefixes are named. Prefixes
are named at every ``CHUNK_TOKENS`` boundary (so a conversation that grew still matches
the part a replica holds: a message thread's next turn finds the replica holding its
history) and at any other length asked for (a cache breakpoint's). A 3k-token prompt has
about fifty names, 400 bytes.
"""
from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence
from hashlib import blake2b

CHUNK_TOKENS = 64


def _digest(previous: bytes, tokens: Sequence[int]) -> bytes:
    return blake2b(previous + array("I", tokens).tobytes(), digest_size=8).digest()


def prefix_hashes(token_ids: Sequence[int], lengths: Iterable[int] = ()) -> dict[int, int]:
    """``{n: hash of token_ids[:n]}`` for each chunk boundary and each of ``lengths``
    (those past the end, or 0, are left out).

    Chunks are chained (a chunk's hash covers the one before it), and a length between
    boundaries extends the chain of the boundary below it, so a hash depends only on its
    prefix's tokens.
    """
    total = len(token_ids)
    wanted = sorted({n for n in lengths if 0 < n <= total})
    chain, named, boundary = b"", {}, 0
    for n in sorted({*range(CHUNK_TOKENS, total + 1, CHUNK_TOKENS), *wanted}):
        while boundary + CHUNK_TOKENS <= n:
            chain = _digest(chain, token_ids[boundary:boundary + CHUNK_TOKENS])
            boundary += CHUNK_TOKENS
        digest = chain if n == boundary else _digest(chain, token_ids[boundary:n])
        named[n] = int.from_bytes(digest, "little")
    return named
