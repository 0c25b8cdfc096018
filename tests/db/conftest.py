"""Fixtures shared by the database tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from app.extensions import limiter
from tests.conftest import make_app


@pytest.fixture()
def limited(app: Flask, db: Any) -> Iterator[Flask]:
    """An app with the sign-in limits on (an account locked from one address after 2
    failures), reading secrets with the session app's keys; the session app's limiter
    is put back afterwards."""
    limited_app = make_app(RATELIMIT_ENABLED=True, SIGN_IN_USER_ADDRESS_FAILURES=2,
                           SIGN_IN_USER_FAILURES=4, SIGN_IN_ADDRESS_FAILURES=10)
    # The session app's own keys object: a key-rotation test may have changed it.
    limited_app.extensions["rpcc_fernet"] = app.extensions["rpcc_fernet"]
    limiter.reset()  # nothing counted by earlier tests of this process
    yield limited_app
    limiter.init_app(app)
