"""Accounts: creation, roles, quotas, passwords and authentication."""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import timedelta
from typing import Any

from flask import current_app
from sqlalchemy import func, or_, select
from werkzeug.security import check_password_hash, generate_password_hash

from app.errors import Conflict, Forbidden, NotFound, ValidationError
from app.extensions import db
from app.models import ApiToken, Role, Site, User, UserSession
from app.models.base import as_utc, utcnow
from app.security import check_password_policy, generate_password, normalize_email, validate_int
from app.services import audit, sign_in_limits, two_factor
from app.services.common import Page, get_or_404, paginate, require_admin

_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{2,63}$")
# A real hash to compare against when the user does not exist, so that response
# time does not reveal which usernames exist.
_DUMMY_HASH = generate_password_hash("not-a-real-password-0000")


def _hash(password: str) -> str:
    """scrypt by default; the test configuration picks a cheaper method so that
    hundreds of test accounts do not dominate the suite's time."""
    return generate_password_hash(password, method=current_app.config["PASSWORD_HASH_METHOD"])


USER_FIELDS = ("username", "email", "role", "password", "max_sites", "is_active")


def _clean(data: dict[str, Any], *, partial: bool, user: User | None) -> dict[str, Any]:
    errors: dict[str, str] = {}
    out: dict[str, Any] = {}
    unknown = set(data) - set(USER_FIELDS)
    for name in sorted(unknown):
        errors[name] = "unknown field"
    if "username" in data or not partial:
        value = data.get("username")
        if not isinstance(value, str) or not _USERNAME.fullmatch(value):
            errors["username"] = "3 to 64 lowercase letters, digits, '.', '_' or '-'"
        else:
            out["username"] = value
    if "email" in data or not partial:
        try:
            out["email"] = normalize_email(str(data.get("email") or ""))
        except ValueError as exc:
            errors["email"] = str(exc)
    if "role" in data or not partial:
        try:
            out["role"] = Role(data.get("role", Role.CLIENT.value))
        except ValueError:
            errors["role"] = "must be 'admin' or 'client'"
    if "max_sites" in data or not partial:
        default = current_app.config["DEFAULT_MAX_SITES"]
        try:
            out["max_sites"] = validate_int(data.get("max_sites", default), 0, 100000)
        except ValueError as exc:
            errors["max_sites"] = str(exc)
    if "is_active" in data:
        if not isinstance(data["is_active"], bool):
            errors["is_active"] = "must be true or false"
        else:
            out["is_active"] = data["is_active"]
    if data.get("password") is not None:
        username = out.get("username") or (user.username if user else "")
        try:
            out["password"] = check_password_policy(data["password"], username)
        except ValueError as exc:
            errors["password"] = f"Password {exc}"
    if errors:
        raise ValidationError("invalid user", errors)
    return out


def _check_unique(username: str | None, email: str | None, exclude_id: int | None) -> None:
    errors: dict[str, str] = {}
    if username:
        stmt = select(User.id).where(User.username == username)
        if exclude_id:
            stmt = stmt.where(User.id != exclude_id)
        if db.session.scalar(stmt):
            errors["username"] = "is already taken"
    # Administrators manage accounts, so they are told; a person changing their own
    # address is not (app.services.email_change).
    if email and email_in_use(email, exclude_id):
        errors["email"] = "is already used by another account"
    if errors:
        raise ValidationError("invalid user", errors)


def email_in_use(email: str, exclude_id: int | None = None) -> bool:
    """Whether an account other than ``exclude_id`` has this address, in any case."""
    stmt = select(User.id).where(func.lower(User.email) == email.lower())
    if exclude_id:
        stmt = stmt.where(User.id != exclude_id)
    return db.session.scalar(stmt.limit(1)) is not None


def create_user(actor: User | None, data: dict[str, Any]) -> tuple[User, str | None]:
    """Create an account.  ``actor`` is None only for the command line.

    :returns: the user and, when no password was given, the generated one (shown once).
    """
    if actor is not None:
        require_admin(actor)
    clean = _clean(data, partial=False, user=None)
    _check_unique(clean["username"], clean["email"], None)
    generated = None
    password = clean.pop("password", None)
    if password is None:
        password = generated = generate_password()
    user = User(**clean, password_hash=_hash(password))
    db.session.add(user)
    db.session.flush()
    audit.record(actor, "user.create", "user", user.id, {"username": user.username,
                                                         "role": user.role.value})
    db.session.commit()
    return user, generated


def update_user(actor: User, user_id: int, data: dict[str, Any]) -> User:
    require_admin(actor)
    user = get_or_404(User, user_id, "user")
    clean = _clean(data, partial=True, user=user)
    _check_unique(clean.get("username"), clean.get("email"), user.id)
    if user.id == actor.id and (
        clean.get("role", user.role) != Role.ADMIN or clean.get("is_active") is False
    ):
        raise Forbidden("you cannot demote or deactivate your own account")
    password = clean.pop("password", None)
    changed = sorted(key for key, value in clean.items() if getattr(user, key) != value)
    for key, value in clean.items():
        setattr(user, key, value)
    if password is not None:
        user.password_hash = _hash(password)
        _revoke_access(user)
        changed.append("password")
    if "is_active" in changed and not user.is_active:
        _revoke_access(user)
    audit.record(actor, "user.update", "user", user.id, {"fields": changed})
    db.session.commit()
    return user


def set_active(actor: User, user_id: int, active: bool) -> User:
    return update_user(actor, user_id, {"is_active": active})


def reset_password(actor: User, user_id: int) -> tuple[User, str]:
    """Give the user a fresh generated password and end their sessions."""
    require_admin(actor)
    user = get_or_404(User, user_id, "user")
    password = generate_password()
    user.password_hash = _hash(password)
    _revoke_access(user)
    audit.record(actor, "user.reset_password", "user", user.id)
    db.session.commit()
    return user, password


def delete_user(actor: User, user_id: int) -> None:
    require_admin(actor)
    user = get_or_404(User, user_id, "user")
    if user.id == actor.id:
        raise Forbidden("you cannot delete your own account")
    owned = list(db.session.scalars(select(Site.domain).where(Site.owner_id == user.id).limit(5)))
    if owned:
        raise Conflict(f"{user.username} still owns sites: {', '.join(owned)}")
    audit.record(actor, "user.delete", "user", user.id, {"username": user.username})
    db.session.delete(user)
    db.session.commit()


def change_password(actor: User, current_password: str, new_password: str) -> None:
    if not check_password_hash(actor.password_hash, current_password or ""):
        raise ValidationError("invalid password", {"current_password": "is not correct"})
    try:
        check_password_policy(new_password, actor.username)
    except ValueError as exc:
        raise ValidationError("invalid password", {"new_password": f"Password {exc}"}) from None
    actor.password_hash = _hash(new_password)
    _revoke_access(actor)
    audit.record(actor, "user.change_password", "user", actor.id)
    db.session.commit()


def authenticate(username: str, password: str) -> User | None:
    """Return the active user with these credentials, or None (never says which part
    was wrong).  The form and the token API both come here, so the sign-in limits
    count both doors for the request's address (``audit.client_ip``).

    :raises TooManyAttempts: while failed sign-ins hold this username or address back.
    """
    attempt = sign_in_limits.begin(username, audit.client_ip.get())
    user = db.session.scalar(select(User).where(User.username == (username or "").strip()))
    if user is None:
        check_password_hash(_DUMMY_HASH, password or "")
    elif check_password_hash(user.password_hash, password or "") and user.is_active:
        if two_factor.is_enabled(user):
            attempt.first_step_passed()
        else:
            attempt.succeeded()
        return user
    attempt.failed(user)
    db.session.commit()
    return None


def record_login(user: User) -> None:
    user.last_login = utcnow()
    audit.record(user, "auth.login", "user", user.id)
    db.session.commit()


# A session's last-seen time is written at most this often, not on every request.
_SEEN_EVERY = timedelta(minutes=1)


def start_session(user: User, ip: str, user_agent: str) -> None:
    """A new browser session for ``user``: its random key goes into the cookie (via
    ``user.get_id()``), only the key's hash into the database."""
    key = secrets.token_urlsafe(32)
    db.session.add(UserSession(user_id=user.id, key_hash=_key_hash(key), ip=ip[:64],
                               user_agent=user_agent[:200]))
    user.session_key = key
    db.session.commit()


def end_session(user: User) -> None:
    """Signing out: the session ends on the server, so a saved copy of its cookie
    (or its remember-me cookie) opens nothing any more."""
    row = _session_row(user.id, user.session_key)
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
    audit.record(user, "auth.logout", "user", user.id)
    db.session.commit()


def load_session_user(session_id: str) -> User | None:
    """Flask-Login's loader: the cookie names a session that must still be open on the
    server, for an account that is still active."""
    user_id, _, key = session_id.partition(".")
    if not user_id.isdigit() or not key:
        return None
    row = _session_row(int(user_id), key)
    if row is None or row.revoked_at is not None:
        return None
    user = db.session.get(User, row.user_id)
    if user is None or not user.is_active:
        return None
    now = utcnow()
    if now - as_utc(row.last_seen_at) > _SEEN_EVERY:
        row.last_seen_at = now
        db.session.commit()
    user.session_key = key
    return user


def list_sessions(actor: User) -> list[UserSession]:
    """The actor's open sessions, most recently used first."""
    return list(db.session.scalars(
        select(UserSession).where(UserSession.user_id == actor.id,
                                  UserSession.revoked_at.is_(None))
        .order_by(UserSession.last_seen_at.desc(), UserSession.id.desc())))


def current_session_id(actor: User) -> int | None:
    row = _session_row(actor.id, actor.session_key)
    return row.id if row is not None else None


def revoke_session(actor: User, session_id: int) -> None:
    """End one of the actor's own sessions (another tenant's is not found)."""
    row = db.session.get(UserSession, session_id)
    if row is None or row.user_id != actor.id or row.revoked_at is not None:
        raise NotFound("no such session")
    row.revoked_at = utcnow()
    audit.record(actor, "auth.end_session", "user", actor.id, {"session": session_id})
    db.session.commit()


def _revoke_access(user: User) -> None:
    """A new password or a deactivation ends every session and revokes every token."""
    now = utcnow()
    for row in db.session.scalars(select(UserSession).where(
            UserSession.user_id == user.id, UserSession.revoked_at.is_(None))):
        row.revoked_at = now
    for token in db.session.scalars(select(ApiToken).where(
            ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))):
        token.revoked_at = now


def _session_row(user_id: int, key: str) -> UserSession | None:
    if not key:
        return None
    row = db.session.scalar(select(UserSession).where(UserSession.key_hash == _key_hash(key)))
    return row if row is not None and row.user_id == user_id else None


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def get_user(actor: User, user_id: int) -> User:
    require_admin(actor)
    return get_or_404(User, user_id, "user")


def list_users(
    actor: User, *, page: int = 1, per_page: int = 50, q: str | None = None,
    role: str | None = None, sort: str = "username",
) -> Page[User]:
    require_admin(actor)
    orders = {"username": User.username, "-last_login": User.last_login.desc()}
    if sort not in orders:
        raise ValidationError("unknown sort", {"sort": f"one of {', '.join(orders)}"})
    stmt = select(User).order_by(orders[sort], User.username)
    if q:
        like = f"%{q.lower()}%"
        stmt = stmt.where(or_(func.lower(User.username).like(like),
                              func.lower(User.email).like(like)))
    if role in {r.value for r in Role}:
        stmt = stmt.where(User.role == Role(role))
    return paginate(stmt, page, per_page)


def site_counts(user_ids: list[int]) -> dict[int, int]:
    """Sites per owner in one query, for list pages."""
    if not user_ids:
        return {}
    rows = db.session.execute(
        select(Site.owner_id, func.count()).where(Site.owner_id.in_(user_ids))
        .group_by(Site.owner_id)
    )
    return {owner_id: count for owner_id, count in rows}


def find_by_username(username: str) -> User:
    user = db.session.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFound(f"no user named {username}")
    return user


def all_users(role: str | None = None) -> list[User]:
    """Every account, for the command line (which has no acting user)."""
    stmt = select(User).order_by(User.username)
    if role in {r.value for r in Role}:
        stmt = stmt.where(User.role == Role(role))
    return list(db.session.scalars(stmt))


def acting_admin(username: str | None = None) -> User:
    """The administrator a command-line command acts as, so that its audit entries
    name someone: the one named, or else the first active one."""
    stmt = select(User).where(User.role == Role.ADMIN, User.is_active.is_(True))
    if username:
        stmt = stmt.where(User.username == username)
    admin = db.session.scalar(stmt.order_by(User.id).limit(1))
    if admin is None:
        raise NotFound("no such active administrator")
    return admin
