"""Sign-in limits: failed sign-ins slow down whoever makes them, without letting
anyone lock an account's owner out.

Failures are counted three ways, for the form and the token API together: per
username from one address, per username from every address, and per address for
every username.  Past a threshold each count locks its scope with an exponential
backoff (``SIGN_IN_BACKOFF`` seconds, doubled with each further failure, at most
``SIGN_IN_BACKOFF_MAX``).  A locked username still lets in an address that has not
failed recently (a "fresh" address) once ``SIGN_IN_FRESH_WAIT`` seconds of the lock
have passed, so an attacker who hammers an account slows its owner down by seconds,
not for good, while the attacker's own addresses stay locked.

The counters live in the rate limiter's storage (``RATELIMIT_STORAGE_URI``):
memcached counts once for every worker and app instance; memory counts per process.
Only increments, reads and deletes are used, which memcached does atomically, so
the limits hold across processes; the storage holds hashes, never a username or
an address.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, field

from flask import current_app
from limits.errors import StorageError
from limits.storage import Storage, storage_from_string

from app.errors import TooManyAttempts
from app.models import User
from app.services import audit

log = logging.getLogger(__name__)

LOCKED = "auth.sign_in_locked"
# Scopes, as the audit log names them.
ADDRESS, USER, USER_ADDRESS = "address", "user", "user_address"
_EXTENSION = "sign_in_limits"


@dataclass(frozen=True)
class Settings:
    window: int
    thresholds: dict[str, int]
    backoff: int
    backoff_max: int
    fresh_wait: int

    def lock_seconds(self, scope: str, failures: int) -> int:
        """The lock that the ``failures``-th failure in ``scope`` earns: the base at
        the threshold, doubled for each failure beyond it, capped."""
        beyond = min(failures - self.thresholds[scope], 30)
        return max(1, min(self.backoff_max, self.backoff * 2 ** beyond))


def settings() -> Settings | None:
    """The configured limits, or None where rate limits are off (tests that sign in
    many times turn them off with ``RATELIMIT_ENABLED``)."""
    config = current_app.config
    if not config.get("RATELIMIT_ENABLED", True):
        return None
    return Settings(
        window=max(1, int(config["SIGN_IN_WINDOW"])),
        thresholds={USER_ADDRESS: max(1, int(config["SIGN_IN_USER_ADDRESS_FAILURES"])),
                    USER: max(1, int(config["SIGN_IN_USER_FAILURES"])),
                    ADDRESS: max(1, int(config["SIGN_IN_ADDRESS_FAILURES"]))},
        backoff=max(1, int(config["SIGN_IN_BACKOFF"])),
        backoff_max=max(1, int(config["SIGN_IN_BACKOFF_MAX"])),
        fresh_wait=max(0, int(config["SIGN_IN_FRESH_WAIT"])),
    )


def _storage() -> Storage:
    """One storage per app, made on first use (after gunicorn forked the worker).
    A memcached that stops answering fails a sign-in's count within seconds instead
    of holding the request (pymemcache waits forever by default)."""
    storage = current_app.extensions.get(_EXTENSION)
    if storage is None:
        uri = current_app.config["RATELIMIT_STORAGE_URI"]
        options = {"connect_timeout": 2, "timeout": 2} if uri.startswith("memcached") else {}
        storage = storage_from_string(uri, wrap_exceptions=True, **options)
        storage = current_app.extensions.setdefault(_EXTENSION, storage)
    return storage


def _stem(scope: str, value: str) -> str:
    digest = hashlib.sha256(f"{scope}\0{value}".encode()).hexdigest()[:40]
    return f"{current_app.config['RATELIMIT_KEY_PREFIX']}/sign-in/{scope}/{digest}"


def _failures(storage: Storage, stem: str) -> int:
    """Failures counted in the current window: attempts less those that did not fail."""
    return max(0, storage.get(f"{stem}/attempts") - storage.get(f"{stem}/settled"))


def _remaining(storage: Storage, key: str) -> float:
    if not storage.get(key):
        return 0.0
    return max(0.0, storage.get_expiry(key) - time.time())


def _settle(storage: Storage, stem: str) -> None:
    """Take one attempt back out of the failures; the count of settled attempts ends
    with the window of the attempts it offsets."""
    left = int(storage.get_expiry(f"{stem}/attempts") - time.time())
    if left >= 1:
        storage.incr(f"{stem}/settled", left)


@dataclass
class Attempt:
    """A sign-in attempt that the limits let through: it is counted as a failure
    until ``succeeded`` says otherwise, so parallel guesses cannot all slip in below a
    threshold.  ``storage`` is None when limits are off or unreachable."""

    storage: Storage | None
    stems: dict[str, str] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    # Locks this attempt took (scope -> seconds); they stand if it fails.
    locks: dict[str, int] = field(default_factory=dict)
    fresh_wait_started: bool = False

    def succeeded(self) -> None:
        """The password was right: this username's failures from this address are
        forgotten, and the locks taken in case it was wrong are given back."""
        if self.storage is None:
            return
        try:
            for counter in ("attempts", "settled", "lock"):
                self.storage.clear(f"{self.stems[USER_ADDRESS]}/{counter}")
            self._undo((ADDRESS, USER))
        except (StorageError, OSError):
            log.exception("sign-in limits: the storage failed; the success is not counted")

    def first_step_passed(self) -> None:
        """The password was right and a second factor follows: this attempt is no
        failure, but the failures before it stand until the code is right too (else
        anyone with the password could guess codes forever, signing in again after
        each miss)."""
        if self.storage is None:
            return
        try:
            self._undo((ADDRESS, USER_ADDRESS, USER))
        except (StorageError, OSError):
            log.exception("sign-in limits: the storage failed; the attempt stays counted")

    def failed(self, user: User | None) -> None:
        """The password was wrong (or the account unknown or inactive): the attempt
        stays counted and the locks it took stand; each is audited (the caller
        commits)."""
        for scope, seconds in self.locks.items():
            details = {"scope": scope, "seconds": seconds, "failures": self.failures[scope]}
            if user is not None:
                audit.record(None, LOCKED, "user", user.id, details)
            elif scope == ADDRESS:
                # An unknown name is no account (it may even be a mistyped password):
                # only the address is worth recording, and the entry's IP names it.
                audit.record(None, LOCKED, "address", "", details)

    def _undo(self, scopes: tuple[str, ...]) -> None:
        """Take back what was taken on the assumption that this attempt fails."""
        assert self.storage is not None
        for scope in scopes:
            _settle(self.storage, self.stems[scope])
        for scope in self.locks:
            self.storage.clear(f"{self.stems[scope]}/lock")
        if self.fresh_wait_started:
            self.storage.clear(f"{self.stems[USER]}/fresh")


def begin(username: str, address: str) -> Attempt:
    """Count a sign-in attempt before its password is checked, or refuse it.

    :raises TooManyAttempts: while a lock holds this username or address back, with
        the seconds until a retry can pass.
    """
    limits = settings()
    if limits is None:
        return Attempt(None)
    name = (username or "").strip().lower()[:64]
    storage = _storage()
    attempt = Attempt(storage, {
        USER_ADDRESS: _stem(USER_ADDRESS, f"{name}\0{address}"),
        USER: _stem(USER, name),
        ADDRESS: _stem(ADDRESS, address),
    })
    try:
        waits = _count(attempt, limits)
        if waits:  # refused: not a failure, and nothing of it stays
            attempt._undo((ADDRESS, USER_ADDRESS, USER))
    except (StorageError, OSError):
        # Refusing every sign-in while memcached is down would lock out the
        # administrators who could fix it: let the password decide, and say so.
        log.exception("sign-in limits: the storage failed; this attempt is not limited")
        return Attempt(None)
    if waits:
        raise TooManyAttempts(max(1, math.ceil(max(waits))))
    return attempt


def _count(attempt: Attempt, limits: Settings) -> list[float]:
    """Count the attempt in each scope and take the lock of each scope at or past its
    threshold; returns how long each lock that someone else holds still lasts."""
    storage, stems = attempt.storage, attempt.stems
    assert storage is not None
    fresh = _failures(storage, stems[ADDRESS]) == 0
    waits: list[float] = []
    for scope in (ADDRESS, USER_ADDRESS, USER):
        stem = stems[scope]
        failures = (storage.incr(f"{stem}/attempts", limits.window)
                    - storage.get(f"{stem}/settled"))
        attempt.failures[scope] = failures
        if failures < limits.thresholds[scope]:
            continue
        seconds = limits.lock_seconds(scope, failures)
        if storage.incr(f"{stem}/lock", seconds) == 1:
            attempt.locks[scope] = seconds
            if scope == USER and limits.fresh_wait:
                # A fresh address waits this long from the start of the lock.
                attempt.fresh_wait_started = storage.incr(
                    f"{stem}/fresh", limits.fresh_wait) == 1
        elif scope == USER and fresh:
            fresh_wait = _remaining(storage, f"{stem}/fresh")
            if fresh_wait:
                waits.append(fresh_wait)
        else:
            waits.append(_remaining(storage, f"{stem}/lock"))
    return waits
