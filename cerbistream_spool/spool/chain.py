"""The hash chain: SHA-256, or HMAC-SHA256 when a signing key is configured.

``hash = H(prev_hash ‖ canonical)`` where ``canonical`` is built by
:func:`cerbistream_spool.spool.record.canonical_bytes`. The first record of a
lane links to :data:`GENESIS` (32 zero bytes).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Optional

__all__ = ["ENV_KEY", "GENESIS", "HASH_SIZE", "Chain", "key_from_env"]

HASH_SIZE = 32
GENESIS = bytes(HASH_SIZE)
ENV_KEY = "CERBISTREAM_SPOOL_KEY"


def key_from_env(var: str = ENV_KEY) -> Optional[bytes]:
    """The signing key from environment variable ``var`` (UTF-8), or None when unset/empty."""
    value = os.environ.get(var)
    return value.encode("utf-8") if value else None


class Chain:
    """Computes record hashes; keyed (HMAC-SHA256) when ``key`` is given."""

    __slots__ = ("key",)

    def __init__(self, key: Optional[bytes] = None) -> None:
        self.key = key or None

    @property
    def keyed(self) -> bool:
        """True when hashes are HMAC-SHA256."""
        return self.key is not None

    def digest(self, prev_hash: bytes, canonical: bytes) -> bytes:
        """The hash of a record whose predecessor hashed to ``prev_hash``."""
        if self.key is None:
            return hashlib.sha256(prev_hash + canonical).digest()
        return hmac.digest(self.key, prev_hash + canonical, "sha256")

    def digest_parts(self, prev_hash: bytes, head: bytes, body: bytes) -> bytes:
        """``digest(prev_hash, head + body)`` without joining the parts (hot path)."""
        if self.key is None:
            h = hashlib.sha256(prev_hash)
            h.update(head)
            h.update(body)
            return h.digest()
        return hmac.digest(self.key, prev_hash + head + body, "sha256")

    def matches(self, prev_hash: bytes, canonical: bytes, expected: bytes) -> bool:
        """Constant-time comparison of the recomputed hash with ``expected``."""
        return hmac.compare_digest(self.digest(prev_hash, canonical), expected)
