"""Sessions, CSRF tokens and login throttling for the owner's page.

Sessions live in the page's memory only: a random 256-bit token in an HttpOnly, Secure,
SameSite=Strict cookie names one :class:`Session`; a restart of the page logs everybody out,
which is what a shop expects of a box that was switched off. Each session carries its own CSRF
token (a hidden field in every form, compared in constant time). A session ends after
``web.session_idle_s`` without a request, ``web.session_max_s`` after login, at logout, when
its account is removed, or when its password changes.

Throttling by client address (independent of the account lockout in
:mod:`appliance.web.accounts`): after ``lockout_failures`` failed logins from one address
within ``lockout_s``, that address is refused without checking any password until the window
has passed, so guessing across many account names is slowed as well.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

COOKIE_NAME: Final = "appliance_session"
CSRF_FIELD: Final = "csrf"
TOKEN_BYTES: Final = 32


@dataclass(slots=True)
class Session:
    """One logged-in browser."""

    token: str
    account: str
    role: str
    client: str
    created_at: float
    last_seen: float
    password_stamp: float
    """The account's ``password_changed_at`` at login; a different one ends the session."""
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(TOKEN_BYTES))
    flash: dict[str, str] = field(default_factory=dict)
    """Call reference → a message for the next view of that call's page (shown once)."""

    def csrf_ok(self, submitted: str | None) -> bool:
        """True when ``submitted`` is this session's CSRF token (constant-time compare)."""
        return bool(submitted) and hmac.compare_digest(self.csrf, str(submitted))


class Sessions:
    """The live sessions (thread-safe; the clock is injectable for tests)."""

    def __init__(self, *, idle_s: float, max_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.idle_s = idle_s
        self.max_s = max_s
        self._clock = clock
        self._by_token: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, account: str, role: str, client: str, password_stamp: float) -> Session:
        """Start a session for ``account`` (a fresh token: no fixation of an old one)."""
        now = self._clock()
        session = Session(secrets.token_urlsafe(TOKEN_BYTES), account, role, client, now, now,
                          password_stamp)
        with self._lock:
            self._expire(now)
            self._by_token[session.token] = session
        return session

    def get(self, token: str | None, *, password_stamp: Callable[[str], float | None]
            ) -> Session | None:
        """The live session for ``token`` (touching it), or None.

        Args:
            token: the cookie value.
            password_stamp: account name → its ``password_changed_at`` now, or None when the
                account no longer exists; a session from before a change is ended.
        """
        if not token:
            return None
        now = self._clock()
        with self._lock:
            session = self._by_token.get(token)
            if session is None:
                return None
            if (now - session.last_seen > self.idle_s or now - session.created_at > self.max_s):
                del self._by_token[token]
                return None
        stamp = password_stamp(session.account)
        if stamp is None or stamp != session.password_stamp:
            self.end(token)
            return None
        session.last_seen = now
        return session

    def end(self, token: str | None) -> None:
        """Log out (unknown tokens are fine)."""
        if token:
            with self._lock:
                self._by_token.pop(token, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_token)

    def _expire(self, now: float) -> None:
        stale = [t for t, s in self._by_token.items()
                 if now - s.last_seen > self.idle_s or now - s.created_at > self.max_s]
        for t in stale:
            del self._by_token[t]


class Throttle:
    """Failed logins per client address in a sliding window."""

    def __init__(self, *, max_failures: int, window_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._clock = clock
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def blocked(self, client: str) -> bool:
        """True while ``client`` has too many recent failures."""
        now = self._clock()
        with self._lock:
            recent = [t for t in self._failures.get(client, []) if now - t < self.window_s]
            if recent:
                self._failures[client] = recent
            else:
                self._failures.pop(client, None)
            return len(recent) >= self.max_failures

    def failed(self, client: str) -> None:
        """Count one failed login from ``client``."""
        with self._lock:
            self._failures.setdefault(client, []).append(self._clock())

    def succeeded(self, client: str) -> None:
        """A good login clears the address's count."""
        with self._lock:
            self._failures.pop(client, None)
