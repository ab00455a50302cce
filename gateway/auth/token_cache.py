"""The verified-token cache: a reconnect with the same token costs no signature check.

Keyed by the SHA-256 of the token, never the token. An entry is used only while the token would
still be accepted (``exp`` plus ``GATEWAY_JWT_LEEWAY``, the same bound that ends streams) and while
the key that verified it is still in the JWKS. See docs/security.md (Key documents).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from gateway.auth.claims import Principal


@dataclass(frozen=True, slots=True)
class _Verified:
    principal: Principal
    key_thumbprint: str
    valid_until: float  # exp + leeway, wall clock


class VerifiedTokenCache:
    """Bounded LRU of verified tokens by SHA-256 digest; entries end at ``exp + leeway`` or with their key."""

    def __init__(self, size: int, leeway: float) -> None:
        self._size = size
        self._leeway = leeway
        self._entries: OrderedDict[bytes, _Verified] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: bytes, now: float, key_present: Callable[[str], bool]) -> Principal | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if now >= entry.valid_until or not key_present(entry.key_thumbprint):
            del self._entries[digest]
            return None
        self._entries.move_to_end(digest)
        return entry.principal

    def put(self, digest: bytes, principal: Principal, key_thumbprint: str) -> None:
        if self._size <= 0:
            return
        self._entries[digest] = _Verified(principal, key_thumbprint, principal.expires_at + self._leeway)
        self._entries.move_to_end(digest)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def drop_keys(self, thumbprints: set[str]) -> None:
        """Forgets every token verified by one of these keys (removed from, or replaced in, the JWKS)."""
        stale = [digest for digest, entry in self._entries.items() if entry.key_thumbprint in thumbprints]
        for digest in stale:
            del self._entries[digest]
