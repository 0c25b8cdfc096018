"""The metrics_retention job over a year of samples: raw rows become 5-minute and
hourly averages (weighted by what each row stands for), every resolution is deleted
after its time, the tables stay bounded, and running the job again adds nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, insert, select

from app.models import NodeMetric, SiteCheck
from app.models.base import as_utc
from app.services import monitoring
from app.services.monitoring.retention import floor_time
from tests import factories

NOW = datetime(2026, 6, 1, 12, 30, 10, tzinfo=UTC)
STEP = timedelta(minutes=30)
#: Within the last 24 h, this hour has a sample every minute (cpu = the minute).
DENSE_HOUR = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
YEAR = timedelta(days=366)


def background_times() -> list[datetime]:
    """Every 30 minutes for a year and a day before NOW, except in DENSE_HOUR."""
    first = NOW - timedelta(seconds=10) - YEAR
    count = int(YEAR / STEP) + 1
    times = [first + i * STEP for i in range(count)]
    return [t for t in times if not DENSE_HOUR <= t < DENSE_HOUR + timedelta(hours=1)]


def dense_times() -> list[datetime]:
    return [DENSE_HOUR + timedelta(minutes=m) for m in range(60)]


def metric_rows(node_id: int, offset: float) -> list[dict]:
    rows = [{"node_id": node_id, "period": 0, "at": t, "samples": 1,
             "cpu_percent": float(t.hour) + offset, "mem_percent": 50.0, "swap_percent": None,
             "uptime_seconds": int(t.timestamp()), "filesystems": [{"mount": "/"}]}
            for t in background_times()]
    rows += [{"node_id": node_id, "period": 0, "at": t, "samples": 1,
              "cpu_percent": float(t.minute) + offset, "mem_percent": 50.0,
              "swap_percent": None, "uptime_seconds": int(t.timestamp())}
             for t in dense_times()]
    return rows


def check_rows(site_id: int, node_id: int) -> list[dict]:
    """The check on the hour fails (no response time); certificates expire later
    and later, so each bucket's soonest expiry is its first check's."""
    rows = []
    for t in background_times():
        failed = t.minute == 0
        rows.append({"site_id": site_id, "node_id": node_id, "period": 0, "at": t,
                     "checks": 1, "failures": int(failed), "error": "down" if failed else "",
                     "status_code": None if failed else 200,
                     "response_ms": None if failed else 100.0 + t.minute,
                     "cert_not_after": t + timedelta(days=90)})
    return rows


def count(db, model, period: int, **where) -> int:
    stmt = select(func.count()).select_from(model).where(model.period == period)
    for name, value in where.items():
        stmt = stmt.where(getattr(model, name) == value)
    return db.session.scalar(stmt)


def rows_at(db, model, period: int, at: datetime, **where) -> list:
    stmt = select(model).where(model.period == period, model.at == at)
    for name, value in where.items():
        stmt = stmt.where(getattr(model, name) == value)
    return list(db.session.scalars(stmt))


def expected_buckets(times: list[datetime], seconds: int, keep: timedelta) -> int:
    complete_before = floor_time(NOW, seconds)
    return len({floor_time(t, seconds) for t in times
                if floor_time(t, seconds) < complete_before
                and floor_time(t, seconds) >= NOW - keep})


@pytest.fixture()
def year(db, admin):
    nodes = [factories.make_node(f"edge-{i}") for i in range(2)]
    site = factories.make_site(admin)
    db.session.execute(insert(NodeMetric), metric_rows(nodes[0].id, 0.0))
    db.session.execute(insert(NodeMetric), metric_rows(nodes[1].id, 100.0))
    db.session.execute(insert(SiteCheck), check_rows(site.id, nodes[0].id))
    db.session.commit()
    return nodes, site


def test_a_year_of_samples_is_rolled_up_and_pruned_to_bounded_tables(db, year):
    nodes, site = year
    summary = monitoring.apply_retention(NOW)
    db.session.expire_all()

    times = sorted(background_times() + dense_times())
    raw_kept = [t for t in times if t >= NOW - timedelta(hours=24)]
    for node in nodes:
        assert count(db, NodeMetric, 0, node_id=node.id) == len(raw_kept) == 48 - 2 + 60
        assert count(db, NodeMetric, 300, node_id=node.id) == expected_buckets(
            times, 300, timedelta(days=30))
        assert count(db, NodeMetric, 3600, node_id=node.id) == expected_buckets(
            times, 3600, timedelta(days=365)) == 365 * 24 - 1
    oldest_raw = db.session.scalar(select(func.min(NodeMetric.at)).where(NodeMetric.period == 0))
    assert as_utc(oldest_raw) >= NOW - timedelta(hours=24)
    assert "node metrics: " in summary and "site checks: " in summary
    total = db.session.scalar(select(func.count()).select_from(NodeMetric))
    assert total < 2 * (106 + 30 * 288 + 365 * 24)  # at most ~17,000 rows per node

    # An hour of 30-minute samples: each 5-minute bucket holds one; the hour, two.
    hour = datetime(2026, 3, 3, 17, 0, tzinfo=UTC)
    [second_node_hour] = rows_at(db, NodeMetric, 3600, hour, node_id=nodes[1].id)
    assert (second_node_hour.cpu_percent, second_node_hour.samples) == (117.0, 2)
    assert second_node_hour.mem_percent == 50.0 and second_node_hour.swap_percent is None
    assert second_node_hour.uptime_seconds == int((hour + timedelta(minutes=30)).timestamp())
    assert second_node_hour.filesystems is None

    # The dense hour: twelve 5-minute averages of five samples, the hour of sixty.
    fives = [rows_at(db, NodeMetric, 300, DENSE_HOUR + timedelta(minutes=5 * k),
                     node_id=nodes[0].id)[0] for k in range(12)]
    assert [(r.cpu_percent, r.samples) for r in fives] == [(5 * k + 2.0, 5) for k in range(12)]
    [dense] = rows_at(db, NodeMetric, 3600, DENSE_HOUR, node_id=nodes[0].id)
    assert (dense.cpu_percent, dense.samples) == (29.5, 60)

    # Site checks: sums, the average of the answers that came, the soonest expiry.
    assert count(db, SiteCheck, 0) == 48 - 2
    [checks] = rows_at(db, SiteCheck, 3600, hour, site_id=site.id)
    assert (checks.checks, checks.failures, checks.response_ms) == (2, 1, 130.0)
    assert as_utc(checks.cert_not_after) == hour + timedelta(days=90)
    assert checks.error == "" and checks.status_code is None


def test_running_again_adds_nothing_and_a_later_run_adds_only_new_buckets(db, year):
    nodes, _site = year
    monitoring.apply_retention(NOW)
    before = {period: count(db, NodeMetric, period) for period in (0, 300, 3600)}

    again = monitoring.apply_retention(NOW)
    assert again.startswith("node metrics: 0 5-minute and 0 hourly average(s) added, "
                            "0 raw, 0 5-minute and 0 hourly row(s) deleted")
    assert {period: count(db, NodeMetric, period) for period in (0, 300, 3600)} == before

    later = NOW + timedelta(hours=1)
    new = [NOW + timedelta(minutes=m) for m in range(1, 60)]
    db.session.execute(insert(NodeMetric), [
        {"node_id": nodes[0].id, "period": 0, "at": t, "samples": 1, "cpu_percent": 1.0}
        for t in new])
    db.session.commit()
    monitoring.apply_retention(later)
    duplicates = db.session.execute(
        select(NodeMetric.node_id, NodeMetric.period, NodeMetric.at)
        .where(NodeMetric.period > 0)
        .group_by(NodeMetric.node_id, NodeMetric.period, NodeMetric.at)
        .having(func.count() > 1)).all()
    assert duplicates == []
    [noon] = rows_at(db, NodeMetric, 3600, datetime(2026, 6, 1, 12, tzinfo=UTC),
                     node_id=nodes[0].id)
    # 12:00 and 12:30 from the year, then 12:31 to 12:59 at 1.0 each.
    assert noon.samples == 2 + 29
    assert noon.cpu_percent == pytest.approx((12.0 * 2 + 29 * 1.0) / 31)
