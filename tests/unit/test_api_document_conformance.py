"""Real answers, as each role receives them, are valid under the OpenAPI document
(the fuzzing in tests/api_fuzz/ found these; here each is pinned down in one request)."""

from __future__ import annotations

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
