"""DNS providers: validation, write-only secrets, admin-only access, and the choice of
provider for a domain."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, text

from app.acme.dns import DnsChallengeError
from app.acme.dns_rfc2136 import Rfc2136Provider
from app.errors import Conflict, Forbidden, NotFound, ValidationError
from app.extensions import db as _db
from app.models import (
    AcmeChallenge,
    AuditLog,
    Certificate,
    CertificateProvider,
    DnsProvider,
    User,
)
from app.services import dns_providers
from tests import factories
from tests.conftest import api_headers

SECRET = base64.b64encode(b"k" * 32).decode()


def provider_data(**extra: Any) -> dict[str, Any]:
    data = {"name": "main", "zone": "example.com", "server": "127.0.0.1", "port": 5300,
            "tsig_name": "acme-key", "tsig_algorithm": "hmac-sha256", "tsig_secret": SECRET}
    data.update(extra)
    return data


def make(admin: User, **extra: Any) -> DnsProvider:
    return dns_providers.create_provider(admin, provider_data(**extra))


# ------------------------------------------------------------------ provider_for_domain


def test_provider_for_domain_picks_the_longest_matching_zone(admin: User) -> None:
    make(admin, name="outer", zone="example.com", server="127.0.0.1")
    make(admin, name="inner", zone="dev.example.com", server="127.0.0.2")

    inner = dns_providers.provider_for_domain("app.dev.example.com")
    outer = dns_providers.provider_for_domain("www.example.com")

    assert isinstance(inner, Rfc2136Provider) and inner.server == "127.0.0.2"
    assert isinstance(outer, Rfc2136Provider) and outer.server == "127.0.0.1"
    assert dns_providers.provider_for_domain("dev.example.com").server == "127.0.0.2"
    assert dns_providers.provider_for_domain("*.dev.example.com").server == "127.0.0.2"
    assert dns_providers.provider_for_domain("_acme-challenge.x.dev.example.com.").server \
        == "127.0.0.2"
    assert dns_providers.provider_for_domain("EXAMPLE.com").server == "127.0.0.1"


@pytest.mark.parametrize("domain", ["evil-example.com", "www.evil-example.com",
                                    "example.com.evil.net", "notexample.com", "com"])
def test_provider_for_domain_never_matches_across_a_label_boundary(admin: User,
                                                                   domain: str) -> None:
    make(admin, zone="example.com")

    with pytest.raises(DnsChallengeError) as err:
        dns_providers.provider_for_domain(domain)

    assert "no DNS provider serves" in str(err.value)
    assert "an administrator must add one for its zone" in str(err.value)


def test_provider_for_domain_without_providers_names_the_domain(db: Any) -> None:
    with pytest.raises(DnsChallengeError, match="no DNS provider serves shop.example.org"):
        dns_providers.provider_for_domain("shop.example.org")


# ------------------------------------------------------------------------- service


def test_create_stores_the_secret_encrypted_and_audits_without_it(admin: User) -> None:
    row = make(admin, zone="Example.COM.", tsig_name="ACME-Key.")

    assert (row.zone, row.tsig_name, row.kind) == ("example.com", "acme-key", "rfc2136")
    stored = _db.session.execute(
        text("SELECT tsig_secret FROM dns_providers WHERE id = :id"), {"id": row.id}).scalar()
    assert SECRET not in stored
    entry = _db.session.scalar(select(AuditLog).where(AuditLog.action == "dns_provider.create"))
    assert entry is not None and SECRET not in str(entry.details)
    assert entry.details["tsig_secret"] == "changed"


def test_update_keeps_the_secret_when_left_empty(admin: User) -> None:
    row = make(admin)

    dns_providers.update_provider(admin, row.id, {"server": "ns1.example.net",
                                                  "tsig_secret": ""})

    assert row.server == "ns1.example.net" and row.tsig_secret == SECRET


@pytest.mark.parametrize("field,value", [
    ("zone", "example.com\nexample.org"),
    ("zone", "exa\"mple.com"),
    ("zone", "example.com; rm -rf /"),
    ("zone", "com"),
    ("server", "127.0.0.1; rm -rf /"),
    ("server", "ns1 .example.com"),
    ("server", "::1%eth0"),
    ("port", 0),
    ("port", "53;"),
    ("tsig_name", "acme key"),
    ("tsig_name", "acme\nkey"),
    ("tsig_name", "key\"."),
    ("tsig_algorithm", "hmac-md5"),
    ("tsig_algorithm", "hmac-sha1"),
    ("tsig_secret", "not base64!"),
    ("tsig_secret", SECRET + "\n"),
    ("tsig_secret", base64.b64encode(b"short").decode()),
    ("kind", "route53"),
    ("name", "Main Provider"),
])
def test_hostile_or_invalid_values_are_refused_per_field(admin: User, field: str,
                                                         value: Any) -> None:
    with pytest.raises(ValidationError) as err:
        make(admin, **{field: value})

    assert field in err.value.fields
    assert _db.session.scalar(select(DnsProvider)) is None


def test_secret_is_required_on_create(admin: User) -> None:
    data = provider_data()
    del data["tsig_secret"]

    with pytest.raises(ValidationError) as err:
        dns_providers.create_provider(admin, data)

    assert "tsig_secret" in err.value.fields


def test_name_and_zone_are_unique(admin: User) -> None:
    make(admin)

    with pytest.raises(ValidationError) as err:
        make(admin)

    assert set(err.value.fields) == {"name", "zone"}


def test_unknown_fields_are_refused(admin: User) -> None:
    with pytest.raises(ValidationError) as err:
        make(admin, owner="x")

    assert err.value.fields == {"owner": "unknown field"}


def test_clients_cannot_manage_or_read_providers(admin: User, alice: User) -> None:
    row = make(admin)

    with pytest.raises(Forbidden):
        dns_providers.create_provider(alice, provider_data(name="other", zone="other.org"))
    with pytest.raises(Forbidden):
        dns_providers.update_provider(alice, row.id, {"server": "127.0.0.9"})
    with pytest.raises(Forbidden):
        dns_providers.delete_provider(alice, row.id)
    with pytest.raises(Forbidden):
        dns_providers.list_providers(alice)
    with pytest.raises(Forbidden):
        dns_providers.get_provider(alice, row.id)
    with pytest.raises(Forbidden):
        dns_providers.check_provider(alice, row.id)


def test_delete_removes_the_provider_and_its_zone(admin: User) -> None:
    row = make(admin)

    dns_providers.delete_provider(admin, row.id)

    with pytest.raises(NotFound):
        dns_providers.get_provider(admin, row.id)
    with pytest.raises(DnsChallengeError):
        dns_providers.provider_for_domain("www.example.com")


def renewing_with_dns01(owner: User, domain: str, aliases: list[str]) -> Certificate:
    """A site whose certificate was obtained (and so renews) with DNS-01."""
    site = factories.make_site(owner, domain, aliases=aliases)
    certificate = Certificate(site_id=site.id, provider=CertificateProvider.ACME,
                              challenge=AcmeChallenge.DNS01, domains=[domain, *aliases])
    _db.session.add(certificate)
    _db.session.commit()
    return certificate


def test_a_zone_that_dns01_certificates_need_cannot_be_deleted(admin: User,
                                                              alice: User) -> None:
    row = make(admin)
    renewing_with_dns01(alice, "shop.example.org", ["*.shop.example.com"])

    with pytest.raises(Conflict) as err:
        dns_providers.delete_provider(admin, row.id)

    assert "certificates of shop.example.org renew with DNS-01 through zone example.com" \
        in err.value.message
    assert dns_providers.get_provider(admin, row.id) is row


def test_a_zone_may_go_when_another_provider_serves_its_certificates(admin: User,
                                                                    alice: User) -> None:
    inner = make(admin, name="inner", zone="shop.example.com")
    make(admin, name="outer", zone="example.com")
    renewing_with_dns01(alice, "shop.example.com", [])

    dns_providers.delete_provider(admin, inner.id)

    assert dns_providers.provider_for_domain("shop.example.com").zone.to_text() \
        == "example.com."


def test_changing_the_zone_away_from_dns01_certificates_is_refused(admin: User,
                                                                   alice: User) -> None:
    row = make(admin)
    renewing_with_dns01(alice, "shop.example.com", [])

    with pytest.raises(Conflict):
        dns_providers.update_provider(admin, row.id, {"zone": "example.net"})
    dns_providers.update_provider(admin, row.id, {"zone": "example.com", "port": 53})

    assert (row.zone, row.port) == ("example.com", 53)


def test_http01_certificates_do_not_hold_a_zone(admin: User, alice: User) -> None:
    row = make(admin)
    certificate = renewing_with_dns01(alice, "shop.example.com", [])
    certificate.challenge = AcmeChallenge.HTTP01
    _db.session.commit()

    dns_providers.delete_provider(admin, row.id)

    assert _db.session.scalar(select(DnsProvider)) is None


# ----------------------------------------------------------------------------- API

HOSTILE = [
    ("zone", "example.com\nexample.org"),
    ("zone", "example.com\" IN TXT \"x"),
    ("zone", "'example.com'"),
    ("tsig_name", "acme key"),
    ("tsig_name", "acme\nkey"),
    ("server", "127.0.0.1; rm -rf /"),
    ("server", "$(id)"),
    ("tsig_secret", "c2VjcmV0c2VjcmV0c2VjcmV0\nX"),
    ("tsig_algorithm", "hmac-md5"),
]


def test_api_creates_reads_updates_and_deletes_without_ever_showing_the_secret(
        client: FlaskClient, admin: User) -> None:
    headers = api_headers(admin)

    created = client.post("/api/v1/dns-providers", headers=headers, json=provider_data())
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    assert body["zone"] == "example.com" and body["has_tsig_secret"] is True
    assert "tsig_secret" not in body and SECRET not in created.get_data(as_text=True)

    listed = client.get("/api/v1/dns-providers", headers=headers).get_json()
    assert set(listed) == {"items", "page", "per_page", "total"} and listed["total"] == 1
    assert SECRET not in str(listed)

    pid = body["id"]
    patched = client.patch(f"/api/v1/dns-providers/{pid}", headers=headers,
                           json={"port": 53, "tsig_algorithm": "hmac-sha512"})
    assert patched.status_code == 200
    assert (patched.get_json()["port"], patched.get_json()["tsig_algorithm"]) \
        == (53, "hmac-sha512")
    assert client.get(f"/api/v1/dns-providers/{pid}", headers=headers).get_json()["port"] == 53

    assert client.delete(f"/api/v1/dns-providers/{pid}", headers=headers).status_code == 204
    assert client.get(f"/api/v1/dns-providers/{pid}", headers=headers).status_code == 404


@pytest.mark.parametrize("field,value", HOSTILE)
def test_api_refuses_hostile_values_with_422_naming_the_field(
        client: FlaskClient, admin: User, field: str, value: str) -> None:
    response = client.post("/api/v1/dns-providers", headers=api_headers(admin),
                           json=provider_data(**{field: value}))

    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "invalid" and field in error["fields"]
    assert SECRET not in response.get_data(as_text=True)
    assert _db.session.scalar(select(DnsProvider)) is None


def test_api_refuses_a_port_that_is_not_a_number(client: FlaskClient, admin: User) -> None:
    response = client.post("/api/v1/dns-providers", headers=api_headers(admin),
                           json=provider_data(port="53; drop"))

    assert response.status_code == 422
    assert "port" in response.get_json()["error"]["fields"]


def test_api_is_for_administrators_only(client: FlaskClient, admin: User, alice: User) -> None:
    row = make(admin)
    headers = api_headers(alice)

    assert client.get("/api/v1/dns-providers", headers=headers).status_code == 403
    assert client.post("/api/v1/dns-providers", headers=headers,
                       json=provider_data(name="x", zone="x.org")).status_code == 403
    assert client.delete(f"/api/v1/dns-providers/{row.id}", headers=headers).status_code == 403
    for method in ("put", "patch"):
        assert client.open(f"/api/v1/dns-providers/{row.id}", method=method, headers=headers,
                           json={"server": "127.0.0.9"}).status_code == 403
    assert client.post(f"/api/v1/dns-providers/{row.id}/check",
                       headers=headers).status_code == 403
    assert client.get("/api/v1/dns-providers").status_code == 401


def test_openapi_document_keeps_the_secret_write_only(client: FlaskClient) -> None:
    schemas = client.get("/api/v1/openapi.json").get_json()["components"]["schemas"]

    assert "tsig_secret" not in schemas["DnsProvider"]["properties"]
    assert schemas["DnsProviderCreate"]["properties"]["tsig_secret"]["writeOnly"] is True
    assert set(schemas["DnsProviderPage"]["properties"]) == {"items", "page", "per_page",
                                                             "total"}


# ----------------------------------------------------------------------------- web UI


def form_data(**extra: Any) -> dict[str, Any]:
    data = provider_data()
    data.update(extra)
    return data


def test_admin_adds_a_provider_in_the_ui_and_sees_it_listed(
        admin_client: FlaskClient) -> None:
    response = admin_client.post("/admin/dns-providers/new", data=form_data())

    assert response.status_code == 302
    page = admin_client.get("/admin/dns-providers").get_data(as_text=True)
    assert "example.com" in page and "acme-key" in page and SECRET not in page


@pytest.mark.parametrize("field,value", HOSTILE)
def test_ui_shows_hostile_values_under_their_field_and_stores_nothing(
        admin_client: FlaskClient, field: str, value: str) -> None:
    response = admin_client.post("/admin/dns-providers/new", data=form_data(**{field: value}))

    assert response.status_code == 422
    page = response.get_data(as_text=True)
    feedback = re.search(rf'id="{field}".*?<div class="invalid-feedback[^"]*">\s*(.*?)</div>',
                         page, re.S)
    assert feedback and feedback[1].strip(), page
    assert SECRET not in page
    assert _db.session.scalar(select(DnsProvider)) is None


def test_ui_edit_keeps_the_secret_when_left_blank_and_never_shows_it(
        admin: User, admin_client: FlaskClient) -> None:
    row = make(admin)

    form = admin_client.get(f"/admin/dns-providers/{row.id}/edit").get_data(as_text=True)
    assert SECRET not in form and "Leave blank to keep the stored one" in form
    response = admin_client.post(f"/admin/dns-providers/{row.id}/edit",
                                 data=form_data(server="ns1.example.net", tsig_secret=""))

    assert response.status_code == 302
    _db.session.expire_all()
    row = dns_providers.get_provider(admin, row.id)
    assert row.server == "ns1.example.net" and row.tsig_secret == SECRET


def test_ui_deletes_a_provider(admin: User, admin_client: FlaskClient) -> None:
    row = make(admin)

    response = admin_client.post(f"/admin/dns-providers/{row.id}/delete")

    assert response.status_code == 302
    _db.session.expire_all()
    assert _db.session.scalar(select(DnsProvider)) is None
    assert admin_client.post(f"/admin/dns-providers/{row.id}/delete").status_code == 404


def test_ui_explains_why_a_needed_zone_is_not_deleted(admin: User, alice: User,
                                                     admin_client: FlaskClient) -> None:
    row = make(admin)
    renewing_with_dns01(alice, "shop.example.com", [])

    response = admin_client.post(f"/admin/dns-providers/{row.id}/delete",
                                 follow_redirects=True)

    assert "renew with DNS-01 through zone example.com" in response.get_data(as_text=True)
    assert admin_client.delete(f"/api/v1/dns-providers/{row.id}",
                               headers=api_headers(admin)).status_code == 409


def test_ui_pages_are_refused_to_clients(admin: User, alice_client: FlaskClient) -> None:
    row = make(admin)

    assert alice_client.get("/admin/dns-providers").status_code == 403
    assert alice_client.post(f"/admin/dns-providers/{row.id}/delete").status_code == 403
