"""DNS-01 records written by RFC 2136 updates into a real Knot DNS, through the DNS
providers administrators register."""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from app.acme.dns import DnsChallengeError
from app.acme.dns_rfc2136 import Rfc2136Provider
from app.models import User
from app.services import dns_providers
from tests.conftest import api_headers
from tests.knot import ADDRESS, KnotServer, knot  # noqa: F401 - fixture
from tests.processes import free_port

WRONG_SECRET = base64.b64encode(b"wrong-secret-but-long-enough-32b").decode()


@pytest.fixture()
def zones(admin: User, knot: KnotServer) -> None:  # noqa: F811
    for zone in knot.zones:
        dns_providers.create_provider(admin, knot.provider_data(zone))


def test_added_values_coexist_and_removing_one_keeps_the_other(
        zones: None, knot: KnotServer) -> None:  # noqa: F811
    name = "_acme-challenge.shop.example.com"
    provider = dns_providers.provider_for_domain("shop.example.com")

    provider.add_txt(name, "first-value")
    assert knot.txt(name) == {"first-value"}
    provider.add_txt(name, "second-value")
    assert knot.txt(name) == {"first-value", "second-value"}

    provider.remove_txt(name, "first-value")
    assert knot.txt(name) == {"second-value"}
    provider.remove_txt(name, "first-value")  # already gone: not an error
    provider.remove_txt(name, "second-value")
    assert knot.txt(name) == set()


def test_the_record_is_served_when_add_returns(zones: None, knot: KnotServer) -> None:  # noqa: F811
    name = "_acme-challenge.api.dev.example.com"
    provider = dns_providers.provider_for_domain("api.dev.example.com")

    provider.add_txt(name, "visible-at-once")

    assert knot.txt(name) == {"visible-at-once"}
    provider.remove_txt(name, "visible-at-once")
    assert knot.txt(name) == set()


def test_each_zone_is_changed_through_its_own_provider(
        zones: None, knot: KnotServer) -> None:  # noqa: F811
    inner = dns_providers.provider_for_domain("x.dev.example.com")
    outer = dns_providers.provider_for_domain("dev-example.com.example.net")

    inner.add_txt("_acme-challenge.x.dev.example.com", "inner")
    outer.add_txt("_acme-challenge.dev-example.com.example.net", "outer")

    assert knot.txt("_acme-challenge.x.dev.example.com") == {"inner"}
    assert knot.txt("_acme-challenge.dev-example.com.example.net") == {"outer"}
    inner.remove_txt("_acme-challenge.x.dev.example.com", "inner")
    outer.remove_txt("_acme-challenge.dev-example.com.example.net", "outer")


def test_a_wrong_tsig_secret_is_refused_without_leaking_it(
        admin: User, knot: KnotServer) -> None:  # noqa: F811
    dns_providers.create_provider(admin, knot.provider_data("example.com",
                                                            tsig_secret=WRONG_SECRET))
    provider = dns_providers.provider_for_domain("www.example.com")

    with pytest.raises(DnsChallengeError) as err:
        provider.add_txt("_acme-challenge.www.example.com", "never-written")

    message = str(err.value)
    assert "refused the update for zone example.com: NOTAUTH/BADSIG" in message
    assert "check the TSIG key" in message
    assert WRONG_SECRET not in message and knot.secret not in message
    assert knot.txt("_acme-challenge.www.example.com") == set()


def test_an_unknown_tsig_key_name_is_refused(admin: User, knot: KnotServer) -> None:  # noqa: F811
    dns_providers.create_provider(admin, knot.provider_data("example.com",
                                                            tsig_name="someone-else"))
    provider = dns_providers.provider_for_domain("www.example.com")

    with pytest.raises(DnsChallengeError, match="NOTAUTH/BADKEY"):
        provider.add_txt("_acme-challenge.www.example.com", "never-written")


def test_a_zone_the_server_does_not_serve_is_explained(
        admin: User, knot: KnotServer) -> None:  # noqa: F811
    dns_providers.create_provider(admin, knot.provider_data("example.org"))
    provider = dns_providers.provider_for_domain("www.example.org")

    with pytest.raises(DnsChallengeError) as err:
        provider.add_txt("_acme-challenge.www.example.org", "never-written")

    assert "refused the update for zone example.org" in str(err.value)
    assert f"{knot.address} is probably not authoritative for example.org" in str(err.value)


def test_a_name_outside_the_zone_is_refused_before_sending(
        zones: None, knot: KnotServer) -> None:  # noqa: F811
    provider = dns_providers.provider_for_domain("www.example.com")

    with pytest.raises(DnsChallengeError, match="is not inside zone example.com"):
        provider.add_txt("_acme-challenge.www.example.org", "x")


@pytest.fixture()
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers, as a hung or
    firewalled DNS server behaves."""
    with socket.socket() as sock:
        sock.bind((ADDRESS, 0))
        sock.listen(8)
        yield sock.getsockname()[1]


def _provider(port: int, **extra: Any) -> Rfc2136Provider:
    settings = {"zone": "example.com", "server": ADDRESS, "port": port,
                "tsig_name": "acme-key", "tsig_secret": WRONG_SECRET, "timeout": 1.0}
    settings.update(extra)
    return Rfc2136Provider(**settings)


def test_a_server_that_does_not_answer_times_out_with_a_clear_message(
        silent_server: int) -> None:
    started = time.monotonic()

    with pytest.raises(DnsChallengeError) as err:
        _provider(silent_server).add_txt("_acme-challenge.www.example.com", "x")

    assert str(err.value) == f"no answer from {ADDRESS}:{silent_server} within 1 s"
    assert time.monotonic() - started < 5


def test_a_closed_port_is_reported_as_refused() -> None:
    port = free_port()

    with pytest.raises(DnsChallengeError) as err:
        _provider(port).remove_txt("_acme-challenge.www.example.com", "x")

    assert f"{ADDRESS}:{port} refused the connection" in str(err.value)
    assert WRONG_SECRET not in str(err.value)


def test_the_admin_check_writes_sees_and_removes_a_record(
        client: Any, admin: User, knot: KnotServer) -> None:  # noqa: F811
    headers = api_headers(admin)
    good = client.post("/api/v1/dns-providers", headers=headers,
                       json=knot.provider_data("example.com")).get_json()
    bad = client.post("/api/v1/dns-providers", headers=headers,
                      json=knot.provider_data("example.net", tsig_secret=WRONG_SECRET)).get_json()

    passed = client.post(f"/api/v1/dns-providers/{good['id']}/check", headers=headers)
    failed = client.post(f"/api/v1/dns-providers/{bad['id']}/check", headers=headers)

    assert passed.status_code == 200 and passed.get_json()["ok"] is True
    assert "_rpcc-check.example.com" in passed.get_json()["detail"]
    assert knot.txt("_rpcc-check.example.com") == set()
    assert failed.status_code == 200 and failed.get_json()["ok"] is False
    assert "NOTAUTH/BADSIG" in failed.get_json()["detail"]
    assert WRONG_SECRET not in failed.get_data(as_text=True)


def test_the_check_button_flashes_what_the_server_said(
        admin_client: Any, admin: User, knot: KnotServer) -> None:  # noqa: F811
    row = dns_providers.create_provider(admin, knot.provider_data("dev.example.com"))

    response = admin_client.post(f"/admin/dns-providers/{row.id}/check",
                                 follow_redirects=True)

    assert response.status_code == 200
    assert "accepted, served and removed a TXT record at _rpcc-check.dev.example.com" \
        in response.get_data(as_text=True)
