"""API tokens: shown once at creation, stored only as a hash."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import func, select

from app.errors import Forbidden, NotFound, Unauthorized, ValidationError
from app.extensions import db
from app.models import ApiToken, User
from app.models.base import as_utc, utcnow
from app.security import generate_api_token, hash_api_token
from app.services import audit, two_factor, users
from app.services.common import Page, paginate

_NAME = re.compile(r"^[A-Za-z0-9 ._-]{1,64}$")
# last_used is written at most this often, so that every API call is not a write.
_LAST_USED_RESOLUTION = timedelta(minutes=1)


# Every token expires: a forgotten one stops working by itself.
DEFAULT_EXPIRY_DAYS = 90
# Methods a read-only token may use.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def create_token(
    actor: User, name: str, expires_in_days: int = DEFAULT_EXPIRY_DAYS, *,
    read_only: bool = False,
) -> tuple[ApiToken, str]:
    """:returns: the row and the plaintext token, which is never retrievable again."""
    errors = {}
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        errors["name"] = "1 to 64 letters, digits, spaces, '.', '_' or '-'"
    if (isinstance(expires_in_days, bool) or not isinstance(expires_in_days, int)
            or not 1 <= expires_in_days <= 3650):
        errors["expires_in_days"] = "must be between 1 and 3650"
    if not isinstance(read_only, bool):
        errors["read_only"] = "must be true or false"
    if errors:
        raise ValidationError("invalid token", errors)
    token, prefix, token_hash = generate_api_token()
    row = ApiToken(
        user_id=actor.id,
        name=name,
        prefix=prefix,
        token_hash=token_hash,
        expires=utcnow() + timedelta(days=expires_in_days),
        read_only=read_only,
    )
    db.session.add(row)
    db.session.flush()
    audit.record(actor, "token.create", "token", row.id,
                 {"name": name, "read_only": read_only, "days": expires_in_days})
    db.session.commit()
    return row, token


def create_token_with_password(username: str, password: str, name: str,
                               expires_in_days: int = DEFAULT_EXPIRY_DAYS,
                               read_only: bool = False,
                               code: str | None = None) -> tuple[ApiToken, str]:
    """A token for whoever signs in here as at the sign-in form: with the password,
    and the current two-factor code (or a recovery code) where the account has one.

    :raises Unauthorized: wrong password, or a missing or refused code (on ``code``).
    :raises Forbidden: an administrator whom the settings require to set up two-factor
        sign-in first (tokens made before keep working).
    """
    user = users.authenticate(username, password)
    if user is None:
        raise Unauthorized("invalid username or password")
    if two_factor.is_enabled(user):
        if not code:
            raise Unauthorized("this account signs in with two factors: send the current "
                               "code from its app as 'code'", {"code": "is required"})
        try:
            two_factor.verify_sign_in(user, code)
        except ValidationError as exc:
            raise Unauthorized("the two-factor code was refused", exc.fields) from None
    elif two_factor.enrolment_required(user):
        raise Forbidden("administrators must set up two-factor sign-in on their profile page "
                        "before making tokens with a password")
    return create_token(user, name or "api", expires_in_days, read_only=read_only)


def list_tokens(actor: User, q: str | None = None) -> list[ApiToken]:
    """The actor's live tokens, newest first; ``q`` is part of a token's name."""
    stmt = select(ApiToken).where(ApiToken.user_id == actor.id, ApiToken.revoked_at.is_(None))
    if q:
        stmt = stmt.where(func.lower(ApiToken.name).like(f"%{q.lower()}%"))
    return list(db.session.scalars(stmt.order_by(ApiToken.created_at.desc())))


def list_tokens_page(actor: User, *, page: int = 1, per_page: int = 50) -> Page[ApiToken]:
    """The actor's live tokens, one page at a time (the API's list format)."""
    stmt = select(ApiToken).where(ApiToken.user_id == actor.id, ApiToken.revoked_at.is_(None))
    return paginate(stmt.order_by(ApiToken.created_at.desc(), ApiToken.id.desc()), page, per_page)


def revoke_token(actor: User, token_id: int) -> None:
    """Clients revoke their own tokens; admins may revoke anyone's."""
    stmt = select(ApiToken).where(ApiToken.id == token_id, ApiToken.revoked_at.is_(None))
    if not actor.is_admin:
        stmt = stmt.where(ApiToken.user_id == actor.id)
    row = db.session.scalar(stmt)
    if row is None:
        raise NotFound("token not found")
    row.revoked_at = utcnow()
    audit.record(actor, "token.revoke", "token", row.id, {"name": row.name})
    db.session.commit()


def authenticate_token(raw: str) -> ApiToken | None:
    """The live token ``raw`` is (its ``user`` acts, within its ``read_only`` scope)."""
    row = db.session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_api_token(raw)))
    now = utcnow()
    if row is None or row.revoked_at is not None:
        return None
    if row.expires is not None and as_utc(row.expires) <= now:
        return None
    if not row.user.is_active:
        return None
    if row.last_used is None or now - as_utc(row.last_used) > _LAST_USED_RESOLUTION:
        row.last_used = now
        db.session.commit()
    return row
