"""Domains administrators give to one client.

Without a grant, names go to whoever claims them first: a client could take
``shop.example.net`` before the shop's owner signs up.  A grant reserves a domain, the
names under it and the wildcards over it for one client; other clients are refused
them (the site checks are in :mod:`app.services.sites`), and administrators see which
sites of other clients already use names under it when they grant it.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, or_, select

from app.errors import NotFound, ValidationError
from app.extensions import db
from app.models import DomainGrant, Site, SiteHostname, User
from app.security import validate_domain
from app.services import audit
from app.services.common import get_or_404, require_admin
from app.services.sites import not_a_public_suffix


def list_grants(actor: User, user_id: int) -> list[DomainGrant]:
    require_admin(actor)
    get_or_404(User, user_id, "user")
    return list(db.session.scalars(select(DomainGrant).where(DomainGrant.user_id == user_id)
                                   .order_by(DomainGrant.name)))


def grant(actor: User, user_id: int, name: object) -> tuple[DomainGrant, list[str]]:
    """Give ``name`` to the user.  Returns the grant and the names under it that
    other clients' sites use already (they keep them until an administrator acts:
    the grant only stops new claims).

    :raises ValidationError: ``name`` is not a domain, is a public suffix or a
        reserved name, or overlaps a domain given to someone else."""
    require_admin(actor)
    user = get_or_404(User, user_id, "user")
    try:
        domain = not_a_public_suffix(validate_domain(name))
    except ValueError as exc:
        raise ValidationError("invalid domain", {"name": str(exc)}) from exc
    for other in db.session.scalars(select(DomainGrant).where(_overlapping(domain))):
        whose = "this user" if other.user_id == user.id else other.user.username
        raise ValidationError("invalid domain", {
            "name": f"overlaps {other.name}, given to {whose} already"})
    row = DomainGrant(name=domain, user_id=user.id, granted_by=actor.username)
    db.session.add(row)
    audit.record(actor, "domain.grant", "user", user.id, {"domain": domain})
    db.session.commit()
    in_use = list(db.session.scalars(
        select(SiteHostname.name).join(Site, Site.id == SiteHostname.site_id)
        .where(Site.owner_id != user.id,
               or_(SiteHostname.name == domain, SiteHostname.name == f"*.{domain}",
                   SiteHostname.name.like(f"%.{domain}")))
        .order_by(SiteHostname.name)))
    return row, in_use


def revoke(actor: User, user_id: int, grant_id: int) -> None:
    require_admin(actor)
    row = db.session.get(DomainGrant, grant_id)
    if row is None or row.user_id != user_id:
        raise NotFound("domain grant not found")
    audit.record(actor, "domain.revoke", "user", user_id, {"domain": row.name})
    db.session.delete(row)
    db.session.commit()


def _overlapping(domain: str) -> ColumnElement[bool]:
    """Grants equal to, under or over ``domain``."""
    labels = domain.split(".")
    parents = [".".join(labels[i:]) for i in range(len(labels))]
    return or_(DomainGrant.name.in_(parents), DomainGrant.name.like(f"%.{domain}"))
