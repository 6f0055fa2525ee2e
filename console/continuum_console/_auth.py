"""Operators, their passwords, sessions, CSRF tokens and roles.

Passwords are stored pre-hashed with scrypt (``continuum-console
hash-password``): ``scrypt$<n>$<r>$<p>$<salt, base64>$<hash, base64>``.
Sessions live in memory (a console restart logs everyone out): a random
256-bit token in an HttpOnly, SameSite=Strict cookie, an idle and an
absolute expiry, and a CSRF token of their own that every action must echo.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ADMIN",
    "READONLY",
    "ROLES",
    "AccountError",
    "Accounts",
    "LoginThrottle",
    "Operator",
    "Session",
    "Sessions",
    "hash_password",
    "verify_password",
]

ADMIN = "admin"
READONLY = "readonly"
ROLES = (ADMIN, READONLY)

# scrypt cost: 2**15 x 8 x 1 takes about 32 MiB and 50-100 ms on a small core
_N, _R, _P = 1 << 15, 8, 1
_MAXMEM = 64 << 20
_DUMMY = "scrypt$32768$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="


class AccountError(ValueError):
    """The accounts file is invalid; the message names the entry."""


def hash_password(password: str, *, n: int = _N, r: int = _R, p: int = _P) -> str:
    """The stored form of ``password``: scrypt with a random 16-byte salt."""
    if not password:
        raise ValueError("empty password")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${n}${r}${p}${b64(salt).decode()}${b64(digest).decode()}"


def _parse(stored: str) -> tuple[int, int, int, bytes, bytes]:
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("not a scrypt$n$r$p$salt$hash password hash")
    n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
    if n < 2 or n & (n - 1) or n > 1 << 20 or not 1 <= r <= 32 or not 1 <= p <= 16:
        raise ValueError("scrypt parameters out of range")
    return n, r, p, base64.b64decode(parts[4], validate=True), base64.b64decode(parts[5])


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (constant-time comparison)."""
    n, r, p, salt, want = _parse(stored)
    got = hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=len(want) or 32
    )
    return hmac.compare_digest(got, want)


@dataclass(frozen=True, slots=True)
class Operator:
    name: str
    role: str
    password_hash: str


class Accounts:
    """The operators of an accounts file (TOML)::

    [operators.alice]
    role = "admin"            # or "readonly"
    password = "scrypt$32768$8$1$...$..."
    """

    def __init__(self, operators: dict[str, Operator]) -> None:
        self._ops = dict(operators)

    @classmethod
    def load(cls, path: str | Path) -> Accounts:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise AccountError(f"{path}: {exc}") from exc
        return cls.from_mapping(data, str(path))

    @classmethod
    def from_mapping(cls, data: dict[str, object], where: str = "accounts") -> Accounts:
        unknown = set(data) - {"operators"}
        if unknown:
            raise AccountError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        table = data.get("operators", {})
        if not isinstance(table, dict):
            raise AccountError(f"{where}: [operators] must be a table")
        ops: dict[str, Operator] = {}
        for name, entry in table.items():
            here = f"{where}: [operators.{name}]"
            if not isinstance(entry, dict) or set(entry) - {"role", "password"}:
                raise AccountError(f"{here}: needs only 'role' and 'password'")
            role, pw = entry.get("role", READONLY), entry.get("password")
            if role not in ROLES:
                raise AccountError(f"{here}: role must be 'admin' or 'readonly', not {role!r}")
            if not isinstance(pw, str):
                raise AccountError(f"{here}: 'password' must be a hash (hash-password)")
            try:
                _parse(pw)
            except ValueError as exc:
                raise AccountError(f"{here}: password: {exc}") from exc
            ops[name] = Operator(name, role, pw)
        return cls(ops)

    def __len__(self) -> int:
        return len(self._ops)

    def authenticate(self, name: str, password: str) -> Operator | None:
        """The operator, if ``password`` is theirs. Unknown names cost the same
        scrypt as known ones (no user enumeration by timing)."""
        op = self._ops.get(name)
        ok = verify_password(password, op.password_hash if op else _DUMMY)
        return op if (op is not None and ok) else None


@dataclass(slots=True)
class Session:
    token: str
    user: str
    role: str
    csrf: str
    created: float
    seen: float
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN

    def csrf_ok(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token), self.csrf)


class Sessions:
    """Logged-in sessions, by token: idle expiry ``idle`` s, absolute ``ttl`` s,
    at most ``limit`` (the oldest goes first)."""

    def __init__(
        self,
        *,
        idle: float = 1800.0,
        ttl: float = 12 * 3600.0,
        limit: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle, self.ttl, self.limit = idle, ttl, limit
        self._clock = clock
        self._lock = threading.Lock()
        self._by_token: dict[str, Session] = {}

    def create(self, op: Operator) -> Session:
        now = self._clock()
        s = Session(
            secrets.token_urlsafe(32), op.name, op.role, secrets.token_urlsafe(32), now, now
        )
        with self._lock:
            self._prune(now)
            while len(self._by_token) >= self.limit:
                del self._by_token[next(iter(self._by_token))]
            self._by_token[s.token] = s
        return s

    def get(self, token: str | None, *, touch: bool = True) -> Session | None:
        """The live session of ``token``; an expired one is removed."""
        if not token:
            return None
        now = self._clock()
        with self._lock:
            s = self._by_token.get(token)
            if s is None:
                return None
            if now - s.seen > self.idle or now - s.created > self.ttl:
                del self._by_token[token]
                return None
            if touch:
                s.seen = now
            return s

    def alive(self, s: Session) -> bool:
        """Whether ``s`` is still valid, without refreshing it (live streams)."""
        return self.get(s.token, touch=False) is not None

    def drop(self, token: str | None) -> None:
        with self._lock:
            self._by_token.pop(token or "", None)

    def __len__(self) -> int:
        return len(self._by_token)

    def _prune(self, now: float) -> None:
        dead = [
            t
            for t, s in self._by_token.items()
            if now - s.seen > self.idle or now - s.created > self.ttl
        ]
        for t in dead:
            del self._by_token[t]


class LoginThrottle:
    """At most ``attempts`` failed logins per client address and per user name
    within ``window`` s; then refused until the window passes."""

    def __init__(
        self,
        attempts: int = 5,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.attempts, self.window = attempts, window
        self._clock = clock
        self._lock = threading.Lock()
        self._fails: dict[str, list[float]] = {}

    def blocked(self, *keys: str) -> bool:
        now = self._clock()
        with self._lock:
            for k in keys:
                recent = [t for t in self._fails.get(k, ()) if now - t < self.window]
                if recent:
                    self._fails[k] = recent
                else:
                    self._fails.pop(k, None)
                if len(recent) >= self.attempts:
                    return True
        return False

    def failed(self, *keys: str) -> None:
        now = self._clock()
        with self._lock:
            if len(self._fails) > 100_000:
                self._fails.clear()
            for k in keys:
                self._fails.setdefault(k, []).append(now)

    def succeeded(self, *keys: str) -> None:
        with self._lock:
            for k in keys:
                self._fails.pop(k, None)
