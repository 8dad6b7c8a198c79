"""API keys: who may call, and which cache namespace a caller's prefixes live in."""
from __future__ import annotations

import hashlib
import hmac

from starlette.datastructures import Headers

from preheat.server.errors import AuthenticationError


def presented_key(headers: Headers) -> str | None:
    """The key from ``x-api-key`` or ``Authorization: Bearer``, as the SDK sends either."""
    key = headers.get("x-api-key")
    if key:
        return key
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def namespace_for(key: str | None) -> str:
    """Cache namespace of a key: prefixes are only ever shared by callers with the same key."""
    return hashlib.sha256(f"preheat-namespace\0{key or ''}".encode()).hexdigest()[:32]


class Authenticator:
    """Checks keys when some are configured; an open server accepts any (or none)."""

    def __init__(self, api_keys: tuple[str, ...]):
        self._keys = tuple(k.encode() for k in api_keys)

    def namespace(self, headers: Headers) -> str:
        key = presented_key(headers)
        if self._keys:
            if key is None:
                raise AuthenticationError("x-api-key header is required")
            if not any(hmac.compare_digest(key.encode(), k) for k in self._keys):
                raise AuthenticationError("invalid x-api-key")
        return namespace_for(key)
