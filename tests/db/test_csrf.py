"""CSRF is enforced on every POST form of the web UI."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from app.extensions import db as _db
from app.models import AuditLog
from tests import factories
from tests.conftest import make_app


@pytest.fixture()
def csrf_app(app, db):
    return make_app(WTF_CSRF_ENABLED=True)


def _login_with_token(http, user) -> None:
    page = http.get("/auth/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    response = http.post("/auth/login", data={"username": user.username,
                                              "password": factories.PASSWORD,
                                              "csrf_token": token})
    assert response.status_code == 302


def test_login_without_token_is_refused(csrf_app, admin):
    http = csrf_app.test_client()
    response = http.post("/auth/login", data={"username": admin.username,
                                              "password": factories.PASSWORD})
    assert response.status_code == 400
    assert "CSRF" in response.get_data(as_text=True)


def test_every_post_form_requires_the_token(csrf_app, admin):
    site = factories.make_site(admin)
    http = csrf_app.test_client()
    with csrf_app.app_context():
        _login_with_token(http, admin)
    audit_before = _db.session.scalar(select(func.count(AuditLog.id)))
    posted = []
    for rule in csrf_app.url_map.iter_rules():
        if "POST" not in rule.methods or rule.rule.startswith("/api/"):
            continue
        url = rule.build({arg: site.id for arg in rule.arguments}, append_unknown=False)[1]
        response = http.post(url, data={"domain": "x.example.com"})
        assert response.status_code == 400, (url, response.status_code)
        posted.append(url)
    assert "/auth/logout" in posted and len(posted) > 10
    # Nothing happened: no audit entry was written, the session is still signed in.
    assert _db.session.scalar(select(func.count(AuditLog.id))) == audit_before
    assert http.get("/admin/").status_code == 200


def test_api_uses_tokens_not_cookies(csrf_app, admin):
    """The API is exempt from CSRF because it ignores session cookies entirely."""
    http = csrf_app.test_client()
    with csrf_app.app_context():
        _login_with_token(http, admin)
    assert http.get("/api/v1/sites").status_code == 401
