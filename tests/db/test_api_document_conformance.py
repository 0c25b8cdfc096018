"""Real answers, as each role receives them, are valid under the OpenAPI document
(the fuzzing in tests/api_fuzz/ found these; here each is pinned down in one request)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
import schemathesis
from flask.testing import FlaskClient

from tests import factories
from tests.conftest import api_headers


@pytest.fixture()
def document(client: FlaskClient) -> Any:
    return schemathesis.openapi.from_dict(client.get("/api/v1/openapi.json").get_json())


def test_a_site_answer_is_valid_for_a_client_and_for_an_administrator(client, document, alice,
                                                                      admin):
    site = factories.make_site(alice, "both.example.com")
    operation = document["/api/v1/sites/{site_id}"]["GET"]
    for user in (alice, admin):
        response = client.get(f"/api/v1/sites/{site.id}", headers=api_headers(user))
        assert response.status_code == 200
        operation.validate_response(response)


def test_certificate_times_are_documented_as_instants_with_an_offset(client, document, alice):
    site = factories.make_site(alice, "cert.example.com", ssl_mode="self_signed")
    response = client.get(f"/api/v1/sites/{site.id}/certificate", headers=api_headers(alice))
    body = response.get_json()
    declared = document.raw_schema["components"]["schemas"]["Certificate"]["properties"]
    for key in ("not_before", "not_after", "renew_after", "last_attempt_at", "next_attempt_at"):
        assert declared[key].get("format") == "date-time", key
        if body[key] is not None:
            assert datetime.fromisoformat(body[key]).utcoffset() == timedelta(0), key
    assert body["not_after"] is not None
    document["/api/v1/sites/{site_id}/certificate"]["GET"].validate_response(response)
