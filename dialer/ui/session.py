"""Console sessions: a signed cookie, CSRF tokens, and the login form's own token.

The cookie is ``v1.<payload>.<mac>``: the payload (base64url JSON) carries a random
session id, its expiry and a fingerprint of the API token used to log in; the MAC is
HMAC-SHA256 under a key derived from the callback secret, so a session needs no
server-side state while it lasts. It stops working when it expires, when its token is
removed from ``DIALER_API_TOKENS``, or when the user logs out: the id is then kept in
PostgreSQL until its expiry (``ui.logouts``, read by every instance), and remembered
here too, so this process refuses the cookie without a query.

CSRF tokens are HMACs of the session id (synchronizer tokens that need no storage); the
login form, which has no session yet, is bound the same way to a short-lived nonce cookie.
Every comparison is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import orjson

COOKIE = "dialer_session"
LOGIN_COOKIE = "dialer_login"
COOKIE_PATH = "/ui"
SESSION_TTL_S = 8 * 3600  # one working shift
LOGIN_TTL_S = 3600
_MAX_COOKIE = 512
REVOKED_KEPT = 1000  # logged-out ids this process remembers (the database has them all)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Session:
    sid: str
    expires: int  # unix seconds
    token_fp: str


class Sessions:
    """Issues and checks session cookies and CSRF tokens for one secret."""

    def __init__(self, secret: bytes) -> None:
        self._key = hmac.new(secret, b"dialer-ui-session-v1", hashlib.sha256).digest()
        self._csrf_key = hmac.new(secret, b"dialer-ui-csrf-v1", hashlib.sha256).digest()
        self._revoked: dict[str, int] = {}
        self._lock = threading.Lock()

    # -- tokens ------------------------------------------------------------------
    def fingerprint(self, token: str) -> str:
        return hmac.new(self._key, b"token:" + token.encode(), hashlib.sha256).hexdigest()[:32]

    @staticmethod
    def token_matches(presented: str, tokens: Iterable[str]) -> str | None:
        """The configured token equal to ``presented`` (constant time, no early exit)."""
        p = presented.encode()
        found: str | None = None
        for t in tokens:
            if t and hmac.compare_digest(p, t.encode()):
                found = t
        return found

    # -- session cookie ------------------------------------------------------------
    def issue(self, token: str, now: float, ttl: int = SESSION_TTL_S) -> tuple[str, Session]:
        s = Session(sid=secrets.token_urlsafe(18), expires=int(now) + ttl, token_fp=self.fingerprint(token))
        payload = _b64(orjson.dumps({"sid": s.sid, "exp": s.expires, "tfp": s.token_fp}))
        return f"v1.{payload}.{self._mac(payload)}", s

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._key, b"v1." + payload.encode(), hashlib.sha256).digest())

    def read(self, cookie: str | None, now: float, tokens: Iterable[str]) -> Session | None:
        """The session in a genuine, unexpired cookie whose token is still configured."""
        if not cookie or len(cookie) > _MAX_COOKIE:
            return None
        parts = cookie.split(".")
        if len(parts) != 3 or parts[0] != "v1":
            return None
        if not hmac.compare_digest(self._mac(parts[1]).encode(), parts[2].encode()):
            return None
        try:
            data = orjson.loads(_unb64(parts[1]))
            s = Session(sid=str(data["sid"]), expires=int(data["exp"]), token_fp=str(data["tfp"]))
        except (ValueError, KeyError, TypeError):
            return None
        if s.expires <= now or self.is_revoked(s.sid, now):
            return None
        ok = False
        for t in tokens:
            ok |= hmac.compare_digest(self.fingerprint(t).encode(), s.token_fp.encode())
        return s if ok else None

    def remember_revoked(self, s: Session, now: float) -> None:
        """Refuse ``s`` from now on in this process (``ui.logouts`` records it for all)."""
        with self._lock:
            self._revoked[s.sid] = s.expires
            if len(self._revoked) > REVOKED_KEPT:
                kept = {k: v for k, v in self._revoked.items() if v > now}
                # still too many: forget the oldest (the database still refuses them)
                self._revoked = dict(list(kept.items())[-REVOKED_KEPT:])

    def is_revoked(self, sid: str, now: float) -> bool:
        with self._lock:
            exp = self._revoked.get(sid)
        return exp is not None and exp > now

    # -- CSRF ----------------------------------------------------------------------
    def csrf_token(self, s: Session) -> str:
        return _b64(hmac.new(self._csrf_key, b"session:" + s.sid.encode(), hashlib.sha256).digest())

    def csrf_ok(self, s: Session | None, presented: str | None) -> bool:
        if s is None or not presented:
            return False
        return hmac.compare_digest(self.csrf_token(s).encode(), presented.encode())

    # -- the login form (no session yet): a nonce cookie and its token ---------------
    @staticmethod
    def new_login_nonce() -> str:
        return secrets.token_urlsafe(18)

    def login_csrf(self, nonce: str) -> str:
        return _b64(hmac.new(self._csrf_key, b"login:" + nonce.encode(), hashlib.sha256).digest())

    def login_csrf_ok(self, nonce: str | None, presented: str | None) -> bool:
        if not nonce or not presented or len(nonce) > 64:
            return False
        return hmac.compare_digest(self.login_csrf(nonce).encode(), presented.encode())
