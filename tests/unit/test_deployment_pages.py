"""What the deployment pages say that needs no database: the documented status
values and a rollback's summary of what happens to the sites (the pages and API
answers are in tests/db/test_deployment_pages.py)."""

from __future__ import annotations

from app.models import DeploymentStatus
from app.services import deployments


def test_rollout_status_values_are_the_documented_ones():
    assert [s.value for s in DeploymentStatus] == [
        "pending", "running", "succeeded", "failed", "rolled_back", "skipped"]


def test_a_rollback_summary_says_what_happens_to_the_sites():
    from types import SimpleNamespace

    now = SimpleNamespace(version=5, file_count=9, site_versions={"1": 3, "2": 7, "3": 1})
    then = SimpleNamespace(version=2, file_count=7, site_versions={"1": 2, "2": 7, "4": 1})
    summary = deployments.rollback_summary(now, then)
    assert summary == ("From v5 to v2: 1 site goes back to an earlier configuration; "
                       "1 site stops being served; 1 site comes back.")
    more = SimpleNamespace(version=1, file_count=3, site_versions={})
    assert deployments.rollback_summary(now, more) == "From v5 to v1: 3 sites stop being served."
    assert deployments.rollback_summary(now, now).endswith("no site changes (shared files only).")
    assert deployments.rollback_summary(None, then) == "The node gets v2 (7 files)."
