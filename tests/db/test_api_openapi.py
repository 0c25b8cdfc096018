"""The OpenAPI document is generated from the code and describes every resource."""

from __future__ import annotations

import json
from typing import Any

import pytest

EXPECTED = {
    "/api/v1/tokens": {"get", "post"},
    "/api/v1/tokens/{token_id}": {"delete"},
    "/api/v1/sites": {"get", "post"},
    "/api/v1/sites/{site_id}": {"get", "put", "patch", "delete"},
    "/api/v1/sites/{site_id}/config": {"get"},
    "/api/v1/sites/{site_id}/deploy": {"post"},
    "/api/v1/sites/{site_id}/deployments": {"get"},
    "/api/v1/sites/{site_id}/certificate": {"get", "post", "put"},
    "/api/v1/settings/acme": {"get", "put"},
    "/api/v1/settings/security": {"get", "put"},
    "/api/v1/settings/backend-policy": {"get", "put"},
    "/api/v1/deployments": {"get"},
    "/api/v1/deployments/{rollout_id}": {"get"},
    "/api/v1/nodes/{node_id}/deploy": {"post"},
    "/api/v1/nodes/{node_id}/versions": {"get"},
    "/api/v1/nodes/{node_id}/versions/{version_id}": {"get"},
    "/api/v1/nodes/{node_id}/diff": {"get"},
    "/api/v1/nodes/{node_id}/rollback": {"post"},
    "/api/v1/nodes/{node_id}/drift": {"post"},
    "/api/v1/nodes/{node_id}/check": {"post"},
    "/api/v1/nodes/{node_id}/prepare": {"post"},
    "/api/v1/nodes/{node_id}/host-key": {"post"},
    "/api/v1/nodes": {"get", "post"},
    "/api/v1/nodes/{node_id}": {"get", "put", "patch", "delete"},
    "/api/v1/pools": {"get", "post"},
    "/api/v1/pools/{pool_id}": {"put", "delete"},
    "/api/v1/dns-providers": {"get", "post"},
    "/api/v1/dns-providers/{provider_id}": {"get", "put", "patch", "delete"},
    "/api/v1/dns-providers/{provider_id}/check": {"post"},
    "/api/v1/users": {"get", "post"},
    "/api/v1/users/{user_id}": {"get", "put", "patch", "delete"},
    "/api/v1/users/{user_id}/two-factor": {"delete"},
    "/api/v1/users/{user_id}/domains": {"get", "post"},
    "/api/v1/users/{user_id}/domains/{grant_id}": {"delete"},
    "/api/v1/audit": {"get"},
    "/api/v1/jobs": {"get"},
    "/api/v1/nodes/{node_id}/metrics": {"get"},
    "/api/v1/metrics/fleet": {"get"},
    "/api/v1/notification-channels": {"get", "post"},
    "/api/v1/notification-channels/{channel_id}": {"get", "patch", "delete"},
    "/api/v1/notification-channels/{channel_id}/test": {"post"},
    "/api/v1/notification-channels/{channel_id}/deliveries": {"get"},
    "/api/v1/alerts": {"get"},
    "/api/v1/alerts/{alert_id}": {"get"},
    "/api/v1/alerts/{alert_id}/acknowledge": {"post"},
    "/api/v1/alert-rules": {"get", "post"},
    "/api/v1/alert-rules/recommended": {"post"},
    "/api/v1/alert-rules/{rule_id}": {"get", "patch", "delete"},
    "/api/v1/silences": {"get", "post"},
    "/api/v1/silences/{silence_id}": {"get", "patch", "delete"},
    "/api/v1/silences/{silence_id}/end": {"post"},
    "/api/v1/sites/{site_id}/nameservers": {"get"},
    "/api/v1/sites/{site_id}/nameservers/check": {"post"},
    "/api/v1/nameserver-zones": {"get", "post"},
    "/api/v1/nameserver-zones/{zone_id}": {"get", "put", "patch", "delete"},
    "/api/v1/settings/nameservers": {"get", "put"},
    "/api/v1/sites/{site_id}/uptime": {"get"},
}
HTTP_METHODS = {"get", "put", "post", "patch", "delete", "head", "options"}


@pytest.fixture()
def document(client) -> dict[str, Any]:
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    return json.loads(response.get_data(as_text=True))


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def test_document_is_served_without_a_token_and_lists_every_operation(document):
    assert document["openapi"].startswith("3.")
    assert document["info"]["title"] and document["info"]["version"] == "v1"
    operations = {path: set(item) & HTTP_METHODS for path, item in document["paths"].items()}
    assert operations == EXPECTED


def test_every_reference_resolves(document):
    for ref in _refs(document):
        assert ref.startswith("#/"), ref
        node: Any = document
        for part in ref[2:].split("/"):
            node = node[part]


def test_error_schema_matches_the_error_answers(document):
    schemas = document["components"]["schemas"]
    error = schemas["Error"]
    assert error["required"] == ["error"]
    detail = schemas[error["properties"]["error"]["$ref"].rsplit("/", 1)[1]]
    assert set(detail["properties"]) == {"code", "message", "fields"}
    for item in document["paths"].values():
        for method in set(item) & HTTP_METHODS:
            assert "default" in item[method]["responses"]


def test_bearer_scheme_is_required_everywhere_but_the_token_exchange(document):
    scheme = document["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert document["security"] == [{"bearerAuth": []}]
    for path, item in document["paths"].items():
        for method in set(item) & HTTP_METHODS:
            operation = item[method]
            if (path, method) == ("/api/v1/tokens", "post"):
                assert operation["security"] == []
                assert "429" in operation["responses"]
            else:
                assert "security" not in operation
                assert "401" in operation["responses"]


def test_list_answers_use_the_items_envelope(document):
    schemas = document["components"]["schemas"]
    for path in ("/api/v1/sites", "/api/v1/nodes", "/api/v1/pools", "/api/v1/users",
                 "/api/v1/audit", "/api/v1/tokens", "/api/v1/jobs"):
        operation = document["paths"][path]["get"]
        ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        envelope = schemas[ref.rsplit("/", 1)[1]]
        assert set(envelope["properties"]) == {"items", "page", "per_page", "total"}
        parameters = {p["name"] for p in operation["parameters"]}
        assert {"page", "per_page"} <= parameters


def test_both_site_views_are_documented(document):
    schemas = document["components"]["schemas"]
    assert {"owner_id", "owner"} <= set(schemas["Site"]["properties"])
    assert not {"owner_id", "owner"} & set(schemas["ClientSite"]["properties"])
    answer = document["paths"]["/api/v1/sites/{site_id}"]["get"]["responses"]["200"]
    any_of = answer["content"]["application/json"]["schema"]["anyOf"]
    assert {ref["$ref"].rsplit("/", 1)[1] for ref in any_of} == {"Site", "ClientSite"}


def test_secrets_are_write_only_in_the_document(document):
    schemas = document["components"]["schemas"]
    node = schemas["Node"]["properties"]
    assert "ssh_private_key" not in node and "ssh_password" not in node
    assert node["has_ssh_private_key"]["type"] == "boolean"
    assert schemas["NodeCreate"]["properties"]["ssh_private_key"]["writeOnly"] is True
    assert "password" not in schemas["User"]["properties"]
    assert schemas["BasicAuthUser"]["properties"]["password"]["writeOnly"] is True


def test_admin_only_operations_document_403(document):
    for path in ("/api/v1/nodes", "/api/v1/users", "/api/v1/audit", "/api/v1/jobs"):
        assert "403" in document["paths"][path]["get"]["responses"]
    assert "403" in document["paths"]["/api/v1/pools"]["post"]["responses"]
    assert "403" not in document["paths"]["/api/v1/pools"]["get"]["responses"]
