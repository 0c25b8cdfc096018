"""Certificates through the service, the API and the pages: self-signed, uploaded
(checked: key matches, chain covers every name, not expired, in order), ACME
requests and renewal bookkeeping, and the ACME settings."""

from __future__ import annotations

import socket
import threading
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from sqlalchemy import func, select

from app.extensions import db as _db
from app.models import Certificate, CertificateAttempt, Rollout, Setting
from app.services import certificates, deployments, settings
from tests import factories, pki
from tests.conftest import api_headers


@pytest.fixture()
def ca() -> pki.Issuer:
    return pki.intermediate(pki.root())


def upload(client, user, site_id, chain, key):
    return client.put(f"/api/v1/sites/{site_id}/certificate", headers=api_headers(user),
                      json={"chain_pem": chain, "key_pem": key})


def test_a_self_signed_site_gets_a_certificate_for_every_name_when_saved(client, alice):
    site = factories.make_site(alice, "self.example.com", aliases=["www.self.example.com"],
                               ssl_mode="self_signed")
    body = client.get(f"/api/v1/sites/{site.id}/certificate",
                      headers=api_headers(alice)).get_json()
    assert body["status"] == "valid" and body["provider"] == "self_signed"
    assert body["domains"] == ["self.example.com", "www.self.example.com"] and body["serving"]
    served = x509.load_pem_x509_certificate(site.certificate.chain_pem.encode())
    assert served.fingerprint(hashes.SHA256()).hex() == body["fingerprint_sha256"]
    assert served.not_valid_after_utc - datetime.now(UTC) > timedelta(days=300)
    first = body["serial"]

    # A new alias is not covered: saving the site makes a new certificate.
    client.patch(f"/api/v1/sites/{site.id}", headers=api_headers(alice),
                 json={"aliases": ["www.self.example.com", "api.self.example.com"]})
    body = client.get(f"/api/v1/sites/{site.id}/certificate",
                      headers=api_headers(alice)).get_json()
    assert "api.self.example.com" in body["domains"] and body["serial"] != first
    # An unrelated change keeps it.
    client.patch(f"/api/v1/sites/{site.id}", headers=api_headers(alice), json={"hsts": True})
    again = client.get(f"/api/v1/sites/{site.id}/certificate",
                       headers=api_headers(alice)).get_json()
    assert again["serial"] == body["serial"]


def test_a_site_without_tls_has_no_certificate_and_cannot_ask_for_one(client, alice):
    site = factories.make_site(alice)
    body = client.get(f"/api/v1/sites/{site.id}/certificate",
                      headers=api_headers(alice)).get_json()
    assert body["status"] == "none" and body["serving"] is False
    refused = client.post(f"/api/v1/sites/{site.id}/certificate", headers=api_headers(alice))
    assert refused.status_code == 422
    assert "ssl_mode" in refused.get_json()["error"]["fields"]


def test_renew_now_on_a_self_signed_site_makes_a_new_one_and_deploys_it(client, alice):
    factories.make_node("edge")
    site = factories.make_site(alice, ssl_mode="self_signed")
    before = site.certificate.serial
    answer = client.post(f"/api/v1/sites/{site.id}/certificate", headers=api_headers(alice))
    assert answer.status_code == 202
    assert answer.get_json()["status"] == "valid" and answer.get_json()["serial"] != before
    rollout = _db.session.scalar(select(Rollout).where(Rollout.site_id == site.id))
    assert rollout is not None
    # No sshd answers this node: the rollout fails, and must end before the next test.
    assert deployments.wait(rollout.id).status.value == "failed"


def test_an_uploaded_chain_is_stored_reencoded_and_switches_the_site_to_custom(
        client, alice, ca):
    site = factories.make_site(alice, "up.example.com", aliases=["*.up.example.com"])
    cert, key = pki.leaf(ca, ["up.example.com", "*.up.example.com"])
    # Text around the PEM blocks never reaches a node's files.
    chain = "junk\n" + pki.pem(cert) + "server { evil; }\n" + ca.pem
    answer = upload(client, alice, site.id, chain, pki.key_pem(key))
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert body["status"] == "valid" and body["provider"] == "uploaded"
    assert body["ssl_mode"] == "custom" and body["renew_after"] is None
    assert body["issuer"] == "CN=Test Intermediate"
    stored = _db.session.get(Certificate, site.certificate.id)
    assert stored.chain_pem == pki.pem(cert) + ca.pem
    assert "evil" not in stored.chain_pem and "junk" not in stored.chain_pem
    assert "key_pem" not in body
    # The same chain is what the renderer puts on the nodes.
    config = client.get(f"/api/v1/sites/{site.id}/config", headers=api_headers(alice)).get_json()
    chain_file = next(text for path, text in config["files"].items()
                      if path.endswith("fullchain.pem"))
    assert pki.pem(cert) in chain_file
    assert not any("PRIVATE KEY-----\nMI" in text for text in config["files"].values())


@pytest.mark.parametrize("problem, field, message", [
    ("other_key", "key_pem", "do not match"),
    ("expired", "chain_pem", "expired on"),
    ("expired_intermediate", "chain_pem", "CN=Old Intermediate expired on"),
    ("not_yet_valid", "chain_pem", "is not valid before"),
    ("missing_alias", "chain_pem", "does not cover www.bad.example.com"),
    ("wildcard_too_deep", "chain_pem", "does not cover a.b.bad.example.com"),
    ("out_of_order", "chain_pem", "out of order"),
    ("encrypted_key", "key_pem", "protected by a password"),
    ("not_pem", "chain_pem", "not a PEM certificate chain"),
    ("not_a_key", "key_pem", "not a PEM private key"),
    ("empty", "chain_pem", "is required"),
])
def test_an_unusable_upload_is_refused_with_the_reason_and_changes_nothing(
        client, alice, ca, problem, field, message):
    site = factories.make_site(alice, "bad.example.com",
                               aliases=["www.bad.example.com", "a.b.bad.example.com"])
    now = datetime.now(UTC)
    names = ["bad.example.com", "www.bad.example.com", "a.b.bad.example.com"]
    cert, key = pki.leaf(ca, names)
    chain, key_text = pki.pem(cert) + ca.pem, pki.key_pem(key)
    if problem == "other_key":
        key_text = pki.key_pem(pki.leaf(ca, names)[1])
    elif problem == "expired":
        cert, key = pki.leaf(ca, names, not_before=now - timedelta(days=100),
                             not_after=now - timedelta(days=1))
        chain, key_text = pki.pem(cert) + ca.pem, pki.key_pem(key)
    elif problem == "expired_intermediate":
        old = pki.intermediate(pki.root(), "Old Intermediate",
                               not_after=now - timedelta(minutes=1))
        cert, key = pki.leaf(old, names)
        chain, key_text = pki.pem(cert) + old.pem, pki.key_pem(key)
    elif problem == "not_yet_valid":
        cert, key = pki.leaf(ca, names, not_before=now + timedelta(days=3),
                             not_after=now + timedelta(days=90))
        chain, key_text = pki.pem(cert) + ca.pem, pki.key_pem(key)
    elif problem == "missing_alias":
        cert, key = pki.leaf(ca, ["bad.example.com", "a.b.bad.example.com"])
        chain, key_text = pki.pem(cert), pki.key_pem(key)
    elif problem == "wildcard_too_deep":
        cert, key = pki.leaf(ca, ["bad.example.com", "*.bad.example.com"])
        chain, key_text = pki.pem(cert), pki.key_pem(key)
    elif problem == "out_of_order":
        chain = ca.pem + pki.pem(cert)
        key_text = pki.key_pem(key)
    elif problem == "encrypted_key":
        key_text = pki.key_pem(key, password=b"secret-pass")
    elif problem == "not_pem":
        chain = "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"
    elif problem == "not_a_key":
        key_text = "ssh-ed25519 AAAAC3Nza"
    elif problem == "empty":
        chain = ""
    answer = upload(client, alice, site.id, chain, key_text)
    assert answer.status_code == 422
    fields = answer.get_json()["error"]["fields"]
    assert message in fields[field], fields
    _db.session.expire_all()
    assert _db.session.scalar(select(func.count()).select_from(Certificate)) == 0
    assert _db.session.scalar(select(func.count()).select_from(Rollout)) == 0


def test_a_client_cannot_read_or_replace_another_clients_certificate(client, alice, bob, ca):
    site = factories.make_site(alice, "mine.example.com", ssl_mode="self_signed")
    cert, key = pki.leaf(ca, ["mine.example.com"])
    assert client.get(f"/api/v1/sites/{site.id}/certificate",
                      headers=api_headers(bob)).status_code == 404
    assert upload(client, bob, site.id, pki.pem(cert), pki.key_pem(key)).status_code == 404
    assert client.post(f"/api/v1/sites/{site.id}/certificate",
                       headers=api_headers(bob)).status_code == 404
    _db.session.expire_all()
    assert _db.session.get(Certificate, site.certificate.id).provider.value == "self_signed"


def test_an_acme_request_that_cannot_reach_the_ca_is_recorded_and_backs_off(
        app, client, admin, alice):
    """A real connection to a closed loopback port: the CA is unreachable."""
    settings.update_acme_settings(admin, {"directory_url": "https://127.0.0.1:9/directory"})
    factories.make_node("edge")  # HTTP-01 needs a node to serve the token
    site = factories.make_site(alice, "acme.example.com", ssl_mode="letsencrypt")
    answer = client.post(f"/api/v1/sites/{site.id}/certificate", headers=api_headers(alice))
    assert answer.status_code == 202 and answer.get_json()["status"] == "pending"
    cert = certificates.wait(site.certificate.id)
    body = client.get(f"/api/v1/sites/{site.id}/certificate",
                      headers=api_headers(alice)).get_json()
    assert body["status"] == "failed" and body["last_error_code"] == "ca_unreachable"
    assert "127.0.0.1:9" in body["last_error"] and body["serving"] is False
    assert body["next_attempt_at"] is not None and body["last_attempt_at"] is not None
    attempts = list(_db.session.scalars(select(CertificateAttempt)))
    assert [(a.kind, a.ok) for a in attempts] == [("issue", False)]
    assert cert.failures == 1

    # The scheduler's job respects the backoff, then tries again and backs off longer.
    assert certificates.renew_due() == "0 certificate(s) obtained, 0 failed"
    later = certificates.aware(cert.next_attempt_at) + timedelta(seconds=1)
    assert certificates.renew_due(now=later) == "0 certificate(s) obtained, 1 failed"
    _db.session.expire_all()
    cert = _db.session.get(Certificate, cert.id)
    assert cert.failures == 2
    # The second failure waits longer than the first (5 minutes, then 15).
    assert certificates.aware(cert.next_attempt_at) - datetime.now(UTC) > timedelta(minutes=10)
    assert _db.session.scalar(select(func.count()).select_from(CertificateAttempt)) == 2


def test_the_renewal_job_renews_self_signed_certificates_near_expiry(app, alice):
    fresh = factories.make_site(alice, "fresh.example.com", ssl_mode="self_signed")
    old = factories.make_site(alice, "old.example.com", ssl_mode="self_signed")
    old_serial, fresh_serial = old.certificate.serial, fresh.certificate.serial
    old.certificate.not_after = datetime.now(UTC) + timedelta(days=29)
    _db.session.commit()
    assert certificates.renew_due() == "1 certificate(s) obtained, 0 failed"
    _db.session.expire_all()
    assert _db.session.get(Certificate, old.certificate.id).serial != old_serial
    assert _db.session.get(Certificate, fresh.certificate.id).serial == fresh_serial
    # A time without its offset (as SQLite hands them back) is read as UTC.
    naive = datetime.now(UTC).replace(tzinfo=None)
    assert certificates.renew_due(now=naive) == "0 certificate(s) obtained, 0 failed"


class SilentCA:
    """A loopback server that accepts the first connection and never answers it (an
    issuance that hangs there) and closes every later one at once."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if self.held:
                conn.close()
            else:
                self.held.append(conn)

    def close(self) -> None:
        self.listener.close()
        for conn in self.held:
            conn.close()
        self.thread.join(5)


def test_two_issuances_of_one_certificate_never_run_at_once(client, admin, alice):
    ca = SilentCA()
    try:
        settings.update_acme_settings(
            admin, {"directory_url": f"https://127.0.0.1:{ca.port}/directory"})
        factories.make_node("edge")
        site = factories.make_site(alice, "once.example.com", ssl_mode="letsencrypt")
        url = f"/api/v1/sites/{site.id}/certificate"
        first = client.post(url, headers=api_headers(alice))
        assert first.status_code == 202 and first.get_json()["status"] == "pending"
        second = client.post(url, headers=api_headers(alice))
        assert second.status_code == 409
        assert "being issued already" in second.get_json()["error"]["message"]
        # The renewal job does not start a second attempt either...
        soon = datetime.now(UTC) + timedelta(minutes=1)
        assert certificates.renew_due(now=soon) == "0 certificate(s) obtained, 0 failed"
        # ...until the running one is so old that its process must have died.
        stale = datetime.now(UTC) + timedelta(minutes=16)
        assert certificates.renew_due(now=stale) == "0 certificate(s) obtained, 1 failed"
    finally:
        ca.close()
    cert = certificates.wait(site.certificate.id)
    assert cert.status.value == "failed" and cert.last_error_code == "ca_unreachable"
    assert _db.session.scalar(select(func.count()).select_from(CertificateAttempt)) == 2


def test_a_wildcard_name_on_an_acme_site_needs_dns01(client, alice):
    data = {"domain": "wild.example.com", "aliases": ["*.wild.example.com"],
            "backends": [{"host": "127.0.0.1", "port": 80}], "ssl_mode": "letsencrypt"}
    refused = client.post("/api/v1/sites", headers=api_headers(alice), json=data)
    assert refused.status_code == 422
    assert "dns-01" in refused.get_json()["error"]["fields"]["acme_challenge"]
    created = client.post("/api/v1/sites", headers=api_headers(alice),
                          json={**data, "acme_challenge": "dns-01"})
    assert created.status_code == 201, created.get_json()
    back = client.patch(f"/api/v1/sites/{created.get_json()['id']}",
                        headers=api_headers(alice), json={"acme_challenge": "http-01"})
    assert back.status_code == 422


def test_acme_settings_come_from_the_environment_until_an_admin_changes_them(
        app, client, admin, alice, ca):
    headers = api_headers(admin)
    body = client.get("/api/v1/settings/acme", headers=headers).get_json()
    assert body["directory_url"] == app.config["ACME_DIRECTORY_URL"]
    assert body["overridden"] == []
    changed = client.put("/api/v1/settings/acme", headers=headers, json={
        "directory_url": "https://127.0.0.1:14000/dir", "email": "ops@example.com",
        "ca_bundle_pem": "comment\n" + ca.pem})
    assert changed.status_code == 200, changed.get_json()
    body = changed.get_json()
    assert body["overridden"] == ["acme_ca_bundle_pem", "acme_directory_url", "acme_email"]
    assert body["ca_bundle_pem"] == ca.pem
    effective = settings.acme_settings()
    assert effective.directory_url == "https://127.0.0.1:14000/dir"
    with open(effective.ca_bundle) as bundle:
        assert bundle.read() == ca.pem
    # An empty value goes back to the environment's.
    client.put("/api/v1/settings/acme", headers=headers, json={"directory_url": ""})
    assert settings.acme_settings().directory_url == app.config["ACME_DIRECTORY_URL"]
    assert client.get("/api/v1/settings/acme",
                      headers=api_headers(alice)).status_code == 403


@pytest.mark.parametrize("field, value, message", [
    ("directory_url", "http://ca.example/dir", "https://"),
    ("directory_url", "https://ca.example/dir\nX-Evil: 1", "https://"),
    ("directory_url", "javascript:alert(1)", "https://"),
    ("email", "not-an-email", "email"),
    ("ca_bundle_pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----",
     "not a PEM certificate bundle"),
    ("surprise", "x", "Unknown field"),
])
def test_bad_acme_settings_are_refused_field_by_field(client, admin, field, value, message):
    answer = client.put("/api/v1/settings/acme", headers=api_headers(admin),
                        json={field: value})
    assert answer.status_code == 422
    assert message in answer.get_json()["error"]["fields"][field]
    assert _db.session.scalar(select(func.count()).select_from(Setting)) == 0


def test_the_site_page_shows_the_certificate_and_refuses_a_bad_upload_under_its_field(
        alice_client, alice, ca):
    site = factories.make_site(alice, "page.example.com", ssl_mode="self_signed")
    page = alice_client.get(f"/client/sites/{site.id}").get_data(as_text=True)
    assert 'data-cert-status="valid"' in page and "Renew now" in page
    assert "page.example.com" in page
    cert, _ = pki.leaf(ca, ["page.example.com"])
    other_key = pki.leaf(ca, ["page.example.com"])[1]
    refused = alice_client.post(f"/client/sites/{site.id}/certificate", data={
        "chain_pem": pki.pem(cert), "key_pem": pki.key_pem(other_key)})
    assert refused.status_code == 422
    assert "do not match" in refused.get_data(as_text=True)
    cert, key = pki.leaf(ca, ["page.example.com"])
    accepted = alice_client.post(f"/client/sites/{site.id}/certificate", data={
        "chain_pem": pki.pem(cert), "key_pem": pki.key_pem(key)})
    assert accepted.status_code == 302
    page = alice_client.get(f"/client/sites/{site.id}").get_data(as_text=True)
    assert "(uploaded)" in page and "CN=Test Intermediate" in page
    renewed = alice_client.post(f"/client/sites/{site.id}/certificate/issue",
                                follow_redirects=True)
    assert "upload a new chain and key" in renewed.get_data(as_text=True)


def test_the_admin_settings_page_saves_and_shows_field_errors(admin_client):
    page = admin_client.get("/admin/settings")
    assert page.status_code == 200 and "ACME directory URL" in page.get_data(as_text=True)
    refused = admin_client.post("/admin/settings", data={"directory_url": "ftp://x",
                                                         "email": "", "ca_bundle_pem": ""})
    assert refused.status_code == 422 and "https://" in refused.get_data(as_text=True)
    saved = admin_client.post("/admin/settings", data={
        "directory_url": "https://127.0.0.1:14000/dir", "email": "ops@example.com",
        "ca_bundle_pem": ""}, follow_redirects=True)
    assert "Settings saved." in saved.get_data(as_text=True)
    assert settings.acme_settings().email == "ops@example.com"


def test_the_cli_issues_now_and_runs_the_renewal_job(app, admin, alice):
    site = factories.make_site(alice, "cli.example.com", ssl_mode="self_signed")
    serial = site.certificate.serial
    runner = app.test_cli_runner()
    issued = runner.invoke(args=["certs", "issue", "cli.example.com"])
    assert issued.exit_code == 0, issued.output
    assert issued.output.startswith("cli.example.com: valid, valid until ")
    _db.session.expire_all()
    assert _db.session.get(Certificate, site.certificate.id).serial != serial
    assert runner.invoke(args=["certs", "renew"]).output.strip() == (
        "0 certificate(s) obtained, 0 failed")
    missing = runner.invoke(args=["certs", "issue", "nowhere.example.com"])
    assert missing.exit_code != 0 and "no site 'nowhere.example.com'" in missing.output


def test_site_lists_show_until_when_a_certificate_is_served_and_a_failure(
        app, admin_client, alice_client, alice):
    served = factories.make_site(alice, "listed.example.com", ssl_mode="self_signed")
    failing = factories.make_site(alice, "failing.example.com", ssl_mode="letsencrypt")
    _db.session.add(Certificate(site=failing, provider="acme", domains=[], chain_pem="",
                                failures=1, status="failed", last_error="the CA refused",
                                last_error_code="ca_refused"))
    _db.session.commit()
    until = certificates.aware(served.certificate.not_after).strftime("%Y-%m-%d %H:%M UTC")
    for page in (alice_client.get("/client/").get_data(as_text=True),
                 admin_client.get("/admin/sites").get_data(as_text=True)):
        assert f">{until}</time>" in page
        assert page.count("certificate failed") == 1 and 'title="the CA refused"' in page


def test_deleting_a_site_deletes_its_certificate_and_attempts(client, alice):
    site = factories.make_site(alice, "gone.example.com", ssl_mode="self_signed")
    _db.session.add(CertificateAttempt(certificate_id=site.certificate.id, kind="renew"))
    _db.session.commit()
    assert client.delete(f"/api/v1/sites/{site.id}",
                         headers=api_headers(alice)).status_code == 204
    _db.session.expire_all()
    assert _db.session.scalar(select(func.count()).select_from(Certificate)) == 0
    assert _db.session.scalar(select(func.count()).select_from(CertificateAttempt)) == 0
