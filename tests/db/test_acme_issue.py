"""What issue() refuses before it asks any CA for anything.  (The HTTP-01 token names
it refuses to turn into paths are in tests/unit/test_acme_issue.py; issuance itself
runs against real Pebble in tests/integration/test_acme_client.py and
tests/integration/test_acme_http01.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.services import nodes
from app.services.certificates import AcmeIssueError, AcmeSettings, issue
from tests import factories
from tests.processes import free_port

NOWHERE = AcmeSettings(directory_url=f"https://127.0.0.1:{free_port()}/dir", email="",
                       ca_bundle=None)


def refused(site_id: int, settings: AcmeSettings = NOWHERE, **kwargs: Any) -> AcmeIssueError:
    with pytest.raises(AcmeIssueError) as caught:
        issue(site_id, settings, **kwargs)
    return caught.value


def test_an_unknown_challenge_or_site_is_an_invalid_request(alice: Any) -> None:
    site = factories.make_site(alice, "shop.example.com")
    error = refused(site.id, challenge="tls-alpn-01")
    assert (error.code, str(error)) == (
        "invalid_request", "unknown challenge type 'tls-alpn-01'; use one of http-01, dns-01")
    error = refused(site.id + 1000)
    assert (error.code, str(error)) == ("invalid_request", f"site {site.id + 1000} does not exist")


def test_a_wildcard_alias_needs_dns_01(alice: Any) -> None:
    factories.make_node("edge-1")
    site = factories.make_site(alice, "shop.example.com", aliases=["*.shop.example.com"])
    error = refused(site.id)
    assert error.code == "invalid_request"
    assert str(error) == "*.shop.example.com can only be validated with DNS-01"


def test_http_01_needs_an_active_node(admin: Any, alice: Any) -> None:
    node = factories.make_node("edge-1")
    nodes.set_enabled(admin, node.id, False)
    site = factories.make_site(alice, "shop.example.com")
    error = refused(site.id)
    assert error.code == "challenge_unreachable"
    assert "no active proxy node" in str(error)


def test_dns_01_needs_a_provider_for_every_name(alice: Any) -> None:
    site = factories.make_site(alice, "shop.example.com", aliases=["www.shop.example.com"])
    error = refused(site.id, challenge="dns-01")
    assert error.code == "dns_provider"
    assert "no DNS provider serves shop.example.com" in str(error)


def test_a_missing_ca_bundle_is_named(alice: Any, tmp_path: Path) -> None:
    factories.make_node("edge-1")
    site = factories.make_site(alice, "shop.example.com")
    missing = str(tmp_path / "absent.pem")
    error = refused(site.id, AcmeSettings(NOWHERE.directory_url, "", missing))
    assert error.code == "ca_unreachable"
    assert missing in str(error)


def test_a_ca_that_is_not_there_is_unreachable(alice: Any) -> None:
    factories.make_node("edge-1")
    site = factories.make_site(alice, "shop.example.com")
    error = refused(site.id)
    assert error.code == "ca_unreachable"
    assert NOWHERE.directory_url in str(error)
