"""Alert rules fired and resolved by what the collectors observe on real servers:
sites checked through real nginx nodes over a real sshd (a backend stopped and
started again, a certificate close to its expiry, a node left serving an older
certificate), NS records changed in a real Knot by RFC 2136 updates, and a real
Glances read through its node's SSH tunnel.  Each step runs the collector's
registered job, then the ``alerts`` job, and every notice reaches a real channel on
loopback (a Telegram Bot API stand-in for the administrators, an SMTP server and a
webhook receiver for the site's owner)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from app.extensions import ssh
from app.models import Alert, AlertState, DeploymentStatus, NodeMetric, Site, User
from app.services import alerts, certificates, deployments, nameservers, nodes, notifiers
from app.services.notifiers import ChannelInput
from tests import factories, pki
from tests.fleet import FleetNode
from tests.glances import Glances
from tests.glances import glances_factory as glances_factory  # noqa: F401  (fixture)
from tests.integration.test_alerts import SECRET, TOKEN, alerts_of, run
from tests.integration.test_alerts import outside as outside  # noqa: F401  (fixture)
from tests.integration.test_alerts import receiver as receiver  # noqa: F401  (fixture)
from tests.integration.test_alerts import smtp as smtp  # noqa: F401  (fixture)
from tests.integration.test_alerts import telegram as telegram  # noqa: F401  (fixture)
from tests.knot import ADDRESS, KnotServer
from tests.notice_servers import IP, FakeTelegram, WebhookReceiver
from tests.processes import free_port
from tests.smtp import SmtpServer
from tests.sshd import SshServer

#: The nginx nodes of tests/integration/conftest.py's ``fleet``.
ADDRESSES = ("127.0.0.85", "127.0.0.86")
GLANCES_ADDRESS = "127.0.0.87"
ZONE = "moved.example.com"
OWNER_MAIL = "bob@mail.test"


# ----------------------------------------------------------------------------- servers

class _Ok(BaseHTTPRequestHandler):
    """200 "ok", then the connection closes (HTTP/1.0): nginx keeps no idle
    connection to the backend that would go on answering once it stopped."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Quiet: the test output is about alerts."""


class RestartableBackend:
    """An HTTP backend on a fixed 127.0.0.1 port that can be stopped and started
    again on the same port, as a service restarted on its host."""

    def __init__(self) -> None:
        self.port = free_port()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.start()

    def start(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), _Ok)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listening (again: a test stops it before its fixture does)."""
        if self._server is None or self._thread is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        self._server = self._thread = None


@pytest.fixture()
def backend() -> Iterator[RestartableBackend]:
    server = RestartableBackend()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def knot() -> Iterator[KnotServer]:
    server = KnotServer((ZONE,))
    yield server
    server.stop()


@pytest.fixture()
def glances_node(app: Flask, sshd: SshServer,
                 glances_factory: Callable[..., Glances]) -> Iterator[int]:
    """A node whose real Glances is read through the node's SSH tunnel; its id."""
    server = glances_factory(GLANCES_ADDRESS)
    node = factories.make_node("edge-metrics", host="127.0.0.1", ssh_port=sshd.port,
                               ssh_private_key=sshd.client_key_text,
                               glances_url=f"ssh://{server.address}:{server.port}")
    yield node.id
    ssh.reset(app)


# ----------------------------------------------------------------------------- helpers

def listening(admin: User, owner: User | None = None, *,
              receiver: WebhookReceiver | None = None) -> None:
    """The administrators hear on Telegram; ``owner`` by mail and by webhook."""
    notifiers.create_channel(admin, ChannelInput(name="ops", kind="telegram", target="5",
                                                 secret=TOKEN))
    if owner is not None and receiver is not None:
        notifiers.create_channel(owner, ChannelInput(name="mail", kind="email",
                                                     target=OWNER_MAIL))
        notifiers.create_channel(owner, ChannelInput(name="hook", kind="webhook",
                                                     target=f"{receiver.url}/owner",
                                                     secret=SECRET))


def heard(telegram: FakeTelegram, smtp: SmtpServer,
          receiver: WebhookReceiver) -> dict[str, list[str]]:
    """The subject of every notice each channel got so far, in order."""
    return {
        "telegram": [text.splitlines()[0].removeprefix("<b>").removesuffix("</b>")
                     for text in telegram.texts()],
        "mail": [str(m.message["Subject"]) for m in smtp.to(OWNER_MAIL)],
        "webhook": [r.json["subject"] for r in receiver.received],
    }


def everything_said(telegram: FakeTelegram, smtp: SmtpServer,
                    receiver: WebhookReceiver) -> list[str]:
    return [*telegram.texts(),
            *(f"{m.message['Subject']}\n{m.text}" for m in smtp.received),
            *(r.body.decode() for r in receiver.received)]


def assert_masked(texts: list[str], domain: str) -> None:
    assert texts
    for text in texts:
        assert not IP.search(text), text
        assert domain not in text and "example" not in text, text


def moves(alert: Alert) -> list[tuple[str | None, str, bool]]:
    """Each transition of ``alert``: from, to, and whether its notice went out."""
    return [(t.from_state, t.to_state, t.notified_at is not None and not t.silenced)
            for t in alert.transitions]


def only(db: Any, kind: str) -> Alert:
    [alert] = alerts_of(db, kind)
    return alert


def deployed(actor: User, site: Site) -> None:
    rollout = deployments.wait(deployments.deploy_site(actor, site.id).id, timeout=120)
    assert rollout.status == DeploymentStatus.SUCCEEDED, rollout.error


def serve_certificate(owner: User, site: Site, not_after: datetime | None = None) -> None:
    """Upload a certificate for ``site`` (valid 90 days unless ``not_after``) and
    wait for the rollout that serves it."""
    leaf, key = pki.leaf(pki.root("Observed Root"), [site.domain], not_after=not_after)
    certificates.upload_certificate(owner, site.id, pki.pem(leaf), pki.key_pem(key))
    rollout = deployments.list_rollouts(owner, site_id=site.id).items[0]
    assert deployments.wait(rollout.id, timeout=120).status == DeploymentStatus.SUCCEEDED


# ----------------------------------------------------------------------------- tests

def test_a_stopped_backend_fires_site_down_to_owner_and_admins_until_it_is_back(
        db: Any, admin: User, bob: User, fleet: list[FleetNode], backend: RestartableBackend,
        telegram: FakeTelegram, smtp: SmtpServer,
        receiver: WebhookReceiver) -> None:
    listening(admin, bob, receiver=receiver)
    alerts.create_rule(admin, {"name": "Site down", "kind": "site_down", "threshold": 1,
                               "duration_seconds": 0, "severity": "critical"})
    site = factories.make_site(bob, "shop.example.com",
                               backends=[{"host": "127.0.0.1", "port": backend.port}])
    deployed(bob, site)
    assert run(db, "site_checks").endswith("2 up, 0 down")
    assert run(db, "alerts").startswith("1 rule(s): 0 firing")
    assert alerts_of(db, "site_down") == []

    backend.stop()
    assert run(db, "site_checks").endswith("0 up, 2 down")
    assert run(db, "alerts").startswith("1 rule(s): 1 firing")
    down = only(db, "site_down")
    assert (down.state, down.site_id, down.node_id, down.value) == (
        AlertState.FIRING, site.id, None, 2)
    assert down.summary == ("shop.example.com fails its checks through 2 of 2 node(s) "
                            "(HTTP 502)")
    assert moves(down) == [(None, "firing", True)]
    firing = "[CRITICAL] Site down: s**p.e*****e.com"
    assert heard(telegram, smtp, receiver) == {"telegram": [firing], "mail": [firing],
                                               "webhook": [firing]}
    assert "2 of 2 node(s)" in smtp.to(OWNER_MAIL)[0].text

    # Still down: the alert stays as it is and nobody hears about it again.
    run(db, "site_checks")
    run(db, "alerts")
    assert moves(only(db, "site_down")) == [(None, "firing", True)]
    assert len(telegram.texts()) == 1

    backend.start()
    assert run(db, "site_checks").endswith("2 up, 0 down")
    assert run(db, "alerts").startswith("1 rule(s): 0 firing, 0 pending; 0 fired, 1 resolved")
    up = only(db, "site_down")
    assert up.state == AlertState.RESOLVED and up.resolved_at is not None
    assert moves(up) == [(None, "firing", True), ("firing", "resolved", True)]
    resolved = "[RESOLVED] Site down: s**p.e*****e.com"
    assert heard(telegram, smtp, receiver) == {"telegram": [firing, resolved],
                                               "mail": [firing, resolved],
                                               "webhook": [firing, resolved]}
    assert [r.json["event"] for r in receiver.received] == ["alert.firing", "alert.resolved"]
    assert all(receiver.valid)
    said = everything_said(telegram, smtp, receiver)
    assert_masked(said, "shop.example.com")
    for text in [*(m.text for m in smtp.received), *(r.body.decode() for r in receiver.received)]:
        assert "edge-" not in text, text  # the owner never reads a node's name


def test_a_certificate_near_its_expiry_fires_until_a_later_one_is_served(
        db: Any, admin: User, alice: User, fleet: list[FleetNode], backend: RestartableBackend,
        telegram: FakeTelegram, smtp: SmtpServer,
        receiver: WebhookReceiver) -> None:
    listening(admin)
    alerts.create_rule(admin, {"name": "Certificate expires within 14 days",
                               "kind": "cert_expiring", "threshold": 14})
    site = factories.make_site(alice, "soon.example.com",
                               backends=[{"host": "127.0.0.1", "port": backend.port}])
    expiry = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    serve_certificate(alice, site, expiry)

    assert run(db, "site_checks").endswith("2 up, 0 down")
    assert run(db, "alerts").startswith("1 rule(s): 1 firing")
    expiring = only(db, "cert_expiring")
    assert (expiring.state, expiring.site_id) == (AlertState.FIRING, site.id)
    assert expiring.value is not None and 2.9 <= expiring.value <= 3.0
    when = expiry.strftime("%Y-%m-%d %H:%M UTC")
    assert expiring.summary.startswith(
        f"the certificate served for soon.example.com expires on {when}, in ")
    assert moves(expiring) == [(None, "firing", True)]
    firing = "[WARNING] Certificate expires within 14 days: s**n.e*****e.com"
    assert heard(telegram, smtp, receiver)["telegram"] == [firing]

    serve_certificate(alice, site)
    run(db, "site_checks")
    run(db, "alerts")
    renewed = only(db, "cert_expiring")
    assert renewed.state == AlertState.RESOLVED
    assert moves(renewed) == [(None, "firing", True), ("firing", "resolved", True)]
    assert heard(telegram, smtp, receiver)["telegram"] == [
        firing, "[RESOLVED] Certificate expires within 14 days: s**n.e*****e.com"]
    assert_masked(telegram.texts(), "soon.example.com")


def test_a_node_serving_a_certificate_other_than_the_issued_one_fires_until_deployed(
        db: Any, admin: User, bob: User, fleet: list[FleetNode], backend: RestartableBackend,
        telegram: FakeTelegram, smtp: SmtpServer,
        receiver: WebhookReceiver) -> None:
    listening(admin, bob, receiver=receiver)
    alerts.create_rule(admin, {"name": "Certificate not the issued one",
                               "kind": "cert_mismatch"})
    site = factories.make_site(bob, "renewed.example.com", ssl_mode="self_signed",
                               backends=[{"host": "127.0.0.1", "port": backend.port}])
    deployed(bob, site)
    # The second node is out of the pool's deployments while the certificate changes.
    nodes.set_enabled(admin, fleet[1].id, False)
    serve_certificate(bob, site)
    nodes.set_enabled(admin, fleet[1].id, True)

    assert run(db, "site_checks").endswith("2 up, 0 down")
    assert run(db, "alerts").startswith("1 rule(s): 1 firing")
    other = only(db, "cert_mismatch")
    assert (other.state, other.site_id, other.value) == (AlertState.FIRING, site.id, 1)
    assert other.summary == ("1 of 2 node(s) serve renewed.example.com a certificate other "
                             "than the one issued for it")
    assert moves(other) == [(None, "firing", True)]
    firing = "[WARNING] Certificate not the issued one: r*****d.e*****e.com"
    assert heard(telegram, smtp, receiver) == {"telegram": [firing], "mail": [firing],
                                               "webhook": [firing]}

    again = deployments.wait(deployments.deploy_nodes(admin, [fleet[1].id]).id, timeout=120)
    assert again.status == DeploymentStatus.SUCCEEDED, again.error
    run(db, "site_checks")
    run(db, "alerts")
    matched = only(db, "cert_mismatch")
    assert matched.state == AlertState.RESOLVED
    assert moves(matched) == [(None, "firing", True), ("firing", "resolved", True)]
    resolved = "[RESOLVED] Certificate not the issued one: r*****d.e*****e.com"
    assert heard(telegram, smtp, receiver) == {"telegram": [firing, resolved],
                                               "mail": [firing, resolved],
                                               "webhook": [firing, resolved]}
    assert_masked(everything_said(telegram, smtp, receiver), "renewed.example.com")


def test_ns_records_changed_in_the_zone_fire_a_mismatch_until_changed_back(
        db: Any, admin: User, bob: User, knot: KnotServer,
        telegram: FakeTelegram, smtp: SmtpServer,
        receiver: WebhookReceiver) -> None:
    listening(admin, bob, receiver=receiver)
    alerts.create_rule(admin, {"name": "Nameservers not as expected", "kind": "ns_mismatch"})
    knot.update(ZONE, replace=(("www", "A", ADDRESS),))
    nameservers.update_settings(admin, {"nameservers": [f"ns1.{ZONE}"],
                                        "resolvers": [knot.address]})
    site = factories.make_site(bob, f"www.{ZONE}")
    assert run(db, "nameservers").endswith("1 ok, 0 mismatched, 0 could not be checked")
    run(db, "alerts")
    assert alerts_of(db, "ns_mismatch") == []

    knot.update(ZONE, add=(("@", "NS", "ns9.other.example.net."),),
                delete=(("@", "NS", f"ns1.{ZONE}."),))
    assert run(db, "nameservers").endswith("0 ok, 1 mismatched, 0 could not be checked")
    assert run(db, "alerts").startswith("1 rule(s): 1 firing")
    moved = only(db, "ns_mismatch")
    assert (moved.state, moved.site_id, moved.value) == (AlertState.FIRING, site.id, 1)
    assert moved.summary == f"the NS records of www.{ZONE} are not the expected nameservers"
    assert moves(moved) == [(None, "firing", True)]
    firing = "[WARNING] Nameservers not as expected: w*w.m***d.e*****e.com"
    assert heard(telegram, smtp, receiver) == {"telegram": [firing], "mail": [firing],
                                               "webhook": [firing]}

    knot.update(ZONE, add=(("@", "NS", f"ns1.{ZONE}."),),
                delete=(("@", "NS", "ns9.other.example.net."),))
    assert run(db, "nameservers").endswith("1 ok, 0 mismatched, 0 could not be checked")
    run(db, "alerts")
    back = only(db, "ns_mismatch")
    assert back.state == AlertState.RESOLVED
    assert moves(back) == [(None, "firing", True), ("firing", "resolved", True)]
    resolved = "[RESOLVED] Nameservers not as expected: w*w.m***d.e*****e.com"
    assert heard(telegram, smtp, receiver) == {"telegram": [firing, resolved],
                                               "mail": [firing, resolved],
                                               "webhook": [firing, resolved]}
    said = everything_said(telegram, smtp, receiver)
    assert_masked(said, f"www.{ZONE}")
    assert not any("other.example.net" in text for text in said)


def test_memory_above_a_threshold_the_node_exceeds_fires_until_the_rule_is_raised(
        db: Any, admin: User, glances_node: int,
        telegram: FakeTelegram, smtp: SmtpServer,
        receiver: WebhookReceiver) -> None:
    listening(admin)
    rule = alerts.create_rule(admin, {"name": "Memory above 1%", "kind": "memory",
                                      "threshold": 1})
    assert run(db, "node_metrics").endswith(": 1 with metrics, 0 without Glances, 0 failed")
    assert run(db, "alerts").startswith("1 rule(s): 1 firing")
    high = only(db, "memory")
    assert (high.state, high.node_id, high.site_id) == (AlertState.FIRING, glances_node, None)
    assert high.value is not None and 1 < high.value < 99
    assert high.summary == f"edge-metrics: memory use {high.value:.1f}% (above 1%)"
    assert moves(high) == [(None, "firing", True)]
    firing = "[WARNING] Memory above 1%: edge-metrics"
    assert heard(telegram, smtp, receiver)["telegram"] == [firing]

    alerts.update_rule(admin, rule.id, {"name": "Memory above 99%", "threshold": 99})
    run(db, "node_metrics")
    assert run(db, "alerts").startswith("1 rule(s): 0 firing, 0 pending; 0 fired, 1 resolved")
    low = only(db, "memory")
    assert low.state == AlertState.RESOLVED
    assert db.session.scalars(select(NodeMetric.mem_percent).where(
        NodeMetric.node_id == glances_node).order_by(NodeMetric.id.desc())).first() < 99
    assert moves(low) == [(None, "firing", True), ("firing", "resolved", True)]
    assert heard(telegram, smtp, receiver) == {
        "telegram": [firing, "[RESOLVED] Memory above 99%: edge-metrics"], "mail": [],
        "webhook": []}
    for text in telegram.texts():
        assert not IP.search(text), text
