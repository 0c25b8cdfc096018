"""One tenant's bad site never holds back another's: three real nginx nodes in one
pool, two clients.  A version the nodes refuse is set aside (its previous version,
or nothing, stays live), a dead backend is a warning for its owner, and the other
client's change goes out on every node."""

from __future__ import annotations

import time
from typing import Any

import pytest

from app.errors import ValidationError
from app.models import AuditLog, DeploymentStatus, Rollout, Site, SiteStatus
from app.services import deployments, sites
from tests import factories
from tests.conftest import api_headers
from tests.fleet import FleetNode
from tests.processes import free_port

# One nginx node per address, in the default pool (the package's ``fleet`` fixture).
ADDRESSES = ("127.0.0.40", "127.0.0.41", "127.0.0.42")


@pytest.fixture()
def shop(alice, fleet, backends) -> Site:
    """Alice's site, live on every node."""
    backend = backends.start("shop-v1")
    site = factories.make_site(alice, "shop.example.com",
                               backends=[{"host": "127.0.0.1", "port": backend.port}],
                               headers={"X-Shop": "v1"})
    assert deploy(alice, site).status == DeploymentStatus.SUCCEEDED
    return site


def deploy(actor: Any, site: Site) -> Rollout:
    return deployments.wait(deployments.deploy_site(actor, site.id).id, timeout=120)


def served(fleet: list[FleetNode], host: str, header: str = "x-shop") -> set[str | None]:
    """What every node answers for ``host`` once the reload settled: the header."""
    seen = set()
    for node in fleet:
        deadline = time.monotonic() + 10
        while True:
            answer = node.get(host)
            if answer.status < 500 or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        seen.add(answer.headers.get(header) if answer.status == 200 else f"HTTP {answer.status}")
    return seen


def change_shop(alice: Any, shop: Site, version: str) -> Rollout:
    sites.update_site(alice, shop.id, {"headers": {"X-Shop": version}})
    return deploy(alice, shop)


def assert_owner_safe(text: str, fleet: list[FleetNode]) -> None:
    """No node name, address or path in what a client reads."""
    for node in fleet:
        assert node.name not in text
        assert node.nginx.address not in text
        assert str(node.nginx.config_dir) not in text
    assert "/tmp" not in text and "/etc" not in text


def test_a_neighbours_unresolvable_backend_is_set_aside_and_the_change_goes_out(
        app, alice, bob, fleet, shop, backends):
    # Bob saves a site the nodes cannot load (nginx resolves upstream names at load
    # time; nothing resolves in this namespace) and has not deployed it yet.
    bad = factories.make_site(bob, "bob.example.net",
                              backends=[{"host": "bob-internal.invalid", "port": 80}])
    rollout = change_shop(alice, shop, "v2")
    assert rollout.status == DeploymentStatus.SUCCEEDED, rollout.error
    assert {d.status for d in rollout.deployments} == {DeploymentStatus.SUCCEEDED}
    assert served(fleet, "shop.example.com") == {"v2"}
    # Bob's site stayed out (it never had a version the nodes took), and says why.
    for node in fleet:
        assert not any("bob.example.net" in path.read_text()
                       for path in node.nginx.config_dir.rglob("*.conf"))
    bad = sites.get_site(bob, bad.id)
    assert bad.status == SiteStatus.FAILED and bad.deployed_nodes == 0
    assert "refused this version" in bad.last_deploy_error
    assert "bob-internal.invalid" in bad.last_deploy_error
    assert_owner_safe(bad.last_deploy_error, fleet)
    as_bob = app.test_client().get(f"/api/v1/sites/{bad.id}",
                                   headers=api_headers(bob)).get_json()
    assert "bob-internal.invalid" in as_bob["refused_reason"]
    assert (as_bob["deployed_nodes"], as_bob["target_nodes"]) == (0, 3)
    # Alice's pages name nothing of Bob's.
    as_alice = app.test_client().get(f"/api/v1/deployments/{rollout.id}",
                                     headers=api_headers(alice)).get_json()
    assert "bob" not in str(as_alice)
    # Administrators read what the node printed in the audit log.
    entry = AuditLog.query.filter_by(action="site.set_aside", object_id=str(bad.id)).one()
    assert "host not found" in entry.details["node_output"]

    # Bob deploys it himself: his rollout fails with his reason, Alice's site is untouched.
    own = deploy(bob, bad)
    assert own.status == DeploymentStatus.FAILED
    assert "bob-internal.invalid" in own.error and "refused this version" in own.error
    assert_owner_safe(own.error, fleet)
    assert served(fleet, "shop.example.com") == {"v2"}
    as_bob = app.test_client().get(f"/api/v1/deployments/{own.id}",
                                   headers=api_headers(bob)).get_json()
    assert as_bob["status"] == "failed" and as_bob["deployed"] == 0
    assert as_bob["message"].startswith("A proxy node refused this version of the site: host "
                                        'not found in upstream "bob-internal.invalid:80"')
    assert {node["message"] for node in as_bob["nodes"]} == {as_bob["message"]}
    assert_owner_safe(str(as_bob), fleet)

    # Alice's next change carries Bob's refused version aside from the start.
    assert change_shop(alice, shop, "v3").status == DeploymentStatus.SUCCEEDED
    assert served(fleet, "shop.example.com") == {"v3"}

    # Bob corrects his site: it goes live everywhere and is no longer refused.
    backend = backends.start("bob")
    sites.update_site(bob, bad.id, {"backends": [{"host": "127.0.0.1", "port": backend.port}]})
    assert deploy(bob, bad).status == DeploymentStatus.SUCCEEDED
    fixed = sites.get_site(bob, bad.id)
    assert fixed.status == SiteStatus.DEPLOYED and fixed.last_deploy_error == ""
    assert fixed.accepted_version == fixed.config_version
    assert {node.get("bob.example.net").json()["backend"] for node in fleet} == {"bob"}


def test_a_refused_change_keeps_the_previous_version_live(alice, bob, fleet, shop, backends):
    backend = backends.start("bob-v1")
    bobs = factories.make_site(bob, "bob.example.net",
                               backends=[{"host": "127.0.0.1", "port": backend.port}])
    assert deploy(bob, bobs).status == DeploymentStatus.SUCCEEDED
    sites.update_site(bob, bobs.id, {"backends": [{"host": "gone.invalid", "port": 80}]})
    assert change_shop(alice, shop, "v2").status == DeploymentStatus.SUCCEEDED
    assert served(fleet, "shop.example.com") == {"v2"}
    # Bob's previous version is what the nodes serve.
    assert {node.get("bob.example.net").json()["backend"] for node in fleet} == {"bob-v1"}
    refused = sites.get_site(bob, bobs.id)
    assert refused.status == SiteStatus.FAILED
    assert "previous version stays live" in refused.last_deploy_error


def test_a_dead_backend_is_its_owners_warning_not_a_rollback(alice, bob, fleet, shop):
    dead = factories.make_site(bob, "dead.example.net",
                               backends=[{"host": "127.0.0.1", "port": free_port()}])
    rollout = deploy(bob, dead)
    assert rollout.status == DeploymentStatus.SUCCEEDED, rollout.error
    dead = sites.get_site(bob, dead.id)
    assert dead.status == SiteStatus.DEPLOYED
    assert "HTTP 502" in dead.deploy_warning and "backend" in dead.deploy_warning
    assert change_shop(alice, shop, "v2").status == DeploymentStatus.SUCCEEDED
    assert served(fleet, "shop.example.com") == {"v2"}
    assert sites.get_site(alice, shop.id).deploy_warning == ""


def test_reserved_and_overlong_names_cannot_hold_back_a_neighbour(alice, bob, fleet, shop,
                                                                 backends):
    for reserved in ("rpcc-probe.invalid", "probe.localhost", "x.local"):
        with pytest.raises(ValidationError) as refused:
            factories.make_site(bob, reserved)
        assert "domain" in refused.value.fields
    backend = backends.start("long")
    labels = ["a" * 63, "b" * 63, "c" * 63, "d" * 57]
    long_domain = ".".join(labels) + ".net"
    assert len(long_domain) == 253
    longest = factories.make_site(bob, long_domain,
                                  backends=[{"host": "127.0.0.1", "port": backend.port}])
    assert deploy(bob, longest).status == DeploymentStatus.SUCCEEDED
    assert {node.get(long_domain).json()["backend"] for node in fleet} == {"long"}
    assert change_shop(alice, shop, "v2").status == DeploymentStatus.SUCCEEDED
    assert served(fleet, "shop.example.com") == {"v2"}



def test_when_the_proxy_names_no_file_a_bisection_finds_the_site(
        alice, bob, fleet, shop, backends, monkeypatch):
    """Several neighbours changed at once, one of them broken, and the node's complaint
    names no place (as some proxies print it): test-only runs over halves of the
    changed sites find the broken one, and only it is set aside."""
    from app.services import set_aside

    monkeypatch.setattr(set_aside, "blamed_sites", lambda *args, **kwargs: set())
    backend = backends.start("fine")
    fine = [factories.make_site(bob, f"fine{i}.example.net",
                                backends=[{"host": "127.0.0.1", "port": backend.port}])
            for i in range(4)]
    broken = factories.make_site(bob, "broken.example.net",
                                 backends=[{"host": "broken-backend.invalid", "port": 80}])
    rollout = change_shop(alice, shop, "v2")
    assert rollout.status == DeploymentStatus.SUCCEEDED, rollout.error
    assert served(fleet, "shop.example.com") == {"v2"}
    for site in fine:
        assert {node.get(site.domain).json()["backend"] for node in fleet} == {"fine"}
        assert sites.get_site(bob, site.id).status == SiteStatus.DEPLOYED
    refused = sites.get_site(bob, broken.id)
    assert refused.status == SiteStatus.FAILED
    assert "broken-backend.invalid" in refused.last_deploy_error


def test_when_the_bisection_runs_out_of_test_runs_the_rollouts_own_change_still_goes_out(
        alice, bob, fleet, shop, backends, monkeypatch):
    from app.services import set_aside

    monkeypatch.setattr(set_aside, "blamed_sites", lambda *args, **kwargs: {})
    monkeypatch.setattr(set_aside, "MAX_BISECT_TESTS", 2)
    backend = backends.start("fine")
    fine = factories.make_site(bob, "fine.example.net",
                               backends=[{"host": "127.0.0.1", "port": backend.port}])
    broken = factories.make_site(bob, "broken.example.net",
                                 backends=[{"host": "broken-backend.invalid", "port": 80}])
    assert change_shop(alice, shop, "v2").status == DeploymentStatus.SUCCEEDED
    assert served(fleet, "shop.example.com") == {"v2"}
    for site in (fine, broken):
        waiting = sites.get_site(bob, site.id)
        assert waiting.status == SiteStatus.FAILED
        assert "did not say which one" in waiting.last_deploy_error
        assert "broken-backend" not in waiting.last_deploy_error
    # Deployed on its own, the good site goes out.
    assert deploy(bob, fine).status == DeploymentStatus.SUCCEEDED
    assert {node.get("fine.example.net").json()["backend"] for node in fleet} == {"fine"}
