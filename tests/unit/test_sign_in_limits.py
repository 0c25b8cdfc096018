"""How long a lock lasts: each failure past the threshold doubles it, up to the cap
(sign-ins through the app are in tests/db/test_sign_in_limits.py)."""

from __future__ import annotations

import pytest

from app.services.sign_in_limits import ADDRESS, USER, USER_ADDRESS, Settings


@pytest.mark.parametrize(("failures", "seconds"), [
    (5, 30), (6, 60), (7, 120), (8, 240), (9, 480), (10, 900), (11, 900), (500, 900)])
def test_each_failure_past_the_threshold_doubles_the_lock_up_to_the_cap(failures, seconds):
    limits = Settings(window=3600, thresholds={USER_ADDRESS: 5, USER: 10, ADDRESS: 20},
                      backoff=30, backoff_max=900, fresh_wait=30)
    assert limits.lock_seconds(USER_ADDRESS, failures) == seconds
