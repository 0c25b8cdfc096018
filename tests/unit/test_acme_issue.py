"""The HTTP-01 token names issue() refuses to turn into paths, and its error codes
(what it refuses before asking a CA is in tests/db/test_acme_issue.py)."""

from __future__ import annotations

import pytest

from app.acme import http01
from app.services.certificates import AcmeIssueError
from tests.hostile import INJECTION_STRINGS


@pytest.mark.parametrize("token", [
    *INJECTION_STRINGS, "", ".", "..", "a/b", "a\\b", "tok en", "tök", "a" * 257, "abc=",
    "../../../etc/cron.d/x", "x\n", "-" * 300,
])
def test_tokens_that_are_not_base64url_never_become_paths(token: str) -> None:
    with pytest.raises(AcmeIssueError) as caught:
        http01.check_token(token)
    assert caught.value.code == "ca_refused"


def test_base64url_tokens_are_accepted() -> None:
    token = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"
    assert http01.check_token(token) == token
    assert http01.check_token("a-b_c") == "a-b_c"


def test_error_codes_are_the_documented_ones() -> None:
    with pytest.raises(ValueError):
        AcmeIssueError("oops", "message")
    error = AcmeIssueError("rate_limited", "try later")
    assert (error.code, error.message, str(error)) == ("rate_limited", "try later", "try later")
