"""HMAC-signed tokens for the URLs we hand to providers, and webhook signatures.

A token is ``<kind>.<id>.<mac>``: the id says what it is for (a chunk, a hook), the MAC
(HMAC-SHA256 over kind and id, truncated to 128 bits) proves we issued it. Checks are
constant-time.
"""

from __future__ import annotations

import hashlib
import hmac


def _mac(secret: bytes, kind: str, ident: str) -> str:
    return hmac.new(secret, f"{kind}:{ident}".encode(), hashlib.sha256).hexdigest()[:32]


def make_token(secret: bytes, kind: str, ident: str | int) -> str:
    ident = str(ident)
    return f"{kind}.{ident}.{_mac(secret, kind, ident)}"


def read_token(secret: bytes, kind: str, token: str) -> str | None:
    """The id inside a genuine token of this kind, else None."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != kind or not parts[1] or len(token) > 200:
        return None
    expected = _mac(secret, kind, parts[1])
    if not hmac.compare_digest(expected.encode(), parts[2].encode()):
        return None
    return parts[1]


def body_signature(secret: bytes, body: bytes) -> str:
    """``X-Dialer-Signature`` value for a result webhook body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
