"""Hostile values for every site field are refused by the API (422 naming the field)
and by the web form (422 with the message under the field), and nothing is stored."""

from __future__ import annotations

import html
from typing import Any

import pytest
from bs4 import BeautifulSoup
from sqlalchemy import func, select

from app.extensions import db as _db
from app.forms import SiteForm
from app.models import Site, SiteBackend, SiteHostname
from tests.conftest import api_headers
from tests.hostile import hostile_site_payloads

BASE = {
    "domain": "safe.example.com", "aliases": [], "pool": "default",
    "backends": [{"host": "127.0.0.1", "port": 80, "weight": 1}],
    "backend_protocol": "http", "ssl_mode": "none", "acme_challenge": "http-01",
    "force_https": False, "hsts": False,
    "http2": True, "websocket": False, "waf_level": "off", "cache": {"enabled": False, "ttl": 300},
    "geo": {"mode": "off", "countries": []}, "ip_allow": [], "ip_deny": [], "basic_auth": [],
    "rate_limit": None, "headers": {}, "blocked": False, "blocked_reason": "",
}
CASES = hostile_site_payloads()


def _nothing_stored() -> None:
    _db.session.expire_all()
    for model in (Site, SiteHostname, SiteBackend):
        assert _db.session.scalar(select(func.count(model.id))) == 0


def _form_data(site: dict[str, Any]) -> dict[str, str]:
    """What a browser posts for this site: the form's own text rendering of it."""
    data = SiteForm.initial({**site, "basic_auth": []})
    if site["basic_auth"]:
        data["basic_auth"] = "\n".join(
            f"{u.get('username', '')}:{u.get('password', '')}" for u in site["basic_auth"])
    posted = {}
    for key, value in data.items():
        if isinstance(value, bool):
            if value:
                posted[key] = "y"
        elif value is not None:
            posted[key] = str(value)
    return posted


@pytest.mark.parametrize("prefix,field,value", CASES)
def test_api_refuses_hostile_values(app, alice, prefix, field, value):
    http = app.test_client()
    response = http.post("/api/v1/sites", json={**BASE, field: value},
                         headers=api_headers(alice))
    assert response.status_code == 422, response.get_json()
    fields = response.get_json()["error"]["fields"]
    assert any(key == prefix or key.startswith(prefix + ".") for key in fields), fields
    _nothing_stored()


# The form's own syntax reads these as other, valid values: it trims spaces, skips
# blank lines, splits countries on ";" and text areas on newlines, and reads
# "name:password" up to the first colon.  The API tests above cover them as sent.
_TRIMMED_CLEAN = {
    repr([{"host": "127.0.0.1", "port": "80 "}]), repr(["10.0.0.0/8\n"]), repr([""]),
    repr({"mode": "deny", "countries": ["us;"]}),
    repr({"X-Test": "value\r\nX-Injected: 1"}), repr({"X-Test:": "ok"}),
    repr([{"username": "a:b", "password": "long-enough-pw"}]),
}


def _form_cases() -> list[tuple[str, str, Any]]:
    """Values a text form can carry (a form has no JSON types such as true or null)."""
    cases = []
    for prefix, field, value in CASES:
        if repr(value) in _TRIMMED_CLEAN:
            continue
        if field == "backends" and not all(
            isinstance(b.get("port"), int | str) and not isinstance(b.get("port"), bool)
            for b in value
        ):
            continue
        if field in {"force_https", "http2", "websocket"}:
            continue
        cases.append((prefix, field, value))
    return cases


@pytest.mark.parametrize("prefix,field,value", _form_cases())
def test_web_form_refuses_hostile_values(app, alice, alice_client, prefix, field, value):
    site = {**BASE, field: value}
    if field == "backends":
        site["backends"] = [{"weight": 1, **b} for b in value]
    if field == "cache":
        site["cache"] = {"enabled": True, "ttl": value["ttl"]}
    if field == "rate_limit":
        site["rate_limit"] = {"requests_per_second": value["requests_per_second"],
                              "burst": value["burst"]}
    try:
        data = _form_data(site)
    except (TypeError, KeyError):
        pytest.fail(f"test cannot express {field}={value!r} as a form")
    response = alice_client.post("/client/sites/new", data=data)
    assert response.status_code == 422
    page = BeautifulSoup(response.get_data(as_text=True), "html.parser")
    messages = [html.unescape(el.get_text(" ", strip=True))
                for el in page.select(".invalid-feedback, .alert-danger")]
    assert any(m for m in messages), "no error message is shown"
    _nothing_stored()
