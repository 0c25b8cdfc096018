"""How a version's manifest is recorded: what differs from the node's last version,
with a whole manifest at least every few versions (pure; the database side is in
tests/db/test_manifest_deltas.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from app.services.deployments.history import WHOLE_EVERY, recorded_manifest


def test_every_version_of_a_chain_reads_as_its_whole_manifest():
    base = {f"sites/{n}.conf": f"{n:064x}" for n in range(10)}
    taken = None
    whole: list[dict[str, str]] = []
    recorded: list[dict[str, Any]] = []
    current = dict(base)
    for step in range(2 * WHOLE_EVERY):
        current = {**current, f"sites/{step % 10}.conf": f"{step + 100:064x}"}
        if step == 5:
            current.pop("sites/9.conf")
        columns = recorded_manifest(current, taken)
        recorded.append(columns)
        whole.append(dict(current))
        taken = SimpleNamespace(manifest=dict(current), version_id=step, depth=columns["depth"])
    depths = [columns["depth"] for columns in recorded]
    # A whole manifest at least every WHOLE_EVERY versions, deltas in between.
    assert depths[0] == 0 and max(depths) == WHOLE_EVERY - 1 and depths.count(0) == 2
    assert all(len(columns["manifest"]) <= 2 for columns in recorded if columns["depth"])


def test_a_change_to_most_files_records_the_whole_manifest():
    before = {f"f{n}": f"{n:064x}" for n in range(4)}
    taken = SimpleNamespace(manifest=before, version_id=7, depth=3)
    after = {f"f{n}": f"{n + 9:064x}" for n in range(4)}
    assert recorded_manifest(after, taken) == {"manifest": after, "base_id": None, "depth": 0}
    assert recorded_manifest(after, None)["depth"] == 0
