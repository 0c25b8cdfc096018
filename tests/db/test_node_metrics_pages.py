"""Node metrics read back: a node's history at the resolution of its range (stored
averages, then the recent raw samples averaged on the fly), the fleet's latest
figures, the API (administrators only, in the OpenAPI document) and the pages (the
fleet overview, the charts on a node's page)."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert

from app.errors import Forbidden, NotFound, ValidationError
from app.models import Node, NodeMetric
from app.models.base import utcnow
from app.services import monitoring
from app.services.monitoring import glances
from app.services.monitoring.node_metrics import Reading, probe, record
from app.services.monitoring.retention import floor_time
from tests import factories
from tests.conftest import api_headers

DATA = Path(__file__).resolve().parents[1] / "unit" / "data"


def recorded_sample(version: str) -> glances.Sample:
    return glances.parse("4", json.loads((DATA / f"glances_v4_{version}.json").read_text()))


@pytest.fixture()
def fleet(db):
    """Three nodes: one with a sample from a real Glances 4's answers, one without
    Glances, one that had metrics and then lost them."""
    nodes = [factories.make_node(name) for name in ("edge-b", "edge-a", "edge-c")]
    measured, bare, lost = nodes
    now = utcnow()
    record([probe(node, 61208) for node in nodes], [
        Reading(measured.id, now, "4", recorded_sample("4.4.0_dev5")),
        Reading(bare.id, now, error="no Glances: nothing listens on 127.0.0.1:61208 on "
                "the node (through SSH)", absent=True),
        Reading(lost.id, now - timedelta(minutes=5), "3", recorded_sample("4.3.0.4")),
    ])
    db.session.refresh(lost)
    record([probe(lost, 61208)], [Reading(lost.id, now, error=(
        "Glances on 127.0.0.1:61208 on the node (through SSH) did not answer in time"))])
    return measured, bare, lost


def test_the_fleet_overview_has_every_nodes_last_sample(fleet, admin):
    measured, bare, lost = fleet
    page = monitoring.fleet_overview(admin)
    assert [row.node.name for row in page.items] == ["edge-a", "edge-b", "edge-c"]
    rows = {row.node.id: row for row in page.items}
    assert rows[measured.id].latest.cpu_percent == 14.5 and rows[measured.id].has_metrics
    assert rows[bare.id].latest is None and not rows[bare.id].has_metrics
    assert rows[lost.id].latest.cpu_percent == 6.1 and not rows[lost.id].has_metrics


def test_a_day_is_stored_averages_then_the_recent_raw_samples_averaged(db, admin):
    node = factories.make_node("edge-1")
    now = utcnow()
    rolled = floor_time(now, 300) - timedelta(hours=2)
    stored = [rolled - timedelta(minutes=5 * k) for k in range(3)]
    raw = [rolled + timedelta(minutes=5, seconds=30 * k) for k in range(1, 12)]
    db.session.execute(insert(NodeMetric), [
        {"node_id": node.id, "period": 300, "at": at, "samples": 5, "cpu_percent": 40.0}
        for at in stored] + [
        {"node_id": node.id, "period": 0, "at": at, "samples": 1, "cpu_percent": float(k)}
        for k, at in enumerate(raw)] + [
        # Raw samples of the buckets already rolled up are not counted again.
        {"node_id": node.id, "period": 0, "at": rolled + timedelta(seconds=10), "samples": 1,
         "cpu_percent": 99.0}])
    db.session.commit()

    history = monitoring.node_history(admin, node.id, "24h", now=now)
    assert history.resolution == 300
    points = [(p.at, p.samples, p.cpu_percent) for p in history.points]
    first_raw = rolled + timedelta(minutes=5)
    assert points == [
        *((at, 5, 40.0) for at in reversed(stored)),
        (first_raw, 9, sum(range(9)) / 9),
        (first_raw + timedelta(minutes=5), 2, 9.5),
    ]
    assert history.gap == timedelta(minutes=12, seconds=30)

    hour = monitoring.node_history(admin, node.id, "1h", now=now)
    assert hour.resolution == 0 and len(hour.points) == 0  # all of it is 2 hours old


def test_unknown_ranges_and_nodes_are_refused(db, admin, alice):
    node = factories.make_node("edge-1")
    with pytest.raises(ValidationError, match="unknown range") as raised:
        monitoring.node_history(admin, node.id, "7d")
    assert raised.value.fields == {"range": "must be one of 1h, 24h, 30d"}
    with pytest.raises(NotFound, match="node not found"):
        monitoring.node_history(admin, node.id + 1, "1h")
    with pytest.raises(Forbidden, match="administrators only"):
        monitoring.node_history(alice, node.id, "1h")
    with pytest.raises(Forbidden, match="administrators only"):
        monitoring.fleet_overview(alice)


# ------------------------------------------------------------------------------ API

def test_the_api_gives_the_fleet_and_a_nodes_history(client, fleet, admin):
    measured, bare, lost = fleet
    headers = api_headers(admin)
    answer = client.get("/api/v1/metrics/fleet", headers=headers)
    assert answer.status_code == 200
    body = answer.get_json()
    assert (body["total"], body["page"]) == (3, 1)
    by_name = {item["node"]["name"]: item for item in body["items"]}
    assert by_name["edge-a"] == {
        "node": {"id": bare.id, "name": "edge-a", "pool": "default", "status": "unknown",
                 "enabled": True},
        "glances_api": None, "metrics_at": None, "latest": None,
        "metrics_error": "no Glances: nothing listens on 127.0.0.1:61208 on the node "
                         "(through SSH)"}
    latest = by_name["edge-b"]["latest"]
    assert by_name["edge-b"]["glances_api"] == "4" and by_name["edge-b"]["metrics_error"] == ""
    assert (latest["cpu_percent"], latest["swap_percent"], latest["uptime_seconds"]) == (
        14.5, 16.2, ((6 * 24 + 22) * 60 + 22) * 60 + 5)
    assert latest["filesystems"][0] == {"mount": "/", "percent": 24.9, "used": 236831793152,
                                        "size": 1003736440832}
    assert latest["at"].endswith("+00:00") and latest["at"] == by_name["edge-b"]["metrics_at"]
    assert "did not answer in time" in by_name["edge-c"]["metrics_error"]
    assert by_name["edge-c"]["latest"]["cpu_percent"] == 6.1

    answer = client.get(f"/api/v1/nodes/{measured.id}/metrics?range=1h", headers=headers)
    assert answer.status_code == 200
    body = answer.get_json()
    assert (body["range"], body["resolution"], body["node"]["name"]) == ("1h", 0, "edge-b")
    [point] = body["points"]
    assert (point["samples"], point["cpu_percent"], point["net_rx_bps"]) == (1, 14.5, 0.0)
    assert point["connections"] is None and body["latest"]["load1"] == 3.84375
    default = client.get(f"/api/v1/nodes/{measured.id}/metrics", headers=headers).get_json()
    assert (default["range"], default["resolution"]) == ("24h", 300)
    assert [p["samples"] for p in default["points"]] == [1]
    month = client.get(f"/api/v1/nodes/{bare.id}/metrics?range=30d", headers=headers)
    assert month.get_json()["points"] == [] and month.get_json()["latest"] is None


@pytest.mark.parametrize("query", ["?range=7d", "?range=", "?range=1H"])
def test_the_api_refuses_a_bad_range_naming_the_field(client, fleet, admin, query):
    answer = client.get(f"/api/v1/nodes/{fleet[0].id}/metrics{query}",
                        headers=api_headers(admin))
    assert answer.status_code == 422
    assert "range" in answer.get_json()["error"]["fields"]


def test_the_api_is_for_administrators_only(client, fleet, alice):
    headers = api_headers(alice)
    for path in ("/api/v1/metrics/fleet", f"/api/v1/nodes/{fleet[0].id}/metrics",
                 "/api/v1/nodes/999999/metrics"):
        answer = client.get(path, headers=headers)
        assert answer.status_code == 403, path
        assert answer.get_json()["error"]["code"] == "forbidden"
        assert "edge-" not in answer.get_data(as_text=True)
        assert client.get(path).status_code == 401


def test_an_unknown_node_answers_404(client, admin):
    answer = client.get("/api/v1/nodes/424242/metrics", headers=api_headers(admin))
    assert answer.status_code == 404 and answer.get_json()["error"]["code"] == "not_found"


def test_the_openapi_document_lists_the_metrics(client):
    paths = client.get("/api/v1/openapi.json").get_json()["paths"]
    node = paths["/api/v1/nodes/{node_id}/metrics"]["get"]
    assert {"200", "401", "403", "404", "422"} <= set(node["responses"])
    assert [p["name"] for p in node["parameters"] if p["in"] == "query"] == ["range"]
    assert {"200", "401", "403"} <= set(paths["/api/v1/metrics/fleet"]["get"]["responses"])


# ---------------------------------------------------------------------------- pages

def test_the_fleet_page_shows_figures_and_no_metrics_in_words(admin_client, fleet):
    page = admin_client.get("/admin/fleet")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    names = re.findall(r'<th scope="row"><a href="/admin/nodes/\d+#metrics">([^<]+)</a>', html)
    assert names == ["edge-a", "edge-b", "edge-c"]
    assert html.count("no metrics") == 1
    assert "nothing listens on 127.0.0.1:61208" in html
    assert re.search(r'<meter [^>]*value="14.5"\s+aria-label="CPU of edge-b">', html)
    assert "6 days, 22 h" in html and "stale" in html
    assert 'aria-current="page">Fleet</a>' in html


def test_a_nodes_page_charts_its_metrics_over_the_chosen_range(admin_client, fleet):
    measured, bare, _lost = fleet
    html = admin_client.get(f"/admin/nodes/{measured.id}").get_data(as_text=True)
    assert html.count('role="img"') == 7
    assert re.search(r'aria-current="true">Last 24 hours</a>', html)
    assert "5-minute averages" in html
    assert "Glances API 4" in html and "up 6 days, 22 h" in html
    assert "<code>/zsfpool</code>" in html and "24.9 %" in html
    assert "CPU: last 14.5\u00a0%" in html

    month = admin_client.get(f"/admin/nodes/{measured.id}?range=30d").get_data(as_text=True)
    assert re.search(r'aria-current="true">Last 30 days</a>', month)
    assert "hourly averages" in month

    empty = admin_client.get(f"/admin/nodes/{bare.id}?range=1h").get_data(as_text=True)
    assert "no metrics" in empty and "nothing listens on 127.0.0.1:61208" in empty
    assert empty.count(">no data</text>") == 7

    refused = admin_client.get(f"/admin/nodes/{measured.id}?range=forever")
    assert refused.status_code == 422


def test_clients_cannot_open_the_fleet(alice_client, fleet):
    assert alice_client.get("/admin/fleet").status_code == 403
    assert alice_client.get(f"/admin/nodes/{fleet[0].id}").status_code == 403


def test_metrics_state_is_kept_on_the_node(db, fleet):
    measured, bare, lost = fleet
    db.session.expire_all()
    rows = {n.id: n for n in db.session.query(Node)}
    assert (rows[measured.id].glances_api, rows[measured.id].metrics_error) == ("4", "")
    assert rows[bare.id].glances_api is None and rows[bare.id].metrics_at is None
    # A timeout is not "no Glances": the version spoken last time is kept.
    assert rows[lost.id].glances_api == "3" and rows[lost.id].metrics_at is not None
