"""Deployment pages, API answers and refusals that need no reachable node (the
deployments themselves run against real nodes in tests/integration)."""

from __future__ import annotations

import json

from app.extensions import db as _db
from app.models import DeploymentStatus
from app.services import deployments
from tests import factories
from tests.conftest import api_headers


def test_deploying_a_pool_without_nodes_is_refused_with_a_reason(app, alice, alice_client):
    site = factories.make_site(alice, "lonely.example.com")
    response = app.test_client().post(f"/api/v1/sites/{site.id}/deploy",
                                      headers=api_headers(alice))
    assert response.status_code == 409
    assert "no enabled node" in response.get_json()["error"]["message"]
    page = alice_client.post(f"/client/sites/{site.id}/deploy", follow_redirects=True)
    assert "no enabled node" in page.get_data(as_text=True)


def test_a_canary_must_be_a_node_of_the_pool(app, admin, alice):
    factories.make_node("edge-a")
    factories.make_node("elsewhere", pool="default", enabled=False)
    site = factories.make_site(alice, "canary.example.com")
    response = app.test_client().post(f"/api/v1/sites/{site.id}/deploy",
                                      headers=api_headers(alice),
                                      json={"canary_node": "elsewhere"})
    assert response.status_code == 422
    assert "canary_node" in response.get_json()["error"]["fields"]
    unknown = app.test_client().post(f"/api/v1/sites/{site.id}/deploy",
                                     headers=api_headers(alice), json={"canary": "edge-a"})
    assert unknown.status_code == 422


def test_a_client_follows_their_deployment_and_not_anothers(app, alice, bob, alice_client):
    site = factories.make_site(alice, "mine.example.com")
    rollout = factories.make_rollout(site)
    answer = app.test_client().get(f"/api/v1/deployments/{rollout.id}",
                                   headers=api_headers(alice))
    assert answer.status_code == 200
    assert answer.get_json() == {
        "id": rollout.id, "kind": "deploy", "site_id": site.id, "status": "succeeded",
        "error": "", "message": "", "deployed": 0,
        "created_at": answer.get_json()["created_at"], "started_at": None,
        "finished_at": None, "nodes": []}
    assert app.test_client().get(f"/api/v1/deployments/{rollout.id}",
                                 headers=api_headers(bob)).status_code == 404
    page = alice_client.get(f"/client/deployments/{rollout.id}").get_data(as_text=True)
    assert f"Deployment {rollout.id}" in page and "mine.example.com" in page
    listed = app.test_client().get("/api/v1/deployments", headers=api_headers(bob)).get_json()
    assert listed["items"] == []


def test_progress_streams_as_server_sent_events_until_finished(alice, alice_client):
    rollout = factories.make_rollout(factories.make_site(alice, "sse.example.com"))
    response = alice_client.get(f"/client/deployments/{rollout.id}/events")
    assert response.mimetype == "text/event-stream"
    events = [line for line in response.get_data(as_text=True).splitlines()
              if line.startswith("data: ")]
    assert len(events) == 1  # finished: one state, then the stream ends
    state = json.loads(events[0].removeprefix("data: "))
    assert state["status"] == "succeeded" and state["finished"] is True


def test_site_page_shows_nodes_deployed_and_the_deploy_button(alice, alice_client):
    site = factories.make_site(alice, "count.example.com")
    factories.make_rollout(site)
    text = alice_client.get(f"/client/sites/{site.id}").get_data(as_text=True)
    assert "deployed on 0 of 0 nodes" in text
    assert f"/client/sites/{site.id}/deploy" in text and "Deploy now" in text


def test_admin_sees_versions_and_their_diff_with_private_keys_withheld(app, admin,
                                                                       admin_client):
    node = factories.make_node("edge-v")
    old = factories.make_version(node, {"rpcc.conf": "a\n", "sites/x/privkey.pem":
                                        "-----BEGIN PRIVATE KEY-----\nsecret\n"})
    new = factories.make_version(node, {"rpcc.conf": "b\n"})
    page = admin_client.get(f"/admin/nodes/{node.id}").get_data(as_text=True)
    assert "Config versions" in page and f"v{new.version}" in page
    assert "Roll back to" not in page  # neither version ever went live
    diff = admin_client.get(f"/admin/nodes/{node.id}/diff?from={old.id}&to={new.id}")
    text = diff.get_data(as_text=True)
    assert "-a" in text and "+b" in text and "secret" not in text
    files = app.test_client().get(f"/api/v1/nodes/{node.id}/versions/{old.id}",
                                  headers=api_headers(admin)).get_json()["files"]
    assert files["sites/x/privkey.pem"] == deployments.MASKED_KEY
    other = factories.make_node("edge-w")
    assert app.test_client().get(f"/api/v1/nodes/{other.id}/versions/{old.id}",
                                 headers=api_headers(admin)).status_code == 404


def test_the_deployment_list_filters_by_status_and_site(app, admin, alice, admin_client):
    ok = factories.make_rollout(factories.make_site(alice, "fine.example.com"))
    bad = factories.make_rollout(factories.make_site(alice, "broken.example.com"))
    bad.status = DeploymentStatus.FAILED
    _db.session.commit()
    failed = admin_client.get("/admin/deployments?status=failed").get_data(as_text=True)
    assert f"/admin/deployments/{bad.id}" in failed and f"/admin/deployments/{ok.id}" not in failed
    fine = admin_client.get("/admin/deployments?q=fine").get_data(as_text=True)
    assert f"/admin/deployments/{ok.id}" in fine and f"/admin/deployments/{bad.id}" not in fine
    assert admin_client.get("/admin/deployments?status=bogus").status_code == 422


def test_rollback_is_offered_for_an_earlier_version_that_went_live(admin, admin_client):
    from datetime import UTC, datetime, timedelta

    from app.models import NodeDeployment, Rollout, RolloutKind

    node = factories.make_node("edge-r")
    versions = [factories.make_version(node, {"rpcc.conf": f"{n}\n"}) for n in (1, 2, 3)]
    rollout = Rollout(kind=RolloutKind.DEPLOY, pool_id=node.pool_id,
                      status=DeploymentStatus.SUCCEEDED)
    _db.session.add(rollout)
    _db.session.flush()
    started = datetime(2026, 12, 1, tzinfo=UTC)
    for offset, (version, status) in enumerate(zip(versions, (
            DeploymentStatus.SUCCEEDED, DeploymentStatus.ROLLED_BACK,
            DeploymentStatus.SUCCEEDED), strict=True)):
        _db.session.add(NodeDeployment(rollout_id=rollout.id, node_id=node.id,
                                   node_name=node.name, config_version_id=version.id,
                                   status=status, started_at=started + timedelta(minutes=offset),
                                   finished_at=started + timedelta(minutes=offset, seconds=5)))
    _db.session.commit()
    page = admin_client.get(f"/admin/nodes/{node.id}").get_data(as_text=True)
    assert "Roll back to v1" in page  # went live, not live now
    assert "Roll back to v2" not in page  # never went live
    assert "Roll back to v3" not in page  # live now
    assert "From v3 to v1" in page  # the confirmation says what happens
