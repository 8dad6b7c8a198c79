"""Reasoning models' thinking as Anthropic's ``thinking`` blocks, signed by this server.

A model with a reasoning format (Qwen3, DeepSeek-R1 distills) writes its reasoning
between ``<think>`` and ``</think>`` before its answer. Its chat template says so: it
names both tags, and either reads ``enable_thinking`` (Qwen3: the request's ``thinking``
turns it on or off) or opens the thinking in its generation prompt (R1 distills: the
reply starts inside it). A model whose template has no such tags writes no thinking
blocks, whatever the request asks, as Anthropic's models without thinking answer.

With ``thinking`` disabled (or absent) the reasoning is switched off: ``enable_thinking:
false``, or an empty thinking section closed at the start of the reply.

Each thinking block is signed with a key the server holds: the signature carries the
thinking (compressed) and an HMAC over it, so a block sent back in a later request is
checked (a tampered one is a 400, as on Anthropic) and one sent back without its text
(``display: "omitted"``) is restored from its signature. The signature is sealed, not
encrypted: whoever holds it can read the thinking.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

OPEN = "<think>"
CLOSE = "</think>"
KEY_BYTES = 32
_MAC_BYTES = 32
_VERSION = b"\x01"

log = logging.getLogger(__name__)


class TemplateTokenizer(Protocol):
    chat_template: str | None

    def render_chat(self, messages: list[dict[str, str]], *, tools=None,
                    add_generation_prompt: bool = True, **template_vars: Any) -> str: ...


@dataclass(frozen=True)
class ReasoningFormat:
    """How a model thinks: ``<think>...</think>``, switched by ``enable_thinking`` or
    opened by the generation prompt."""

    switchable: bool  # the template reads enable_thinking
    opened_by_prompt: bool  # the generation prompt ends inside <think>

    @classmethod
    def of(cls, tokenizer: TemplateTokenizer) -> ReasoningFormat | None:
        """The served model's format, None for a model without one."""
        source = tokenizer.chat_template or ""
        if OPEN not in source or CLOSE not in source:
            return None
        probe = tokenizer.render_chat([{"role": "user", "content": "?"}],
                                      add_generation_prompt=True)
        return cls(switchable="enable_thinking" in source,
                   opened_by_prompt=probe.rstrip().endswith(OPEN))

    def generation(self, thinking: bool) -> GenerationPrompt:
        """How the prompt ends for a reply that thinks (or does not)."""
        if self.switchable:
            return GenerationPrompt({"enable_thinking": thinking}, opened=thinking and
                                    self.opened_by_prompt)
        if thinking:
            return GenerationPrompt(opened=self.opened_by_prompt)
        # no switch: an empty thinking section, closed before the reply starts
        return GenerationPrompt(suffix=("" if self.opened_by_prompt else OPEN + "\n\n")
                                + CLOSE + "\n\n")


@dataclass(frozen=True)
class GenerationPrompt:
    """What the chat template is told, and the text after its generation prompt."""

    template_vars: dict[str, Any] = field(default_factory=dict)
    suffix: str = ""
    opened: bool = False  # the reply starts inside <think> (the prompt opened it)


PLAIN = GenerationPrompt()


def thinking_text(thinking: str) -> str:
    """A thinking block as it stands in a prompt: the way these models write it."""
    return f"{OPEN}\n{thinking}\n{CLOSE}\n"


class ThinkingSigner:
    """Signs thinking blocks and reads them back; the key never leaves the server."""

    def __init__(self, key: bytes):
        self._key = key

    @classmethod
    def from_file(cls, path: Path) -> ThinkingSigner:
        """The key in ``path``, made there (readable by its owner only) on first use, so
        blocks signed before a restart still verify; a key of this process only where the
        file can't be written."""
        try:
            key = path.read_bytes()
            if len(key) == KEY_BYTES:
                return cls(key)
        except FileNotFoundError:
            pass
        key = secrets.token_bytes(KEY_BYTES)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(key)
        except OSError as err:
            log.warning("thinking signatures: cannot keep a key at %s (%s); blocks signed "
                        "now will not verify after a restart", path, err)
        return cls(key)

    def sign(self, thinking: str) -> str:
        body = zlib.compress(thinking.encode())
        return base64.b64encode(_VERSION + self._mac(body) + body).decode()

    def read(self, signature: str) -> str | None:
        """The thinking ``signature`` was made for, None if it is not one of this server's
        signatures or was altered."""
        try:
            raw = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            return None
        if raw[:1] != _VERSION or len(raw) < 1 + _MAC_BYTES:
            return None
        mac, body = raw[1:1 + _MAC_BYTES], raw[1 + _MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(body)):
            return None
        try:
            return zlib.decompress(body).decode()
        except (zlib.error, UnicodeDecodeError):
            return None

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, b"preheat thinking\x00" + body, hashlib.sha256).digest()


@dataclass(frozen=True)
class ThinkingSupport:
    """What a server whose model thinks needs: its format, and its key."""

    format: ReasoningFormat
    signer: ThinkingSigner
