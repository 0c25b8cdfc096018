"""Self-signed and uploaded certificates served by real nginx and Caddy nodes,
deployed over real sshd, checked with real TLS handshakes and SNI; a failed ACME
issuance leaves every node serving what it served before."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import ssl
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from app.extensions import ssh
from app.models import DeploymentStatus
from app.services import certificates, deployments, nodes, settings, sites
from tests import factories, pki
from tests.caddy_node import CaddyNode
from tests.conftest import api_headers
from tests.fleet import Backends, register, register_caddy, start_nginx


@pytest.fixture()
def backend() -> Iterator[Any]:
    running = Backends()
    yield running.start("tls-backend")
    running.stop()


@pytest.fixture()
def endpoints(app, admin, sshd, tmp_path) -> Iterator[list[tuple[str, str, int]]]:
    """Two nginx nodes and one Caddy node in the default pool: (name, address, https port).
    Every node is stopped at the end even if stopping another fails."""
    started = []
    with ExitStack() as teardown:
        teardown.callback(ssh.reset, app)
        for index in range(2):
            nginx = start_nginx(f"127.0.0.{40 + index}")
            teardown.callback(nginx.remove)
            teardown.callback(nginx.stop)
            started.append(nginx)
        fleet = [register(admin, nginx, f"tls-{i}", sshd.port, sshd.client_key_text)
                 for i, nginx in enumerate(started)]
        caddy = CaddyNode(tmp_path / "caddy", listen_address="127.0.0.45")
        (tmp_path / "caddy").mkdir(exist_ok=True)
        teardown.callback(caddy.stop)
        caddy.apply([])
        spec = caddy.spec
        register_caddy(admin, caddy, "tls-caddy", sshd.port, sshd.client_key_text)
        yield ([(n.name, n.nginx.address, n.nginx.https_port) for n in fleet]
               + [("tls-caddy", caddy.host, spec.https_port)])


def handshake(address: str, port: int, server_name: str,
              context: ssl.SSLContext | None = None) -> tuple[str, int, dict[str, Any]]:
    """A TLS handshake with SNI, then one request; returns the served leaf's SHA-256
    fingerprint, the HTTP status and the JSON body."""
    if context is None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection((address, port), timeout=10)
    sock = context.wrap_socket(raw, server_hostname=server_name)
    try:
        der = sock.getpeercert(binary_form=True)
        assert der is not None
        conn = http.client.HTTPConnection(server_name, port, timeout=10)
        conn.sock = sock
        conn.request("GET", "/", headers={"Host": server_name})
        answer = conn.getresponse()
        body = answer.read()
        return hashlib.sha256(der).hexdigest(), answer.status, json.loads(body or b"{}")
    finally:
        sock.close()


def deployed(actor: Any, site_id: int) -> None:
    rollout = deployments.wait(deployments.deploy_site(actor, site_id).id, timeout=120)
    assert rollout.status == DeploymentStatus.SUCCEEDED, [
        (d.node_name, d.error) for d in rollout.deployments]


def last_rollout(actor: Any, site_id: int) -> Any:
    return deployments.list_rollouts(actor, site_id=site_id).items[0]


def test_a_self_signed_certificate_is_served_by_nginx_and_caddy_for_every_name(
        client, alice, endpoints, backend):
    site = factories.make_site(alice, "selfsigned.example.com",
                               aliases=["www.selfsigned.example.com"], ssl_mode="self_signed",
                               backends=[{"host": "127.0.0.1", "port": backend.port}])
    deployed(alice, site.id)
    body = client.get(f"/api/v1/sites/{site.id}/certificate",
                      headers=api_headers(alice)).get_json()
    trusting = ssl.create_default_context(cadata=site.certificate.chain_pem)
    for name, address, port in endpoints:
        for server_name in ("selfsigned.example.com", "www.selfsigned.example.com"):
            # Verified: the chain is the stored one and names the host asked for.
            fingerprint, status, answer = handshake(address, port, server_name, trusting)
            assert fingerprint == body["fingerprint_sha256"], name
            assert status == 200 and answer["backend"] == "tls-backend", name


def test_an_uploaded_chain_is_deployed_and_verifies_against_its_root(
        client, alice, endpoints, backend):
    root = pki.root("Upload Root")
    intermediate = pki.intermediate(root, "Upload Intermediate")
    site = factories.make_site(alice, "uploaded.example.com", aliases=["*.uploaded.example.com"],
                               backends=[{"host": "127.0.0.1", "port": backend.port}])
    leaf, key = pki.leaf(intermediate, ["uploaded.example.com", "*.uploaded.example.com"])
    answer = client.put(f"/api/v1/sites/{site.id}/certificate", headers=api_headers(alice),
                        json={"chain_pem": pki.pem(leaf) + intermediate.pem,
                              "key_pem": pki.key_pem(key)})
    assert answer.status_code == 200, answer.get_json()
    # The upload deployed the certificate to every node without another call.
    rollout = deployments.wait(last_rollout(alice, site.id).id, timeout=120)
    assert rollout.status == DeploymentStatus.SUCCEEDED, rollout.error
    # Only the root is trusted: the node must send the intermediate too.
    trusting = ssl.create_default_context(cadata=root.pem)
    for name, address, port in endpoints:
        for server_name in ("uploaded.example.com", "api.uploaded.example.com"):
            fingerprint, status, _ = handshake(address, port, server_name, trusting)
            assert fingerprint == answer.get_json()["fingerprint_sha256"], name
            assert status == 200, name
    # A name the certificate does not cover fails verification.
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(endpoints[0][1], endpoints[0][2], "deep.api.uploaded.example.com", trusting)


def test_a_failed_issuance_leaves_every_node_serving_the_previous_certificate(
        client, admin, alice, endpoints, backend):
    site = factories.make_site(alice, "keep.example.com", ssl_mode="self_signed",
                               backends=[{"host": "127.0.0.1", "port": backend.port}])
    deployed(alice, site.id)
    before = certificates.certificate_to_dict(site)["fingerprint_sha256"]
    # The CA cannot be reached: the request fails, nothing changes on the nodes.
    settings.update_acme_settings(admin, {"directory_url": "https://127.0.0.1:9/directory"})
    sites.update_site(alice, site.id, {"ssl_mode": "letsencrypt"})
    deployed(alice, site.id)
    started = client.post(f"/api/v1/sites/{site.id}/certificate", headers=api_headers(alice))
    assert started.status_code == 202
    cert = certificates.wait(site.certificate.id)
    assert cert.status.value == "failed" and cert.last_error_code == "ca_unreachable"
    assert cert.fingerprint_sha256 == before
    for name, address, port in endpoints:
        fingerprint, status, _ = handshake(address, port, "keep.example.com")
        assert fingerprint == before and status == 200, name
    assert len(deployments.list_rollouts(alice, site_id=site.id).items) == 2


def test_pem_files_on_the_nodes_hold_only_the_certificate_and_key(admin, alice, endpoints,
                                                                  backend):
    site = factories.make_site(alice, "files.example.com", ssl_mode="self_signed",
                               backends=[{"host": "127.0.0.1", "port": backend.port}])
    deployed(alice, site.id)
    node = nodes.list_nodes(admin).items[0]
    files = deployments.version_files(deployments.current_version(node.id), keys=True)
    pems = {path: text for path, text in files.items() if path.endswith(".pem")}
    assert len(pems) == 2, sorted(files)
    for text in pems.values():
        body = [line for line in text.splitlines() if not line.startswith("#")]
        assert body[0].startswith("-----BEGIN ") and body[-1].startswith("-----END ")
