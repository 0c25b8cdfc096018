"""A node's commands reach its SSH server (a real sshd, whose sessions start a login
shell) as argument lists: even an administrator's own command, full of shell syntax,
runs no shell code. The commands take the path deployments take: the stored line,
the engine's argument lists, the connector."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.engines import get_engine
from app.extensions import ssh
from app.services import deployments, nodes, rendering
from tests.sshd import SshServer


@pytest.fixture()
def marker(sshd: SshServer) -> Iterator[Path]:
    """A file that exists only if some shell ran a ``touch`` hidden in a command."""
    path = sshd.root / f"pwned-{secrets.token_hex(4)}"
    yield path
    path.unlink(missing_ok=True)


def test_shell_syntax_in_a_custom_command_runs_no_shell(app, admin, sshd, marker,
                                                       monkeypatch):
    monkeypatch.setitem(app.config, "ALLOW_CUSTOM_NODE_COMMANDS", True)
    node = nodes.create_node(admin, {
        "name": "hostile", "host": "127.0.0.1", "ssh_port": sshd.port, "ssh_user": "root",
        "ssh_private_key": sshd.client_key_text, "proxy_type": "nginx",
        "test_command": f"nginx -t; rm -rf {marker}; touch {marker}",
        "reload_command": f"echo $(id) $(touch {marker}) `touch {marker}` && "
                          f"touch {marker} | touch {marker} > {marker}",
    })
    test_argv, reload_argv = get_engine("nginx").commands(rendering.node_spec(node))
    assert test_argv[:3] == ["nginx", "-t;", "rm"]
    pool, target = ssh.pool(app), deployments.ssh_target(node)
    try:
        tested = pool.run(target, test_argv)
        [reloaded] = pool.run_chain(target, [reload_argv])
    finally:
        ssh.reset(app)
    # nginx itself refused the argument "-t;": no shell split the line at ";".
    assert not tested.ok and 'invalid option: ";"' in tested.stderr
    # echo printed every word as it was written: "$(id)" was never substituted.
    assert reloaded.ok and reloaded.stdout == " ".join(reload_argv[1:]) + "\n"
    assert "$(id)" in reloaded.stdout and "uid=" not in reloaded.stdout
    assert not marker.exists()
