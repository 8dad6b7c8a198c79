"""Rebuild a `tokenizers.Tokenizer` from the vocabulary stored in GGUF metadata.

A GGUF carries no `tokenizer.json`, only llama.cpp's `tokenizer.ggml.*` keys: the tokens, their
types, and BPE merges (byte-level vocabularies) or scores (SentencePiece vocabularies).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from preheat.cache_dir import resolve_cache_dir
from preheat.loader.gguf_file import GGUFFile
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as Backend

logger = logging.getLogger(__name__)
# Bump when the backend built from the same vocabulary changes (its cached copies are then unused).
_BUILDER_VERSION = 1

# The split regexes of the reference Hugging Face tokenizers these `tokenizer.ggml.pre` names stand for.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_NAMES = frozenset({"llama3", "llama-v3", "llama-bpe"})
_SPACE = "\u2581"  # SentencePiece's visible space


class TokenType(IntEnum):
    """llama.cpp's `tokenizer.ggml.token_type` values."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


@dataclass(frozen=True)
class GGUFVocab:
    """The `tokenizer.ggml.*` metadata a backend is built from."""

    model: str
    pre: str | None
    tokens: list[str]
    token_types: list[int]
    merges: list[str] | None
    scores: list[float] | None
    unknown_token_id: int | None
    add_space_prefix: bool

    def digest(self) -> str:
        """Names this vocabulary (everything a backend is built from)."""
        fields = [self.model, self.pre, self.tokens, self.token_types, self.merges, self.scores,
                  self.unknown_token_id, self.add_space_prefix]
        return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:32]

    @classmethod
    def from_reader(cls, reader: GGUFFile) -> GGUFVocab:
        """Read the vocabulary keys; absent optional keys take llama.cpp's defaults."""
        tokens = gguf_metadata(reader, "tokenizer.ggml.tokens")
        if tokens is None:
            raise ValueError("GGUF file has no tokenizer (tokenizer.ggml.tokens is missing)")
        types = gguf_metadata(reader, "tokenizer.ggml.token_type")
        return cls(
            model=gguf_metadata(reader, "tokenizer.ggml.model", "llama"),
            pre=gguf_metadata(reader, "tokenizer.ggml.pre"),
            tokens=tokens,
            token_types=types or [TokenType.NORMAL] * len(tokens),
            merges=gguf_metadata(reader, "tokenizer.ggml.merges"),
            scores=gguf_metadata(reader, "tokenizer.ggml.scores"),
            unknown_token_id=gguf_metadata(reader, "tokenizer.ggml.unknown_token_id"),
            add_space_prefix=bool(gguf_metadata(reader, "tokenizer.ggml.add_space_prefix", True)),
        )


def gguf_backend(reader: GGUFFile, cache_dir: Path | None = None) -> Backend:
    """Build the tokenizer a GGUF file describes, or read it from the cache folder.

    Recovering a SentencePiece vocabulary's merges from its scores walks every split of every
    token in Python: 2 s for Gemma 3's 262k tokens, in each process that loads the model. The
    built tokenizer is kept as ``tokenizer.json`` text under ``<cache dir>/tokenizers/``,
    keyed by a hash of the vocabulary it was built from (12 MB for Gemma 3; read in 1 s).

    Raises:
        NotImplementedError: for tokenizer models other than `gpt2` (byte-level BPE) and
            `llama` (SentencePiece BPE).
    """
    vocab = GGUFVocab.from_reader(reader)
    path = resolve_cache_dir(cache_dir) / "tokenizers" / f"{vocab.digest()}-v{_BUILDER_VERSION}.json"
    try:
        return Backend.from_str(path.read_text(encoding="utf-8"))
    except Exception as exc:  # absent (the usual miss) or damaged (tokenizers raises its own): rebuild
        if path.exists():
            logger.warning("rebuilding the tokenizer cached at %s: %s", path, exc)
    backend = _build(vocab)
    try:
        write_atomically(path, backend.to_str())
    except OSError as exc:  # a read-only cache costs time next start, not this one
        logger.warning("could not cache the tokenizer at %s: %s", path, exc)
    return backend


def _build(vocab: GGUFVocab) -> Backend:
    if vocab.model == "gpt2":
        backend = _byte_level_bpe(vocab)
    elif vocab.model == "llama":
        backend = _sentencepiece_bpe(vocab)
    else:
        raise NotImplementedError(
            f"GGUF tokenizer model {vocab.model!r} is not supported (only gpt2 and llama)"
        )
    _add_special_tokens(backend, vocab)
    return backend


def gguf_metadata(reader: GGUFFile, key: str, default: Any = None) -> Any:
    """A metadata value, or `default` when the key is absent."""
    return reader.value(key, default)


def _byte_level_bpe(vocab: GGUFVocab) -> Backend:
    if vocab.merges is None:
        raise ValueError("byte-level GGUF tokenizer has no tokenizer.ggml.merges")
    merges = [tuple(merge.split(" ", 1)) for merge in vocab.merges]
    # Llama 3's reference tokenizer looks whole words up in the vocab before merging.
    ignore_merges = vocab.pre in _LLAMA3_NAMES
    backend = Backend(models.BPE(_token_ids(vocab.tokens), merges, ignore_merges=ignore_merges))
    backend.pre_tokenizer = _byte_level_pre_tokenizer(vocab.pre)
    if vocab.pre == "qwen2":
        backend.normalizer = normalizers.NFC()
    backend.decoder = decoders.ByteLevel()
    return backend


def _byte_level_pre_tokenizer(pre: str | None) -> pre_tokenizers.PreTokenizer:
    """The pre-tokenizer for `tokenizer.ggml.pre`; unknown names get GPT-2's."""

    def regex_then_bytes(pattern: str) -> pre_tokenizers.PreTokenizer:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )

    gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), gpt2])
    if pre in _LLAMA3_NAMES:
        return regex_then_bytes(_LLAMA3_SPLIT)
    if pre == "qwen2":
        return regex_then_bytes(_QWEN2_SPLIT)
    if pre not in (None, "default", "gpt2"):
        logger.warning("unknown GGUF pre-tokenizer %r; using GPT-2's", pre)
    return gpt2


def _sentencepiece_bpe(vocab: GGUFVocab) -> Backend:
    """SentencePiece BPE (Llama 2, Mistral) as a byte-fallback BPE with merges recovered from scores."""
    if vocab.scores is None:
        raise ValueError("SentencePiece GGUF tokenizer has no tokenizer.ggml.scores")
    unk = vocab.tokens[vocab.unknown_token_id] if vocab.unknown_token_id is not None else None
    model = models.BPE(
        _token_ids(vocab.tokens), _merges_from_scores(vocab), unk_token=unk, fuse_unk=True, byte_fallback=True
    )
    backend = Backend(model)
    prepend = "first" if vocab.add_space_prefix else "never"
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_SPACE, prepend_scheme=prepend, split=False)
    steps = [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if vocab.add_space_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    backend.decoder = decoders.Sequence(steps)
    return backend


def _merges_from_scores(vocab: GGUFVocab) -> list[tuple[str, str]]:
    """SentencePiece BPE merges the highest-scoring vocabulary piece first; recover that order.

    Every split of a normal token into two vocabulary pieces is a merge, ranked by the score of
    the token it produces (ties: longer left piece, then longer right piece, then vocabulary order).
    """
    ids = _token_ids(vocab.tokens)
    ranked: list[tuple[float, int, int, int, tuple[str, str]]] = []
    for index, (token, kind, score) in enumerate(
        zip(vocab.tokens, vocab.token_types, vocab.scores, strict=True)
    ):
        if kind not in (TokenType.NORMAL, TokenType.USER_DEFINED):
            continue
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ids and right in ids:
                ranked.append((-score, -len(left), -len(right), index, (left, right)))
    ranked.sort()
    return [pair for *_, pair in ranked]


def _add_special_tokens(backend: Backend, vocab: GGUFVocab) -> None:
    """Make control and user-defined tokens match whole in text instead of being split into pieces.

    Control tokens (`<|im_start|>`, `<s>`, ...) are special: `decode` can skip them. User-defined
    ones (e.g. `<think>`) are ordinary added tokens that stay in decoded text, as in llama.cpp.
    """
    special = (TokenType.CONTROL, TokenType.UNKNOWN)
    backend.add_special_tokens(
        [
            AddedToken(token, special=True, normalized=False)
            for token, kind in zip(vocab.tokens, vocab.token_types, strict=True)
            if kind in special
        ]
    )
    backend.add_tokens(
        [
            AddedToken(token, special=False, normalized=False)
            for token, kind in zip(vocab.tokens, vocab.token_types, strict=True)
            if kind == TokenType.USER_DEFINED
        ]
    )


def _token_ids(tokens: list[str]) -> dict[str, int]:
    return {token: index for index, token in enumerate(tokens)}


def write_atomically(path: Path, text: str) -> None:
    """Via a temporary file and a rename: a process reading at the same time never sees half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
