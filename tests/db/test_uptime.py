"""A site's uptime as its owner and administrators read it: raw checks and the
rollups of the retention job counted once each, the last check per node, the
charts' points, and tenancy (another client's site is not found, clients never
read node names)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.errors import NotFound, ValidationError
from app.models import SiteCheck
from app.services import uptime
from tests import factories
from tests.conftest import api_headers

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def add_checks(db, site_id: int, node_id: int, period: int, moments: list[datetime], *,
               checks: int, failures: int, response_ms: float | None = None) -> None:
    db.session.add_all(SiteCheck(site_id=site_id, node_id=node_id, period=period, at=at,
                                 checks=checks, failures=failures, response_ms=response_ms,
                                 error="")
                       for at in moments)
    db.session.commit()


@pytest.fixture()
def history(db, alice):
    """Ten days of one site through one node, as the retention job leaves them an
    hour after its last run: hourly sums up to two hours ago, 5-minute sums over the
    last 26 hours up to ten minutes ago, raw checks over the last 24 hours.  Each
    resolution tells a different story, so a check counted twice would show."""
    node = factories.make_node("edge-a")
    site = factories.make_site(alice, "history.example.com")
    add_checks(db, site.id, node.id, 3600, [NOW - timedelta(hours=k) for k in range(3, 241)],
               checks=60, failures=6, response_ms=80.0)
    add_checks(db, site.id, node.id, 300, [NOW - timedelta(minutes=5 * j)
                                           for j in range(2, 313)],
               checks=5, failures=0, response_ms=20.0)
    add_checks(db, site.id, node.id, 0, [NOW - timedelta(minutes=i) for i in range(1, 1441)],
               checks=1, failures=1, response_ms=40.0)
    return site


def test_uptime_counts_every_check_once_whatever_its_resolution(alice, history):
    windows = {w["window"]: w for w in uptime.site_uptime(alice, history.id, now=NOW)["windows"]}
    # 24 h: five-minute sums (never hourly ones), then the last 5 raw checks.
    assert windows["24h"] == {"window": "24h", "checks": 287 * 5 + 5, "failures": 5,
                              "percent": round(100 * 1435 / 1440, 3)}
    # 7 and 30 days: hourly sums, then 23 five-minute sums, then the raw tail.
    assert windows["7d"]["checks"] == 166 * 60 + 23 * 5 + 5
    assert windows["7d"]["failures"] == 166 * 6 + 5
    assert windows["30d"]["checks"] == 238 * 60 + 23 * 5 + 5
    assert windows["30d"]["failures"] == 238 * 6 + 5


def test_the_24_hour_chart_has_a_point_every_five_minutes(alice, history):
    chart = uptime.site_uptime(alice, history.id, "24h", now=NOW)["history"]
    assert (chart["range"], chart["step_seconds"]) == ("24h", 300)
    points = chart["points"]
    assert len(points) == 289
    assert points[0]["at"] == NOW - timedelta(hours=24)
    assert points[-1]["at"] == NOW
    # Rolled-up five minutes read as they were summed; the raw tail as it came.
    assert points[-3] == {"at": NOW - timedelta(minutes=10), "checks": 5,
                          "uptime_percent": 100.0, "response_ms": 20.0}
    assert points[-2] == {"at": NOW - timedelta(minutes=5), "checks": 5,
                          "uptime_percent": 0.0, "response_ms": 40.0}
    assert points[-1] == {"at": NOW, "checks": 0, "uptime_percent": None,
                          "response_ms": None}


def test_the_30_day_chart_reads_hourly_sums(alice, history):
    chart = uptime.site_uptime(alice, history.id, "30d", now=NOW)["history"]
    assert chart["step_seconds"] == 6 * 3600
    measured = [p for p in chart["points"] if p["checks"]]
    assert {p["response_ms"] for p in measured[:-1]} == {80.0}
    assert {p["uptime_percent"] for p in measured[:-1]} == {90.0}


def test_the_last_check_through_each_node(db, admin, alice):
    first, second = factories.make_node("edge-a"), factories.make_node("edge-b")
    site = factories.make_site(alice, "latest.example.com")
    add_checks(db, site.id, first.id, 0, [NOW - timedelta(minutes=2)], checks=1, failures=0)
    db.session.add(SiteCheck(site_id=site.id, node_id=first.id, period=0, at=NOW, checks=1,
                             failures=1, status_code=502, response_ms=3.0,
                             error="the proxy answered HTTP 502", cert_sha256="ab" * 32,
                             cert_not_after=NOW + timedelta(days=3), cert_matches=False))
    db.session.commit()

    as_admin = uptime.site_uptime(admin, site.id)["nodes"]
    assert [(n["node"], n["node_id"], n["status"]) for n in as_admin] == [
        ("edge-a", first.id, "down"), ("edge-b", second.id, "unchecked")]
    assert as_admin[0]["error"] == "the proxy answered HTTP 502"
    assert as_admin[0]["cert_not_after"] == NOW + timedelta(days=3)
    assert as_admin[0]["cert_matches"] is False
    as_owner = uptime.site_uptime(alice, site.id)["nodes"]
    assert [(n["node"], n["node_id"]) for n in as_owner] == [("node 1 of 2", None),
                                                             ("node 2 of 2", None)]


def test_client_cannot_read_other_clients_uptime(client, alice, bob):
    site = factories.make_site(alice, "private.example.com")
    with pytest.raises(NotFound):
        uptime.site_uptime(bob, site.id)
    answer = client.get(f"/api/v1/sites/{site.id}/uptime", headers=api_headers(bob))
    assert answer.status_code == 404
    assert "private.example.com" not in answer.get_data(as_text=True)
    missing = client.get("/api/v1/sites/999999/uptime", headers=api_headers(bob))
    assert missing.status_code == 404
    assert client.get(f"/api/v1/sites/{site.id}/uptime",
                      headers=api_headers(alice)).status_code == 200


def test_an_unknown_range_is_refused_with_the_field(client, alice):
    site = factories.make_site(alice, "ranges.example.com")
    answer = client.get(f"/api/v1/sites/{site.id}/uptime?range=1y", headers=api_headers(alice))
    assert answer.status_code == 422
    assert "range" in answer.get_json()["error"]["fields"]
    with pytest.raises(ValidationError) as refused:
        uptime.site_uptime(alice, site.id, "1y")
    assert refused.value.fields == {"range": "must be one of 24h, 7d, 30d"}


def test_the_site_page_shows_uptime_to_its_owner_without_node_names(
        db, app, alice, alice_client, admin_client):
    node = factories.make_node("edge-secret")
    site = factories.make_site(alice, "page.example.com")
    add_checks(db, site.id, node.id, 0, [datetime.now(UTC) - timedelta(minutes=1)],
               checks=1, failures=0, response_ms=12.0)
    page = alice_client.get(f"/client/sites/{site.id}")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert 'id="uptime"' in text and "node 1 of 1" in text
    assert "100.00&nbsp;%" in text and "<svg" in text
    assert "edge-secret" not in text and node.host not in text
    admin_page = admin_client.get(f"/admin/sites/{site.id}?uptime=7d")
    assert "edge-secret" in admin_page.get_data(as_text=True)
    # A range the page does not know shows 24 hours and says why.
    odd = alice_client.get(f"/client/sites/{site.id}?uptime=1y").get_data(as_text=True)
    assert "Showing 24 hours: the range must be one of 24h, 7d, 30d." in odd


def test_client_cannot_open_other_clients_site_page(db, bob, alice_client):
    site = factories.make_site(bob, "bobs.example.com")
    assert alice_client.get(f"/client/sites/{site.id}").status_code == 404


def test_site_checks_run_every_minute_unless_configured(app, monkeypatch):
    from app.scheduler import find_job

    job = find_job("site_checks")
    assert job is not None and job.work is uptime.check_sites
    assert job.interval(app) == 60
    monkeypatch.setitem(app.config, "JOB_INTERVALS", {"site_checks": 15.0})
    assert job.interval(app) == 15


def test_a_site_no_node_serves_yet_is_not_checked(db, alice):
    """A node answers for a name it does not carry with another server block: the
    sweep asks only nodes whose last version carries the site."""
    factories.make_node("edge-idle")
    factories.make_site(alice, "undeployed.example.com")
    assert uptime.check_sites() == "no deployed site to check"
    assert db.session.query(SiteCheck).count() == 0


def test_a_check_through_a_node_out_of_reach_counts_neither_way(
        db, admin, alice, alice_client):
    """A row that counts no check (the node could not be reached over SSH) is in no
    percentage and no chart point, and reads "not checked" with its reason."""
    near, far = factories.make_node("edge-near"), factories.make_node("edge-far")
    site = factories.make_site(alice, "reach.example.com")
    now = datetime.now(UTC)
    add_checks(db, site.id, near.id, 0, [now - timedelta(minutes=2), now - timedelta(minutes=1)],
               checks=1, failures=0, response_ms=10.0)
    db.session.add_all(SiteCheck(site_id=site.id, node_id=far.id, period=0, at=at, checks=0,
                                 failures=0, error="the node could not be reached over SSH")
                       for at in (now - timedelta(minutes=2), now - timedelta(minutes=1)))
    db.session.commit()

    read = uptime.site_uptime(admin, site.id, now=now)
    assert read["windows"][0] == {"window": "24h", "checks": 2, "failures": 0,
                                  "percent": 100.0}
    assert {p["uptime_percent"] for p in read["history"]["points"] if p["checks"]} == {100.0}
    by_node = {n["node"]: n for n in read["nodes"]}
    assert (by_node["edge-far"]["status"], by_node["edge-far"]["error"]) == (
        "unreachable", "the node could not be reached over SSH")
    assert by_node["edge-near"]["status"] == "up"
    page = alice_client.get(f"/client/sites/{site.id}").get_data(as_text=True)
    assert "Node unreachable: the node could not be reached over SSH." in page
    assert page.count(">not checked<") == 1
    assert "edge-far" not in page and far.host not in page
