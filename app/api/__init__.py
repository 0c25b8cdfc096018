"""REST API ``/api/v1``: one module per resource, Bearer-token authentication."""
