"""API keys and the Host header allow-list.

A key arrives as `Authorization: Bearer KEY` or `api-key: KEY` (Qdrant's header) and is
compared with every configured key by `hmac.compare_digest`, all of them each time, so the
answer's timing says nothing about how much of a key matched or which key did.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence

__all__ = ["HostCheck", "KeyRing", "presented_key"]

CHALLENGE = 'Bearer realm="avindex"'


def presented_key(authorization: str | None, api_key: str | None) -> str | None:
    """The key a request carries, from either header (Authorization wins)."""
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    if api_key and api_key.strip():
        return api_key.strip()
    return None


class KeyRing:
    """The configured keys; `enabled` is False when none are (then every request passes)."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = [k.encode() for k in keys if k]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def accepts(self, key: str | None) -> bool:
        if not self._keys:
            return True
        given = (key or "").encode("utf-8", "replace")
        matched = False
        for known in self._keys:  # no early exit: every key is compared every time
            matched |= hmac.compare_digest(given, known)
        return matched and key is not None


class HostCheck:
    """`Host` values from `http.allowed_hosts`: `name` (any port), `name:port`, `*.domain`."""

    def __init__(self, allowed: Sequence[str]) -> None:
        self.allowed = [h.strip().lower() for h in allowed if h.strip()]

    def accepts(self, host: str | None) -> bool:
        if not self.allowed:
            return True
        host = (host or "").strip().lower()
        if not host:
            return False
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        for entry in self.allowed:
            if entry.startswith("*."):
                if name.endswith(entry[1:]) and name != entry[2:]:
                    return True
            elif entry in (host, name):
                return True
        return False
