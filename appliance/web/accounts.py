"""The web page's accounts: names, roles and argon2id password hashes in one small JSON file.

Why a file of its own (``<state_dir>/web/users.json``, 0600, owned by the web's user) and not
a table in the index: the index is read by everyone in the ``appliance`` group, copied into
backups and exports, and its schema belongs to the store; password hashes need none of that.
The file is tiny (a shop has a handful of accounts), written atomically (temporary file,
fsync, rename) under an ``flock`` so ``appliance user …`` and the running page never lose each
other's writes, and re-read when its mtime changes, so a removed account or a new password
takes effect at the next request without restarting the page.

Lockout (``web.lockout_failures`` wrong passwords in a row lock the account for
``web.lockout_s``) is kept in the same file, so a restart does not reset it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from appliance.errors import ApplianceError
from appliance.files import write_atomically

_LOGGER = logging.getLogger(__name__)

USERS_FILE_NAME: Final = "users.json"
USERS_FILE_MODE: Final = 0o600
WEB_DIR_MODE: Final = 0o750
#: Roles, least to most trusted for records (technician sees no audio at all).
ROLES: Final = ("staff", "owner", "technician")
#: What each role may do (checked by every page, docs/web.md "Roles").
PERMISSIONS: Final[dict[str, frozenset[str]]] = {
    "staff": frozenset({"calls", "play", "status"}),
    "owner": frozenset({"calls", "play", "status", "handover", "erase", "audit", "health",
                        "logs"}),
    "technician": frozenset({"status", "health", "logs", "audit"}),
}
NAME_PATTERN: Final = re.compile(r"^[a-z][a-z0-9._-]{0,31}$")
MIN_PASSWORD_CHARS: Final = 8
#: argon2id cost: 7 MiB, 5 passes, 1 lane — one of OWASP's equivalent minimum settings
#: (docs/web.md "Accounts"), not argon2-cffi's 64 MiB default: the page must stay within
#: 50 MB RSS on a small box even while a login is hashed (the memory is taken and given back
#: at every login; docs/performance.md has the peak).
ARGON2_MEMORY_KIB: Final = 7168
ARGON2_TIME_COST: Final = 5
ARGON2_PARALLELISM: Final = 1
_HASHER: Final = PasswordHasher(time_cost=ARGON2_TIME_COST, memory_cost=ARGON2_MEMORY_KIB,
                                parallelism=ARGON2_PARALLELISM)


class AccountError(ApplianceError):
    """An account operation is not possible (unknown name, weak password, bad role …)."""


@dataclass(frozen=True, slots=True)
class Account:
    """One account as stored (without its hash)."""

    name: str
    role: str
    created_at: float
    password_changed_at: float
    failures: int
    locked_until: float

    def can(self, permission: str) -> bool:
        """True when this account's role grants ``permission``."""
        return permission in PERMISSIONS.get(self.role, frozenset())


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid account name, else raise :class:`AccountError`."""
    if not NAME_PATTERN.match(name):
        raise AccountError(f"{name!r}: an account name is 1–32 characters a-z 0-9 . _ -, "
                           "starting with a letter")
    return name


def check_password(password: str) -> str:
    """Return ``password`` if long enough, else raise :class:`AccountError`."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise AccountError(f"a password needs at least {MIN_PASSWORD_CHARS} characters")
    return password


class Accounts:
    """The accounts file. Thread-safe; every write is atomic and locked across processes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._cache: dict[str, dict[str, Any]] = {}
        self._cache_key: tuple[int, int] | None = None

    @classmethod
    def in_dir(cls, web_dir: Path) -> Accounts:
        """The accounts file of a web directory (``Config.web_dir``)."""
        return cls(Path(web_dir) / USERS_FILE_NAME)

    # ------------------------------------------------------------------ reading

    def _users(self) -> dict[str, dict[str, Any]]:
        """The stored users, re-read only when the file changed (mtime and size)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return {}
        key = (st.st_mtime_ns, st.st_size)
        if key != self._cache_key:
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise AccountError(f"cannot read {self.path}: {exc}") from exc
            self._cache = dict(data.get("users", {}))
            self._cache_key = key
        return self._cache

    def get(self, name: str) -> Account | None:
        """The account ``name``, or None."""
        with self._lock:
            raw = self._users().get(name)
        return None if raw is None else _account(name, raw)

    def list(self) -> list[Account]:
        """Every account, by name."""
        with self._lock:
            users = self._users()
        return [_account(name, users[name]) for name in sorted(users)]

    # ------------------------------------------------------------------ writing

    @contextlib.contextmanager
    def _edit(self) -> Iterator[dict[str, dict[str, Any]]]:
        """Read-modify-write under an exclusive flock; the new file replaces the old atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=WEB_DIR_MODE)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, USERS_FILE_MODE)
        with self._lock:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._cache_key = None
                users = {k: dict(v) for k, v in self._users().items()}
                yield users
                _write_atomic(self.path, {"version": 1, "users": users})
                self._cache_key = None
            finally:
                os.close(fd)  # releases the flock

    def add(self, name: str, role: str, password: str) -> Account:
        """Create an account.

        Raises:
            AccountError: bad name, role or password, or the name exists.
        """
        check_name(name)
        if role not in ROLES:
            raise AccountError(f"{role!r}: the role is one of {', '.join(ROLES)}")
        hashed = _HASHER.hash(check_password(password))
        now = time.time()
        with self._edit() as users:
            if name in users:
                raise AccountError(f"account {name!r} exists (appliance user passwd changes "
                                   "its password)")
            users[name] = {"role": role, "hash": hashed, "created_at": now,
                           "password_changed_at": now, "failures": 0, "locked_until": 0.0}
        _LOGGER.info("Web account %s added (%s)", name, role)
        return _account(name, users[name])

    def set_password(self, name: str, password: str) -> None:
        """Replace the password (and clear a lockout); sessions of ``name`` end.

        Raises:
            AccountError: unknown account or weak password.
        """
        hashed = _HASHER.hash(check_password(password))
        with self._edit() as users:
            if name not in users:
                raise AccountError(f"no account {name!r}")
            users[name].update(hash=hashed, password_changed_at=time.time(), failures=0,
                               locked_until=0.0)
        _LOGGER.info("Web account %s: password changed", name)

    def remove(self, name: str) -> None:
        """Delete the account (its sessions end at their next request).

        Raises:
            AccountError: unknown account.
        """
        with self._edit() as users:
            if users.pop(name, None) is None:
                raise AccountError(f"no account {name!r}")
        _LOGGER.info("Web account %s removed", name)

    def authenticate(self, name: str, password: str, *, max_failures: int,
                     lockout_s: float, now: float | None = None) -> tuple[Account | None, str]:
        """Check a password; count failures and lock the account after ``max_failures``.

        Always hashes (a dummy verify for unknown names), so the answer time does not tell
        whether an account exists.

        Returns:
            ``(account, "ok")`` on success; ``(None, reason)`` otherwise, reason one of
            ``"unknown"``, ``"wrong"``, ``"locked"``.
        """
        now = time.time() if now is None else now
        with self._lock:
            raw = self._users().get(name)
        if raw is None:
            _dummy_verify(password)
            return None, "unknown"
        if raw.get("locked_until", 0.0) > now:
            _dummy_verify(password)
            return None, "locked"
        ok: bool
        try:
            ok = _HASHER.verify(raw["hash"], password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            ok = False
        with self._edit() as users:
            entry = users.get(name)
            if entry is None:  # removed meanwhile
                return None, "unknown"
            if ok:
                entry["failures"] = 0
                entry["locked_until"] = 0.0
                if _HASHER.check_needs_rehash(entry["hash"]):
                    entry["hash"] = _HASHER.hash(password)
            else:
                entry["failures"] = int(entry.get("failures", 0)) + 1
                if entry["failures"] >= max_failures:
                    entry["locked_until"] = now + lockout_s
                    entry["failures"] = 0
            result = _account(name, entry)
        if not ok:
            return None, "locked" if result.locked_until > now else "wrong"
        return result, "ok"


_DUMMY_HASH: str | None = None


def _dummy_verify(password: str) -> None:
    """Spend the time of one verify, so unknown and locked names answer like wrong passwords."""
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = _HASHER.hash("not-a-real-password")
    with contextlib.suppress(VerificationError):
        _HASHER.verify(_DUMMY_HASH, password)


def _account(name: str, raw: dict[str, Any]) -> Account:
    return Account(name=name, role=str(raw["role"]), created_at=float(raw["created_at"]),
                   password_changed_at=float(raw.get("password_changed_at", 0.0)),
                   failures=int(raw.get("failures", 0)),
                   locked_until=float(raw.get("locked_until", 0.0)))


def _write_atomic(path: Path, value: Any) -> None:
    """Replace ``path`` by ``value`` as JSON, all at once (:func:`write_atomically`)."""
    write_atomically(path, json.dumps(value, indent=1, sort_keys=True).encode("utf-8"),
                     USERS_FILE_MODE)
