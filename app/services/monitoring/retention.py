"""The ``metrics_retention`` job: raw samples become 5-minute averages, 5-minute
averages become hourly ones, and each resolution is deleted after its time.

Node metrics and site checks share the scheme (``period`` 0 is raw, otherwise the
bucket length in seconds) and the periods: raw for ``METRICS_RAW_RETENTION_HOURS``
(24 h), 5-minute for ``METRICS_5MIN_RETENTION_DAYS`` (30 days), hourly for
``METRICS_HOURLY_RETENTION_DAYS`` (a year).

Everything is a set operation in the database (``INSERT ... SELECT ... GROUP BY``
and ranged ``DELETE``), so a year of a thousand nodes costs a few statements, not
rows in Python.  A rollup covers only complete buckets (those that ended before the
run) after the last bucket already rolled up, and never writes a bucket that exists:
running the job twice, or by hand between two scheduled runs, aggregates nothing
twice.  Averages are weighted by what each row stands for (``samples`` for metrics,
``checks`` for site checks), so an hour is the average of its minutes whether it is
made from raw rows or from 5-minute ones; a value nobody reported stays ``NULL``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import (
    ColumnElement,
    DateTime,
    Integer,
    Table,
    and_,
    case,
    cast,
    delete,
    exists,
    extract,
    func,
    insert,
    literal,
    literal_column,
    select,
)

from app.extensions import db
from app.models import NodeMetric, SiteCheck
from app.models.base import as_utc, utcnow

RAW, FIVE_MINUTES, HOUR = 0, 300, 3600


def bucket_start(column: Any, seconds: int) -> ColumnElement[datetime]:
    """The start of the ``seconds``-long bucket a time falls in, in SQL.  The length
    is written into the statement (not bound), so the same expression can be grouped
    on; SQLite gets the text form SQLAlchemy stores its date-times in."""
    length: ColumnElement[int] = literal_column(str(int(seconds)), Integer())
    if db.session.get_bind().dialect.name == "sqlite":
        epoch = cast(func.strftime(literal_column("'%s'"), column), Integer)
        return func.strftime(literal_column("'%Y-%m-%d %H:%M:%S.000000'"),
                             (epoch // length) * length, literal_column("'unixepoch'"),
                             type_=DateTime(timezone=True))
    return func.to_timestamp(func.floor(extract("epoch", column) / length) * length,
                             type_=DateTime(timezone=True))


def floor_time(moment: datetime, seconds: int) -> datetime:
    moment = moment.astimezone(UTC)
    epoch = int(moment.timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, UTC)


@dataclass(frozen=True)
class _Series:
    """How one table rolls up: what identifies a series, what each row weighs,
    which columns are averaged, summed, kept at their lowest or highest, and which
    are left empty in aggregates."""

    table: Table
    keys: tuple[str, ...]
    weight: str
    averaged: tuple[str, ...]
    summed: tuple[str, ...] = ()
    lowest: tuple[str, ...] = ()
    highest: tuple[str, ...] = ()
    constant: tuple[tuple[str, Any], ...] = ()


NODE_METRICS = _Series(
    NodeMetric.__table__, keys=("node_id",), weight="samples",
    averaged=("cpu_percent", "mem_percent", "swap_percent", "load1", "load5", "load15",
              "disk_percent", "net_rx_bps", "net_tx_bps", "connections",
              "requests_per_second"),
    summed=("samples",), highest=("uptime_seconds",))
SITE_CHECKS = _Series(
    SiteCheck.__table__, keys=("site_id", "node_id"), weight="checks",
    averaged=("response_ms",), summed=("checks", "failures"), lowest=("cert_not_after",),
    constant=(("error", ""),))


def rollup(series: _Series, source: int, target: int, until: datetime) -> int:
    """Insert the ``target``-second buckets of ``source`` rows that ended before
    ``until`` and come after the last ``target`` bucket; returns how many."""
    table = series.table
    c = table.c
    last = db.session.scalar(select(func.max(c.at)).where(c.period == target))
    conditions = [c.period == source, c.at < floor_time(until, target)]
    if last is not None:
        conditions.append(c.at >= as_utc(last) + timedelta(seconds=target))
    columns = [*series.keys, series.weight, *series.averaged, *series.summed,
               *series.lowest, *series.highest]
    rows = select(*(c[name] for name in dict.fromkeys(columns)),
                  bucket_start(c.at, target).label("bucket")).where(*conditions).subquery()
    weight = rows.c[series.weight]

    def averaged(name: str) -> Any:
        value = rows.c[name]
        return (func.sum(value * weight)
                / func.sum(case((value.is_not(None), weight)))).label(name)

    grouped = select(
        *(rows.c[key] for key in series.keys), rows.c.bucket,
        *(averaged(name) for name in series.averaged),
        *(func.sum(rows.c[name]).label(name) for name in series.summed),
        *(func.min(rows.c[name]).label(name) for name in series.lowest),
        *(func.max(rows.c[name]).label(name) for name in series.highest),
    ).group_by(*(rows.c[key] for key in series.keys), rows.c.bucket).subquery()
    existing = table.alias("existing")
    fresh = ~exists().where(existing.c.period == target, existing.c.at == grouped.c.bucket,
                            *(existing.c[key] == grouped.c[key] for key in series.keys))
    names = [*series.keys, *series.averaged, *series.summed, *series.lowest, *series.highest]
    select_new = select(
        *(grouped.c[name] for name in names), literal(target).label("period"),
        grouped.c.bucket.label("at"),
        *(literal(value).label(name) for name, value in series.constant),
    ).where(fresh)
    statement = insert(table).from_select(
        [*names, "period", "at", *(name for name, _ in series.constant)], select_new)
    # Without it SQLAlchemy reports -1 for an INSERT ... SELECT on PostgreSQL.
    result = db.session.execute(statement.execution_options(preserve_rowcount=True))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def prune(series: _Series, period: int, before: datetime) -> int:
    """Delete the ``period`` rows older than ``before``; returns how many."""
    c = series.table.c
    result = db.session.execute(delete(series.table).where(and_(c.period == period,
                                                                c.at < before)))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def apply_retention(now: datetime | None = None) -> str:
    """The scheduled job: roll up, then delete what is past its time, for node
    metrics and site checks; one transaction."""
    config = current_app.config
    now = now or utcnow()
    keep = {RAW: timedelta(hours=config["METRICS_RAW_RETENTION_HOURS"]),
            FIVE_MINUTES: timedelta(days=config["METRICS_5MIN_RETENTION_DAYS"]),
            HOUR: timedelta(days=config["METRICS_HOURLY_RETENTION_DAYS"])}
    parts = []
    for name, series in (("node metrics", NODE_METRICS), ("site checks", SITE_CHECKS)):
        added = (rollup(series, RAW, FIVE_MINUTES, now),
                 rollup(series, FIVE_MINUTES, HOUR, now))
        removed = [prune(series, period, now - age) for period, age in keep.items()]
        parts.append(f"{name}: {added[0]} 5-minute and {added[1]} hourly average(s) added, "
                     f"{removed[0]} raw, {removed[1]} 5-minute and {removed[2]} hourly "
                     "row(s) deleted")
    db.session.commit()
    return "; ".join(parts)
