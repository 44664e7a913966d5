"""Bearer tokens of the admin API and the stream: one constant-time check."""

from __future__ import annotations

import hmac


def bearer_matches(authorization: str | None, token: str) -> bool:
    """True if an `Authorization` header carries `Bearer <token>`; constant time in the
    token's content, and never true for an empty configured token."""
    if not token or not authorization:
        return False
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())
