"""/metrics (every family, values that follow what happens, the token), request ids
(echoed, audited, on the rollout and in its log lines; hostile ones replaced) and
what /health tells anyone and administrators."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from datetime import timedelta

import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from app.models import (
    Alert,
    AlertKind,
    AlertRule,
    AlertSeverity,
    AlertState,
    AuditLog,
    Certificate,
    CertificateProvider,
    CertificateStatus,
    DeploymentStatus,
    JobRun,
    JobStatus,
    NodeStatus,
    Rollout,
    SslMode,
    SubjectKind,
)
from app.models.base import utcnow
from app.services import deployments, nodes
from tests import factories
from tests.conftest import api_headers, login
from tests.logs import json_log as capture_json_log
from tests.logs import log_lines

FAMILIES = {
    "rpcc_http_request_duration_seconds", "rpcc_rollouts", "rpcc_rollout_duration_seconds",
    "rpcc_nodes", "rpcc_certificates_ending_within_days", "rpcc_certificate_soonest_end_days",
    "rpcc_alerts_firing", "rpcc_job_last_run_age_seconds", "rpcc_job_interval_seconds",
    "rpcc_job_runs_last_day",
}
GENERATED_ID = re.compile(r"[0-9a-f]{32}")
TOKEN = "metrics-token-for-tests"


class Scrape:
    """One answer of /metrics, parsed by Prometheus' own parser."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = {(s.name, frozenset(s.labels.items())): s.value
                        for family in self.families.values() for s in family.samples}

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def labels(self, name: str) -> list[dict[str, str]]:
        return [dict(labels) for sample, labels in self.samples if sample == name]


def scrape(client: FlaskClient, **headers: str) -> Scrape:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.content_type.startswith("text/plain")
    return Scrape(response.get_data(as_text=True))


def health_requests(metrics: Scrape, status_class: str = "2xx") -> float:
    return metrics.value("rpcc_http_request_duration_seconds_count", endpoint="main.health",
                         method="GET", status_class=status_class)


@pytest.fixture()
def json_log() -> Iterator[io.StringIO]:
    with capture_json_log() as stream:
        yield stream


# ------------------------------------------------------------------------ /metrics


def test_every_family_is_there_and_follows_what_happens(client, admin, alice, db):
    eu = nodes.create_pool(admin, "eu")
    online = factories.make_node("edge-eu-1", pool="eu")
    offline = factories.make_node("edge-eu-2", pool="eu")
    factories.make_node("edge-default-1")
    online.status, offline.status = NodeStatus.ONLINE, NodeStatus.OFFLINE
    now = utcnow()
    soon = factories.make_site(alice, "soon.example.com", pool="eu")
    later = factories.make_site(alice, "later.example.com", pool="eu")
    plain = factories.make_site(alice, "plain.example.com", pool="eu")
    for site, days in ((soon, 5), (later, 45), (plain, 1)):
        site.ssl_mode = SslMode.SELF_SIGNED if site is not plain else SslMode.NONE
        db.session.add(Certificate(site_id=site.id, provider=CertificateProvider.SELF_SIGNED,
                                   status=CertificateStatus.VALID,
                                   not_after=now + timedelta(days=days)))
    rule = AlertRule(name="down", kind=AlertKind.NODE_UNREACHABLE,
                     severity=AlertSeverity.CRITICAL)
    other = AlertRule(name="busy", kind=AlertKind.CPU, severity=AlertSeverity.WARNING)
    db.session.add_all([rule, other])
    db.session.flush()
    subjects = (online, offline, online, offline)
    states = (AlertState.FIRING, AlertState.FIRING, AlertState.PENDING, AlertState.RESOLVED)
    for number, (node, state) in enumerate(zip(subjects, states, strict=True)):
        db.session.add(Alert(rule_id=rule.id if number < 2 else other.id,
                             subject_kind=SubjectKind.NODE, subject_id=node.id,
                             node_id=node.id, pool_id=eu.id, state=state))
    db.session.add_all([
        JobRun(job=job, runner="test", status=status, started_at=now - ago,
               finished_at=now - ago + timedelta(seconds=1))
        for job, status, ago in (
            ("drift", JobStatus.SUCCEEDED, timedelta(days=2)),
            ("drift", JobStatus.SUCCEEDED, timedelta(hours=3)),
            ("drift", JobStatus.FAILED, timedelta(minutes=10)),
            ("job_retention", JobStatus.SUCCEEDED, timedelta(days=3)),
            ("job_retention", JobStatus.SUCCEEDED, timedelta(days=2)))
    ])
    db.session.commit()

    before = scrape(client)
    for _ in range(3):
        assert client.get("/health").status_code == 200
    after = scrape(client)

    assert FAMILIES <= after.families.keys()
    assert after.families["rpcc_http_request_duration_seconds"].type == "histogram"
    assert after.families["rpcc_rollouts"].type == "counter"
    assert health_requests(after) - health_requests(before) == 3
    assert after.value("rpcc_nodes", pool="eu", status="online") == 1
    assert after.value("rpcc_nodes", pool="eu", status="offline") == 1
    assert after.value("rpcc_nodes", pool="default", status="unknown") == 1
    # Served certificates only (the plain site serves none), counted in windows.
    within = {labels["days"]: after.value("rpcc_certificates_ending_within_days", **labels)
              for labels in after.labels("rpcc_certificates_ending_within_days")
              if labels["pool"] == "eu"}
    assert within == {"0": 0, "7": 1, "14": 1, "30": 1, "60": 2, "90": 2, "+Inf": 2}
    assert 4.9 < after.value("rpcc_certificate_soonest_end_days", pool="eu") <= 5
    assert after.value("rpcc_alerts_firing", severity="critical") == 2
    assert after.value("rpcc_alerts_firing", severity="warning") == 0
    assert 590 <= after.value("rpcc_job_last_run_age_seconds", job="drift") < 3600
    assert after.value("rpcc_job_interval_seconds", job="drift") == 3600
    # Runs of the last day per status; a job idle for longer still has its age.
    assert after.value("rpcc_job_runs_last_day", job="drift", status="succeeded") == 1
    assert after.value("rpcc_job_runs_last_day", job="drift", status="failed") == 1
    assert 2 * 86400 - 10 < after.value("rpcc_job_last_run_age_seconds",
                                        job="job_retention") < 2 * 86400 + 60
    assert after.labels("rpcc_job_runs_last_day") == [{"job": "drift", "status": "failed"},
                                                     {"job": "drift", "status": "succeeded"}]
    # A job that never ran has an interval and no age.
    assert after.value("rpcc_job_interval_seconds", job="node_health") == 300
    assert {"job": "node_health"} not in after.labels("rpcc_job_last_run_age_seconds")
    # No tenant's domain, and (without a token) no node's name.
    for secret in ("soon.example.com", "later.example.com", "edge-eu-1", "alice"):
        assert secret not in after.text


def test_random_paths_add_no_series(client, db):
    before = scrape(client)
    for n in range(5):
        assert client.get(f"/probe-{n}-{'x' * n}/wp-admin.php").status_code == 404
    assert client.open("/health", method="BREW").status_code == 405
    after = scrape(client)
    endpoints = {labels["endpoint"] for labels in
                 after.labels("rpcc_http_request_duration_seconds_count")}
    assert not any("probe" in endpoint or "/" in endpoint for endpoint in endpoints)
    assert after.value("rpcc_http_request_duration_seconds_count", endpoint="unmatched",
                       method="GET", status_class="4xx") - before.value(
        "rpcc_http_request_duration_seconds_count", endpoint="unmatched", method="GET",
        status_class="4xx") == 5
    assert after.value("rpcc_http_request_duration_seconds_count", endpoint="unmatched",
                       method="other", status_class="4xx") >= 1


def test_a_metrics_token_is_required_once_set_and_then_nodes_are_named(
        app, client, db, monkeypatch):
    factories.make_node("edge-named")
    assert "edge-named" not in scrape(client).text
    monkeypatch.setitem(app.config, "METRICS_TOKEN", TOKEN)

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                    {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": f"Bearer {TOKEN}x"}):
        refused = client.get("/metrics", headers=headers)
        assert refused.status_code == 401, headers
        assert refused.headers["WWW-Authenticate"] == "Bearer"
        assert "rpcc_" not in refused.get_data(as_text=True)

    allowed = scrape(client, Authorization=f"Bearer {TOKEN}")
    assert allowed.value("rpcc_node_up", pool="default", node="edge-named") == 0
    assert FAMILIES <= allowed.families.keys()


def test_a_failed_rollout_is_counted_and_logged_under_its_request_id(
        app, client, alice, db, json_log, monkeypatch):
    """A node nobody answers for (nothing listens on its SSH port): the rollout fails
    in the background, counted with its outcome, and every line it logs carries the
    id of the request that started it, as its rollout row and audit row do."""
    monkeypatch.setitem(app.config, "SSH_RETRIES", 0)
    factories.make_node("silent", ssh_port=1)
    site = factories.make_site(alice, "counted.example.com")
    before = scrape(client)

    started = client.post(f"/api/v1/sites/{site.id}/deploy",
                          headers={**api_headers(alice), "X-Request-ID": "deploy-7f3a.1"})
    assert started.status_code == 202
    assert started.headers["X-Request-ID"] == "deploy-7f3a.1"
    rollout = deployments.wait(started.get_json()["id"], timeout=60)
    assert rollout.status == DeploymentStatus.FAILED

    after = scrape(client)
    counted = {outcome: after.value("rpcc_rollouts_total", kind="deploy", outcome=outcome)
               - before.value("rpcc_rollouts_total", kind="deploy", outcome=outcome)
               for outcome in ("succeeded", "failed")}
    assert counted == {"succeeded": 0, "failed": 1}
    assert after.value("rpcc_rollout_duration_seconds_count", kind="deploy",
                       outcome="failed") - before.value(
        "rpcc_rollout_duration_seconds_count", kind="deploy", outcome="failed") == 1

    assert db.session.get(Rollout, rollout.id).request_id == "deploy-7f3a.1"
    audited = db.session.scalar(select(AuditLog).where(AuditLog.action == "site.deploy"))
    assert audited.request_id == "deploy-7f3a.1"
    lines = [line for line in log_lines(json_log) if line["logger"].startswith("app.")]
    concluded = [line for line in lines if line["message"].startswith(f"rollout {rollout.id} ")]
    assert concluded and concluded[0]["message"].startswith(
        f"rollout {rollout.id} (deploy) failed after")
    assert {line.get("request_id") for line in lines} == {"deploy-7f3a.1"}


# --------------------------------------------------------------------- request ids


def test_a_request_without_an_id_gets_one_of_its_own(client, db):
    first, second = client.get("/health"), client.get("/health")
    assert GENERATED_ID.fullmatch(first.headers["X-Request-ID"])
    assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]


def test_the_id_a_request_brings_is_echoed_and_audited(client, alice, db):
    headers = {**api_headers(alice), "X-Request-ID": "0af7651916cd43dd8448eb211c80319c"}
    created = client.post("/api/v1/sites", headers=headers, json={
        "domain": "traced.example.com", "backends": [{"host": "127.0.0.1", "port": 8080}]})
    assert created.status_code == 201, created.get_json()
    assert created.headers["X-Request-ID"] == "0af7651916cd43dd8448eb211c80319c"
    entry = db.session.scalar(select(AuditLog).where(AuditLog.action == "site.create"))
    assert entry.request_id == "0af7651916cd43dd8448eb211c80319c"


@pytest.mark.parametrize("hostile", [
    "evil\nINFO forged log line", "evil\r\nSet-Cookie: session=x", "x" * 10240,
    '"}, {"request_id": "forged', "it's", "a b", "", "<script>", "id;rm -rf /",
    "é" * 8, "x" * 129,
], ids=["newline", "crlf", "10KB", "json-quote", "quote", "space", "empty", "markup",
        "shell", "non-ascii", "129-chars"])
def test_a_malformed_id_is_replaced_never_echoed_or_stored(client, alice, db, hostile):
    token = api_headers(alice)
    created = client.post("/api/v1/sites", headers=token, json={
        "domain": "hostile.example.com", "backends": [{"host": "127.0.0.1", "port": 8080}]},
        environ_base={"HTTP_X_REQUEST_ID": hostile})
    assert created.status_code == 201, created.get_json()
    replaced = created.headers["X-Request-ID"]
    assert GENERATED_ID.fullmatch(replaced) and replaced != hostile
    entry = db.session.scalar(select(AuditLog).where(AuditLog.action == "site.create"))
    assert entry.request_id == replaced


def test_an_id_at_the_length_limit_is_kept(client, db):
    longest = "a1-._:" * 21 + "ab"
    assert len(longest) == 128
    assert client.get("/health", headers={"X-Request-ID": longest}).headers[
        "X-Request-ID"] == longest


# ------------------------------------------------------------------------- /health


def test_anyone_learns_only_ok_or_degraded_and_what_is_degraded(client, alice, db):
    anonymous = client.get("/health")
    assert anonymous.status_code == 200
    # No scheduler leads in this test: the jobs have stopped, the app still serves.
    assert anonymous.get_json() == {"status": "degraded", "degraded": ["scheduler"]}
    login(client, alice)
    assert client.get("/health").get_json() == {"status": "degraded",
                                                 "degraded": ["scheduler"]}
    as_client_token = client.get("/health", headers=api_headers(alice))
    assert set(as_client_token.get_json()) == {"status", "degraded"}


def test_administrators_get_the_details_by_session_or_token(app, client, admin, db):
    from app import __version__

    with_token = client.get("/health", headers=api_headers(admin)).get_json()
    assert with_token["version"] == __version__ and with_token["database"] == "ok"
    assert with_token["scheduler"] == {"running": False, "heartbeat_age_seconds": None,
                                       "leader": None}
    assert with_token["degraded"] == ["scheduler"]
    bad_token = client.get("/health", headers={"Authorization": "Bearer rpcc_not-a-token"})
    assert bad_token.status_code == 200 and set(bad_token.get_json()) == {"status", "degraded"}
    login(client, admin)
    assert client.get("/health").get_json() == with_token
