"""Changing one's own e-mail address, confirmed by a link sent to the new address.

Whoever asks gets the same answer whether or not another account uses the address,
so the form tells no one which addresses have accounts: only that mailbox learns it,
from a warning that carries no link.  The link is a token signed with the app's
secret (itsdangerous) that names the account, the new address and a keyed digest of
the current one: it lasts 24 hours, is void once the account's address changed (so,
in effect, it works once), and is applied only for the signed-in owner of the account.
A mistyped address thus cannot hand the account to whoever owns that mailbox.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass

from flask import current_app
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlalchemy.exc import IntegrityError

from app.errors import Conflict, Forbidden, Gone, MailFailed, NotFound, ValidationError
from app.extensions import db
from app.models import User
from app.security import normalize_email
from app.services import audit, mail, users

LINK_HOURS = 24
# Tokens signed for this purpose are worthless anywhere else the secret signs.
_SALT = "rpcc.email-change"

ADMINISTRATOR_CHANGES_IT = ("Mail is not set up on this server, so an administrator changes "
                            "e-mail addresses.")
NO_LONGER_USABLE = ("This link can no longer be used. Ask for a new one on your profile if "
                    "you still want to change your address.")


@dataclass(frozen=True)
class PendingChange:
    """What a confirmation link would do, for the page that asks to confirm it."""

    user: User
    new_email: str


def self_service() -> bool:
    """Whether people change their own address: only when mail can prove the new one."""
    return mail.enabled()


def request_change(actor: User, new_email: str, link: Callable[[str], str]) -> str:
    """Mail the new address a confirmation link, or a warning without one when
    another account uses it; the caller answers both alike.

    :param link: the absolute URL of the confirmation page for a token (the web layer
        knows its routes and the public address).
    :returns: the address the mail went to, normalised.
    :raises Forbidden: mail is off: an administrator changes addresses then.
    :raises ValidationError: not an address, or the actor's own.
    :raises MailFailed: the mail server did not take the message; nothing changed.
    """
    if not self_service():
        raise Forbidden(ADMINISTRATOR_CHANGES_IT)
    try:
        address = normalize_email(new_email.strip())
    except ValueError as exc:
        raise ValidationError("invalid email", {"email": str(exc)}) from None
    if address.lower() == actor.email.lower():
        raise ValidationError("invalid email", {"email": "is already your address"})
    product = current_app.config["API_TITLE"]
    if users.email_in_use(address, actor.id):
        mail.send(address, f"Someone tried to use your address at {product}", (
            f"Someone asked to use this e-mail address for an account at {product}.\n"
            "Another account there already uses it, so nothing changed.\n\n"
            "If that was you, sign in to the account that uses this address instead.\n"
            "If not, you can ignore this message.\n"))
        sent = "address in use: warning"
    else:
        token = _serializer().dumps([actor.id, address, _digest(actor.email)])
        mail.send(address, f"Confirm your new e-mail address at {product}", (
            f"Someone, hopefully you, asked to use this e-mail address for an account at "
            f"{product}.\n\n"
            f"To confirm it, open this link within {LINK_HOURS} hours (you may be asked to "
            f"sign in first):\n\n{link(token)}\n\n"
            "Until then the account keeps its current address. If you did not ask for "
            "this, ignore this message: nothing changes.\n"))
        sent = "confirmation link"
    audit.record(actor, "user.email_change_request", "user", actor.id,
                 {"address": address, "mail": sent})
    db.session.commit()
    return address


def read_link(actor: User, token: str) -> PendingChange:
    """Check a confirmation link for the signed-in ``actor`` without applying it.

    :raises NotFound: the token is not one this server signed (tampered, truncated).
    :raises Gone: it is older than 24 hours.
    :raises Forbidden: it was sent for another account.
    :raises Conflict: the address changed since, or another account took the new one.
    """
    try:
        user_id, new_email, old_digest = _serializer().loads(token, max_age=LINK_HOURS * 3600)
    except SignatureExpired:
        raise Gone(f"This link has expired: links last {LINK_HOURS} hours. Ask for a new "
                   "one on your profile.") from None
    except BadSignature:
        raise NotFound("This link is not valid. Check that it was copied whole, or ask for "
                       "a new one on your profile.") from None
    if user_id != actor.id:
        raise Forbidden("This link was sent for another account. Sign out, open it again "
                        "and sign in as that account.")
    if not hmac.compare_digest(old_digest, _digest(actor.email)) \
            or users.email_in_use(new_email, actor.id):
        raise Conflict(NO_LONGER_USABLE)
    return PendingChange(actor, new_email)


def confirm_change(actor: User, token: str) -> User:
    """Apply a confirmation link: the account takes the new address, and the old one
    hears of it (in case it was not its owner who asked).

    :raises NotFound, Gone, Forbidden, Conflict: as :func:`read_link`.
    """
    try:
        pending = read_link(actor, token)
    except Conflict:
        audit.record(actor, "user.email_change_refused", "user", actor.id)
        db.session.commit()
        raise
    old = actor.email
    actor.email = pending.new_email
    audit.record(actor, "user.email_change", "user", actor.id,
                 {"email": {"old": old, "new": pending.new_email}})
    try:
        db.session.commit()
    except IntegrityError:  # another account took it between the check and now
        db.session.rollback()
        raise Conflict(NO_LONGER_USABLE) from None
    product = current_app.config["API_TITLE"]
    try:
        mail.send(old, f"Your e-mail address at {product} was changed", (
            f"The account {actor.username} at {product} now uses {actor.email} instead "
            "of this address.\n\n"
            "If you did not make this change, tell an administrator at once.\n"))
    except MailFailed:
        pass  # the change stands; mail.send logged why the notice did not leave
    return actor


def _serializer() -> URLSafeTimedSerializer:
    """Signed with the app's secret, and any previous secrets still accepted
    (``SECRET_KEY_FALLBACKS``), as Flask signs its sessions."""
    app = current_app
    keys = [*(app.config.get("SECRET_KEY_FALLBACKS") or []), app.secret_key]
    return URLSafeTimedSerializer(keys, salt=_SALT)


def _digest(address: str) -> str:
    """The current address in the token without showing it to whoever reads the link
    (a mistyped new address may belong to a stranger)."""
    key = str(current_app.secret_key).encode()
    return hmac.new(key, address.lower().encode(), hashlib.sha256).hexdigest()[:32]
