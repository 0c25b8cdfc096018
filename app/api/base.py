"""The API object: flask-smorest generates the OpenAPI document from the schemas and
views, while errors use the project's own JSON shape (see ``app.errors``)."""

from __future__ import annotations

from flask_smorest import Api


class ControlPlaneApi(Api):
    """flask-smorest would install a global HTTPException handler; ours answers JSON
    under /api and HTML elsewhere, so it is registered by ``create_app`` instead."""

    def _register_error_handlers(self) -> None:
        return None
