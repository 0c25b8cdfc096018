"""Two-factor sign-in: time-based one-time codes (RFC 6238) and recovery codes.

A code is accepted for the server's 30-second step and for one step either side
(``VALID_WINDOW``), because phones' clocks drift and a code typed at the end of its
step arrives in the next one.  Each step is good once per account: the last accepted
step is stored and only a later one passes, so a code seen over a shoulder or
replayed from a captured request opens nothing.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, cast

import pyotp
from pyotp.utils import strings_equal
from sqlalchemy import CursorResult, delete, func, or_, select, update
from werkzeug.security import check_password_hash

from app.errors import Conflict, Forbidden, ValidationError
from app.extensions import db
from app.models import RecoveryCode, User
from app.models.base import utcnow
from app.services import audit, settings, sign_in_limits
from app.services.common import get_or_404, require_admin

ISSUER = "Reverse Proxy Control Center"
VALID_WINDOW = 1
RECOVERY_CODE_COUNT = 10
# 16 characters of 31 (no 0/o, 1/l/i) carry 79 bits: too many to guess, so a plain
# SHA-256 stores them safely and finds one with a single indexed lookup.
_RECOVERY_ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"
_RECOVERY_LENGTH = 16
_TOTP_CODE = re.compile(r"^\d{6}$")
# The second sign-in step must follow the password within this many seconds.
TICKET_SECONDS = 300


@dataclass(frozen=True)
class Enrolment:
    """What an authenticator app needs: the secret, and the same as an otpauth URI
    (the QR code's content)."""

    secret: str
    uri: str


def is_enabled(user: User) -> bool:
    return user.totp_enabled_at is not None and bool(user.totp_secret)


def enrolment_required(user: User) -> bool:
    """An administrator without two-factor sign-in, while the setting asks for it."""
    return user.is_admin and not is_enabled(user) and settings.admin_two_factor_required()


def recovery_codes_left(user: User) -> int:
    return db.session.scalar(select(func.count()).select_from(RecoveryCode).where(
        RecoveryCode.user_id == user.id, RecoveryCode.used_at.is_(None))) or 0


def begin_enrolment(actor: User) -> Enrolment:
    """The secret the actor is enrolling with, made on first call and kept until
    confirmed, so that reloading the page does not invalidate the scanned code."""
    if is_enabled(actor):
        raise Conflict("two-factor sign-in is already on")
    if not actor.totp_secret:
        actor.totp_secret = pyotp.random_base32()
        db.session.commit()
    secret = actor.totp_secret
    uri = pyotp.TOTP(secret).provisioning_uri(name=actor.username, issuer_name=ISSUER)
    return Enrolment(secret, uri)


def confirm_enrolment(actor: User, code: str) -> list[str]:
    """Turn two-factor sign-in on once the app shows a correct code.

    :returns: the new recovery codes, in plain text this once.
    """
    if is_enabled(actor):
        raise Conflict("two-factor sign-in is already on")
    if not actor.totp_secret:
        raise Conflict("start setting up two-factor sign-in again")
    _accept_code(actor, code, "code")
    actor.totp_enabled_at = utcnow()
    codes = _replace_recovery_codes(actor)
    audit.record(actor, "user.two_factor.enable", "user", actor.id)
    db.session.commit()
    return codes


def verify_sign_in(user: User, code: str) -> str:
    """The second step of signing in: a current code from the app or an unused
    recovery code.

    Wrong codes count in the sign-in limits like wrong passwords, from the form
    and the token API alike: someone who knows the password is slowed down per
    address and per account, while the account's owner, coming from an address
    without failures, still gets in after a short wait.

    :returns: ``"totp"`` or ``"recovery"``, whichever was used.
    :raises ValidationError: on ``code``, saying what was wrong.
    :raises TooManyAttempts: while failed sign-ins hold this account or address back.
    """
    if not is_enabled(user):
        raise Forbidden("this account does not use two-factor sign-in")
    attempt = sign_in_limits.begin(user.username, audit.client_ip.get())
    try:
        used = _accept_any_code(user, code)
    except ValidationError:
        attempt.failed(user)
        db.session.commit()
        raise
    attempt.succeeded()
    db.session.commit()
    return used


def _accept_any_code(user: User, code: str) -> str:
    value = re.sub(r"\s", "", code or "")
    if _TOTP_CODE.fullmatch(value):
        _accept_code(user, value, "code")
        return "totp"
    recovery = _normalize_recovery_code(value)
    if recovery is None:
        raise ValidationError("invalid code", {
            "code": "must be the 6-digit code from your app or a recovery code"})
    _use_recovery_code(user, recovery)
    return "recovery"


def regenerate_recovery_codes(actor: User, proof: str) -> list[str]:
    """New recovery codes; the old ones stop working.  ``proof`` is the actor's
    password or a current code, so an unattended browser cannot take them."""
    _require_enabled(actor)
    _check_proof(actor, proof)
    codes = _replace_recovery_codes(actor)
    audit.record(actor, "user.two_factor.recovery_codes", "user", actor.id)
    db.session.commit()
    return codes


def disable(actor: User, proof: str) -> None:
    """Turn the actor's own two-factor sign-in off (``proof`` as above)."""
    _require_enabled(actor)
    _check_proof(actor, proof)
    _clear(actor)
    audit.record(actor, "user.two_factor.disable", "user", actor.id)
    db.session.commit()


def reset(actor: User, user_id: int) -> User:
    """An administrator turns someone's two-factor sign-in off, e.g. after a lost
    phone; the user signs in with the password alone and may enrol again."""
    require_admin(actor)
    user = get_or_404(User, user_id, "user")
    if user.id == actor.id:
        raise Forbidden("turn your own two-factor sign-in off on your profile page")
    if not is_enabled(user):
        raise Conflict(f"{user.username} does not use two-factor sign-in")
    _clear(user)
    audit.record(actor, "user.two_factor.reset", "user", user.id, {"username": user.username})
    db.session.commit()
    return user


# ----------------------------------------------------------------------------- sign-in ticket


def sign_in_ticket(user: User) -> dict[str, Any]:
    """What the browser's signed session carries between the password and the code.
    It names the account, when the password was right, and a fingerprint of the
    password hash, so a password changed in between voids it."""
    return {"user": user.id, "username": user.username, "at": int(time.time()),
            "key": _fingerprint(user)}


def ticket_user(ticket: Any) -> User | None:
    """The account a ticket from :func:`sign_in_ticket` still stands for, or None if
    it is malformed, expired, or the account changed since."""
    if not isinstance(ticket, dict):
        return None
    user_id, at = ticket.get("user"), ticket.get("at")
    if not isinstance(user_id, int) or not isinstance(at, int):
        return None
    if time.time() - at > TICKET_SECONDS:
        return None
    user = db.session.get(User, user_id)
    if user is None or not user.is_active or not is_enabled(user):
        return None
    if not strings_equal(str(ticket.get("key", "")), _fingerprint(user)):
        return None
    return user


def _fingerprint(user: User) -> str:
    return hashlib.sha256(f"{user.id}:{user.password_hash}".encode()).hexdigest()[:32]


# ----------------------------------------------------------------------------- internals


def _require_enabled(actor: User) -> None:
    if not is_enabled(actor):
        raise Conflict("two-factor sign-in is off")


def _accept_code(user: User, code: str, field: str) -> None:
    """Accept a current code once: the step it belongs to must be later than the
    last one accepted.  A conditional UPDATE, so two requests racing with the same
    code (on any worker) cannot both win."""
    value = re.sub(r"\s", "", code or "")
    if not _TOTP_CODE.fullmatch(value):
        raise ValidationError("invalid code", {field: "must be the 6 digits your app shows"})
    totp = pyotp.TOTP(user.totp_secret or "")
    try:
        step = totp.verify_and_get_timecode(value, valid_window=VALID_WINDOW)
    except pyotp.OTPVerificationError:
        raise ValidationError("invalid code", {
            field: "is not correct: type the code your app shows now"}) from None
    result = cast(CursorResult[Any], db.session.execute(
        update(User).where(User.id == user.id,
                           or_(User.totp_last_step.is_(None), User.totp_last_step < step))
        .values(totp_last_step=step)))
    if result.rowcount != 1:
        raise ValidationError("code already used", {
            field: "was already used: wait for your app to show the next code"})


def _normalize_recovery_code(value: str) -> str | None:
    cleaned = value.replace("-", "").lower()
    if len(cleaned) != _RECOVERY_LENGTH or any(c not in _RECOVERY_ALPHABET for c in cleaned):
        return None
    return cleaned


def _hash_recovery_code(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def _use_recovery_code(user: User, code: str) -> None:
    row = db.session.scalar(select(RecoveryCode).where(
        RecoveryCode.user_id == user.id, RecoveryCode.code_hash == _hash_recovery_code(code)))
    if row is None:
        raise ValidationError("invalid code", {"code": "is not one of your recovery codes"})
    result = cast(CursorResult[Any], db.session.execute(
        update(RecoveryCode).where(RecoveryCode.id == row.id, RecoveryCode.used_at.is_(None))
        .values(used_at=utcnow())))
    if result.rowcount != 1:
        raise ValidationError("code already used", {
            "code": "this recovery code was already used: each one works once"})
    audit.record(user, "auth.recovery_code", "user", user.id,
                 {"left": recovery_codes_left(user)})


def _replace_recovery_codes(user: User) -> list[str]:
    db.session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    codes = ["".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(_RECOVERY_LENGTH))
             for _ in range(RECOVERY_CODE_COUNT)]
    db.session.add_all(RecoveryCode(user_id=user.id, code_hash=_hash_recovery_code(code))
                       for code in codes)
    return ["-".join(code[i:i + 4] for i in range(0, _RECOVERY_LENGTH, 4)) for code in codes]


def _check_proof(actor: User, proof: str) -> None:
    """The actor's password, or a current code from the app (passwords are at least
    12 characters, so six digits are never one)."""
    value = (proof or "").strip()
    if _TOTP_CODE.fullmatch(re.sub(r"\s", "", value)):
        _accept_code(actor, value, "proof")
    elif not check_password_hash(actor.password_hash, value):
        raise ValidationError("invalid proof", {
            "proof": "is neither your password nor a current code from your app"})


def _clear(user: User) -> None:
    user.totp_secret = None
    user.totp_enabled_at = None
    db.session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
