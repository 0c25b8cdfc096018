"""File names reach tar and rm on the node: a name that could point outside the
release is refused before anything is sent, and the live release stays as it was."""

from __future__ import annotations

from typing import Any

import pytest

from app.connector import CommandResult, SSHTarget
from app.services.deployments.release import NodeJob, Release, StepFailed


class RecordingPool:
    """Answers like a node holding a live release; records what was asked."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    def readlink(self, target: SSHTarget, path: str) -> str:
        return "/etc/nginx/rpcc.d.releases/v1-live"

    def run(self, target: SSHTarget, argv: list[str], **kwargs: Any) -> CommandResult:
        self.commands.append(list(argv))
        return CommandResult(exit_status=0, stdout="", stderr="")

    def symlink_swap(self, target: SSHTarget, link: str, new_target: str) -> None:
        self.commands.append(["swap", link, new_target])

    def remove_tree(self, target: SSHTarget, path: str) -> None:
        self.commands.append(["remove", path])


def job(files: dict[str, str], base: dict[str, str] | None) -> NodeJob:
    return NodeJob(
        target=SSHTarget(node_id=1, host="192.0.2.1", port=22, username="root"),
        config_dir="/etc/nginx/rpcc.d", files=files,
        manifest={path: "0" * 64 for path in files}, release_name="v2-new",
        test_command=["nginx", "-t"], reload_command=["nginx", "-s", "reload"],
        verify_address="192.0.2.1", verify_port=80, verify_hosts=[], probe=None,
        previous_probe=None, base_manifest=base, known_release=None,
        command_timeout=5, verify_timeout=5)


@pytest.mark.parametrize("files, base", [
    ({"../outside.conf": "x"}, None),
    ({"/etc/passwd": "x"}, None),
    ({"sites/./a.conf": "x"}, None),
    ({"sites/a.conf": "x"}, {"sites/a.conf": "1" * 64, "../../etc/hosts": "2" * 64}),
])
def test_a_name_outside_the_release_is_refused_before_anything_is_sent(files, base):
    pool = RecordingPool()
    with pytest.raises(StepFailed) as failure:
        Release(pool, job(files, base)).run()  # type: ignore[arg-type]
    assert failure.value.step == "upload" and failure.value.restored
    assert "not a relative file path" in failure.value.message
    assert not any(argv[:2] == ["sh", "-c"] for argv in pool.commands)
