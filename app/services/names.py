"""Which names belong to someone else: another client's site, or a domain an
administrator gave another client.  Kept apart from the site service so that the
certificate code can ask it too."""

from __future__ import annotations

from sqlalchemy import or_, select

from app.extensions import db
from app.models import DomainGrant, Site, SiteHostname


def held_by_others(names: list[str], owner_id: int | None,
                   exclude_site_id: int | None) -> dict[str, str]:
    """Names of ``names`` that another client's site or domain grant holds, is under
    or covers: ``name -> the other client's name`` (the other name is for logs and
    administrators, never for the client's message). Names belong to someone: a
    client cannot claim ``shop.example.net`` when another holds ``example.net`` or
    ``*.example.net``, nor ``example.net`` or ``*.example.net`` when another holds
    ``shop.example.net``."""
    conflicts: dict[str, str] = {}
    if not names:
        return conflicts
    wanted: dict[str, list[str]] = {}
    conditions = []
    for name in names:
        base = name[2:] if name.startswith("*.") else name
        labels = base.split(".")
        parents = [".".join(labels[i:]) for i in range(len(labels))]
        covering = [name, *parents, *(f"*.{p}" for p in parents[1:])]
        wanted[name] = covering
        conditions.append(SiteHostname.name.in_(covering))
        conditions.append(SiteHostname.name.like(f"%.{base}"))
    stmt = (select(SiteHostname.name).join(Site, Site.id == SiteHostname.site_id)
            .where(or_(*conditions)))
    if owner_id is not None:
        stmt = stmt.where(Site.owner_id != owner_id)
    if exclude_site_id is not None:
        stmt = stmt.where(SiteHostname.site_id != exclude_site_id)
    held = list(db.session.scalars(stmt))
    # Domains given to another client, equal to, over or under a wanted name.
    grants = select(DomainGrant.name).where(or_(
        *(DomainGrant.name.in_(covering) for covering in wanted.values()),
        *(DomainGrant.name.like(f"%.{name.removeprefix('*.')}") for name in wanted)))
    if owner_id is not None:
        grants = grants.where(DomainGrant.user_id != owner_id)
    held += list(db.session.scalars(grants))
    for name, covering in wanted.items():
        base = name[2:] if name.startswith("*.") else name
        for other in held:
            other_base = other[2:] if other.startswith("*.") else other
            if other in covering or other_base.endswith(f".{base}") or other_base == base:
                conflicts.setdefault(name, other)
    return conflicts


def names_held_by_others(site: Site) -> list[str]:
    """The site's names that another client holds now: a domain given to another
    client after the site took them (the site keeps serving them, but the control
    plane proves nothing in that client's domain for it)."""
    return sorted(held_by_others(site.server_names, site.owner_id, site.id))
