"""Bearer tokens for ``/v1/*``, compared in constant time."""

from __future__ import annotations

import hmac

from fastapi import Request

from dialer.errors import Unauthorized
from dialer.http.connections import trust_body


class TokenCheck:
    def __init__(self, tokens: list[str]) -> None:
        self._tokens = [t.encode() for t in tokens if t]

    def valid(self, presented: str) -> bool:
        p = presented.encode()
        ok = False
        for t in self._tokens:  # no early exit: timing does not tell which token matched
            ok |= hmac.compare_digest(p, t)
        return ok

    async def __call__(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
        if not self._tokens:
            raise Unauthorized("the API is disabled: no DIALER_API_TOKENS configured")
        if not self.valid(token.strip()):
            raise Unauthorized("invalid bearer token")
        trust_body(request.scope)  # its body may take its time (an upload over a slow link)
