"""Helpers every service uses: tenancy scoping, permission checks and pagination."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, func, select

from app.errors import Forbidden, NotFound, ValidationError
from app.extensions import db
from app.models import User

T = TypeVar("T")

MAX_PER_PAGE = 200
# Beyond this a page number is a typo or a probe; the offset would overflow the database.
MAX_PAGE = 1_000_000


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    page: int
    per_page: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


def require_admin(actor: User) -> None:
    if not actor.is_admin:
        raise Forbidden("administrators only")


def scoped(stmt: Select[Any], actor: User, model: Any) -> Select[Any]:
    """The one entry point for tenancy: clients see only rows they own."""
    if actor.is_admin:
        return stmt
    return stmt.where(model.owner_id == actor.id)


def get_scoped(model: Any, object_id: int, actor: User, what: str) -> Any:
    """Fetch one tenant-owned row; another tenant's row is indistinguishable from a
    missing one (404, never 403)."""
    obj = db.session.scalar(scoped(select(model).where(model.id == object_id), actor, model))
    if obj is None:
        raise NotFound(f"{what} not found")
    return obj


def get_or_404(model: Any, object_id: int, what: str) -> Any:
    obj = db.session.get(model, object_id)
    if obj is None:
        raise NotFound(f"{what} not found")
    return obj


def paginate(stmt: Select[Any], page: int = 1, per_page: int = 50) -> Page[Any]:
    """Two queries whatever the page size: a count and one page of rows."""
    page = max(1, int(page))
    if page > MAX_PAGE:
        raise ValidationError("no such page", {"page": f"must be at most {MAX_PAGE}"})
    per_page = max(1, min(int(per_page), MAX_PER_PAGE))
    total = db.session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery()))
    items = list(db.session.scalars(stmt.limit(per_page).offset((page - 1) * per_page)).unique())
    return Page(items=items, page=page, per_page=per_page, total=total or 0)
