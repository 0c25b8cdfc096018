"""Alerts raised by real conditions, with the registered jobs doing the observing:
nginx nodes reached over a real sshd, a site whose deployment the nodes refuse, and
notices through real channels on loopback (a Telegram Bot API stand-in, an SMTP
server, a webhook receiver)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from app.models import Alert, AlertState, DeploymentStatus, NotificationDelivery, User
from app.scheduler import find_job
from app.services import alerts, deployments, jobs, notifiers, sites
from app.services.notifiers import ChannelInput
from tests import factories
from tests.fleet import FleetNode
from tests.notice_servers import IP, FakeTelegram, WebhookReceiver, notice_fixtures
from tests.smtp import SmtpServer
from tests.sshd import SshServer

#: The nginx nodes of tests/integration/conftest.py's ``fleet``.
ADDRESSES = ("127.0.0.75", "127.0.0.76")
TOKEN = "135790:" + "K" * 35
SECRET = "h" * 24


telegram, receiver, smtp, outside = notice_fixtures(
    ("127.0.0.77", "127.0.0.78", "127.0.0.79"), token=TOKEN, secret=SECRET)


def run(db: Any, name: str) -> str:
    """Run one registered job as the scheduler does, then wait for the notices it
    sent; its summary."""
    job = find_job(name)
    assert job is not None
    record = jobs.run_recorded(job.name, job.work, "test")
    assert record.status.value == "succeeded", record.detail
    for delivery_id in db.session.scalars(select(NotificationDelivery.id)):
        notifiers.wait(delivery_id)
    db.session.expire_all()
    return record.detail


def alerts_of(db: Any, kind: str) -> list[Alert]:
    return [a for a in db.session.scalars(select(Alert).order_by(Alert.id))
            if a.rule.kind.value == kind]


def alert_events(db: Any) -> list[str]:
    return list(db.session.scalars(select(NotificationDelivery.event)
                                   .where(NotificationDelivery.event.like("alert.%"))
                                   .order_by(NotificationDelivery.id)))


def deployed(owner: User, backends: Any) -> None:
    """shop.example.com, deployed to every node."""
    backend = backends.start("shop")
    site = factories.make_site(owner, "shop.example.com",
                               backends=[{"host": "127.0.0.1", "port": backend.port}])
    rollout = deployments.wait(deployments.deploy_site(owner, site.id).id, timeout=120)
    assert rollout.status == DeploymentStatus.SUCCEEDED, rollout.error


def test_a_node_whose_sshd_stops_is_unreachable_until_it_is_back(
        db: Any, admin: User, sshd: SshServer, fleet: list[FleetNode]) -> None:
    notifiers.create_channel(admin, ChannelInput(name="ops", kind="telegram", target="5",
                                                 secret=TOKEN))
    alerts.create_rule(admin, {"name": "Node unreachable", "kind": "node_unreachable"})
    run(db, "node_health")
    run(db, "alerts")
    assert alerts_of(db, "node_unreachable") == []

    sshd.stop(remove=False)
    try:
        assert run(db, "node_health").endswith("0 healthy, 2 not")
        assert run(db, "alerts").startswith("1 rule(s): 2 firing")
    finally:
        # The same server again: same port, same host key (the nodes pinned it).
        sshd._start(fixed_port=True)
    down = alerts_of(db, "node_unreachable")
    assert {a.summary for a in down} == {"edge-0 does not answer over SSH",
                                         "edge-1 does not answer over SSH"}
    assert alert_events(db) == ["alert.firing", "alert.firing"]

    run(db, "node_health")
    run(db, "alerts")
    assert {a.state for a in alerts_of(db, "node_unreachable")} == {AlertState.RESOLVED}
    assert alert_events(db) == ["alert.firing"] * 2 + ["alert.resolved"] * 2


def test_a_node_whose_proxy_stops_is_not_answering_until_it_is_back(
        db: Any, admin: User, alice: User, fleet: list[FleetNode], backends: Any) -> None:
    deployed(alice, backends)  # each node then answers the health check's HTTP probe
    alerts.create_rule(admin, {"name": "Proxy down", "kind": "proxy_down"})
    alerts.create_rule(admin, {"name": "Node unreachable", "kind": "node_unreachable"})
    fleet[1].nginx.stop()
    try:
        assert run(db, "node_health").endswith("1 healthy, 1 not")
        run(db, "alerts")
        [down] = alerts_of(db, "proxy_down")
        assert (down.state, down.node_id) == (AlertState.FIRING, fleet[1].id)
        assert down.summary.startswith("edge-1: ") and "does not answer HTTP" in down.summary
        assert alerts_of(db, "node_unreachable") == []  # SSH still answers
    finally:
        fleet[1].nginx.start()
    run(db, "node_health")
    run(db, "alerts")
    assert alerts_of(db, "proxy_down")[0].state == AlertState.RESOLVED


def test_a_file_changed_on_a_node_raises_drift_until_the_node_is_deployed_again(
        db: Any, admin: User, alice: User, fleet: list[FleetNode], backends: Any) -> None:
    deployed(alice, backends)
    alerts.create_rule(admin, {"name": "Drift", "kind": "drift"})
    conf = fleet[0].nginx.config_dir / "sites" / "shop.example.com.conf"
    conf.write_text(conf.read_text() + "\n# edited by hand\n")

    assert "1 drifted (edge-0)" in run(db, "drift")
    run(db, "alerts")
    [drift] = alerts_of(db, "drift")
    assert (drift.state, drift.node_id) == (AlertState.FIRING, fleet[0].id)
    assert drift.summary == "files on edge-0 differ from its deployed version"

    again = deployments.wait(deployments.deploy_nodes(admin, [fleet[0].id]).id, timeout=120)
    assert again.status == DeploymentStatus.SUCCEEDED, again.error
    assert "0 drifted" in run(db, "drift")
    run(db, "alerts")
    assert alerts_of(db, "drift")[0].state == AlertState.RESOLVED


def test_a_failed_deployment_is_told_to_its_owner_and_the_administrators_masked(
        db: Any, admin: User, bob: User, fleet: list[FleetNode], backends: Any,
        telegram: FakeTelegram, smtp: SmtpServer, receiver: WebhookReceiver) -> None:
    notifiers.create_channel(admin, ChannelInput(name="ops", kind="telegram", target="5",
                                                 secret=TOKEN))
    notifiers.create_channel(bob, ChannelInput(name="mail", kind="email",
                                               target="bob@mail.test"))
    notifiers.create_channel(bob, ChannelInput(name="hook", kind="webhook",
                                               target=f"{receiver.url}/bob", secret=SECRET))
    alerts.add_recommended_rules(admin)
    # nginx resolves upstream names when it loads; nothing resolves in this namespace.
    site = factories.make_site(bob, "bob.example.net",
                               backends=[{"host": "bob-internal.invalid", "port": 80}])
    failed = deployments.wait(deployments.deploy_site(bob, site.id).id, timeout=120)
    assert failed.status == DeploymentStatus.FAILED
    run(db, "alerts")
    [alert] = alerts_of(db, "deployment_failed")
    assert (alert.state, alert.site_id, alert.value) == (AlertState.FIRING, site.id, failed.id)
    firing = [d for d in db.session.scalars(select(NotificationDelivery))
              if d.event == "alert.firing"]
    assert {d.channel.owner_id for d in firing} == {admin.id, bob.id} and len(firing) == 3

    backend = backends.start("bob")
    sites.update_site(bob, site.id, {"backends": [{"host": "127.0.0.1", "port": backend.port}]})
    fixed = deployments.wait(deployments.deploy_site(bob, site.id).id, timeout=120)
    assert fixed.status == DeploymentStatus.SUCCEEDED, fixed.error
    run(db, "alerts")
    assert alerts_of(db, "deployment_failed")[0].state == AlertState.RESOLVED
    assert alert_events(db).count("alert.resolved") == 3

    bobs = [*(m.text for m in smtp.received), *(r.body.decode() for r in receiver.received)]
    everything = [*bobs, *telegram.texts()]
    assert any("[RESOLVED]" in text for text in bobs)
    assert any("b*b.e*****e.net" in text for text in bobs)
    for text in everything:
        assert not IP.search(text), text
        assert "bob.example.net" not in text and "example" not in text, text
        assert "/tmp" not in text and "/etc" not in text, text
    for text in bobs:
        assert "edge-" not in text, text
