"""`flask --app wsgi nodes discover` as an operator runs it: a real process on its own
database, checked by its output, its exit status and the rows it leaves."""

import os
import subprocess
import tempfile

import pytest
import yaml
from sqlalchemy import create_engine, text

from tests import factories
from tests.components import ROOT, app_env, flask_cli


@pytest.fixture()
def env() -> dict[str, str]:
    path = os.path.join(tempfile.mkdtemp(prefix="rpcc-discover-"), "app.db")
    environment = app_env(f"sqlite:///{path}")
    flask_cli(environment, "db", "upgrade")
    return environment


def discover(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [os.path.join(ROOT, ".venv", "bin", "flask"), "--app", "wsgi", "nodes", "discover",
         *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )


def rows(env: dict[str, str]) -> list[tuple]:
    engine = create_engine(env["DATABASE_URL"])
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(
                "SELECT n.name, n.host, n.is_discovered, p.name FROM nodes n "
                "JOIN pools p ON p.id = n.pool_id ORDER BY n.name"))]
    finally:
        engine.dispose()


def write(directory, document) -> str:
    path = os.path.join(directory, "nodes.yaml")
    with open(path, "w") as handle:
        yaml.safe_dump(document, handle)
    return path


def test_discover_creates_then_reports_unchanged(env, tmp_path):
    key = factories.ssh_key()
    (tmp_path / "edge-2.key").write_text(key)
    path = write(tmp_path, {
        "pools": [{"name": "europe", "description": "EU"}],
        "nodes": [
            {"name": "edge-1", "host": "10.0.0.1", "ssh_password": "s3cret-pass",
             "pool": "europe"},
            {"name": "edge-2", "host": "10.0.0.2", "ssh_private_key_file": "edge-2.key",
             "proxy_type": "caddy"},
        ],
    })
    first = discover(env, path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        "pool europe: created", "node edge-1: created", "node edge-2: created",
        "2 created, 0 updated, 0 unchanged, 0 invalid"]
    assert rows(env) == [("edge-1", "10.0.0.1", 1, "europe"),
                         ("edge-2", "10.0.0.2", 1, "default")]

    write(tmp_path, {"nodes": [{"name": "edge-1", "host": "10.0.0.9"}, {"name": "edge-2"}]})
    second = discover(env, path)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == [
        "node edge-1: updated (host)", "node edge-2: unchanged",
        "0 created, 1 updated, 1 unchanged, 0 invalid"]
    assert [r[:2] for r in rows(env)] == [("edge-1", "10.0.0.9"), ("edge-2", "10.0.0.2")]
    for output in (first, second):
        assert "s3cret" not in output.stdout + output.stderr
        assert "PRIVATE KEY" not in output.stdout + output.stderr


def test_invalid_entries_fail_the_command_but_valid_ones_apply(env, tmp_path):
    path = write(tmp_path, [
        {"name": "edge-1", "host": "10.0.0.1", "ssh_password": "s3cret-pass",
         "test_command": "nginx -t; reboot"},
        {"name": "edge-2", "host": "10.0.0.2", "ssh_password": "s3cret-pass"},
        {"name": "evil\nnode edge-3: created", "host": "10.0.0.3", "colour": "red"},
    ])
    result = discover(env, path)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert "node edge-2: created" in lines
    assert "nodes[0] edge-1: invalid" in lines
    assert any(line.startswith("    test_command: argument '-t;'") for line in lines)
    assert "nodes[2] evil\\nnode edge-3: created: invalid" in lines
    assert "    colour: unknown field" in lines
    assert "node edge-3: created" not in lines
    assert "2 invalid entries" in result.stderr and "valid ones were applied" in result.stderr
    assert "s3cret" not in result.stdout + result.stderr
    assert [r[0] for r in rows(env)] == ["edge-2"]


def test_path_defaults_to_nodes_file(env, tmp_path):
    path = write(tmp_path, [{"name": "edge-1", "host": "10.0.0.1",
                             "ssh_password": "s3cret-pass"}])
    assert "node edge-1: created" in flask_cli({**env, "NODES_FILE": path}, "nodes", "discover")
    assert [r[0] for r in rows(env)] == ["edge-1"]


def test_a_broken_file_is_one_clear_error(env, tmp_path):
    path = tmp_path / "nodes.yaml"
    path.write_text("nodes:\n  - name: edge-1\n    host: [\n")
    result = discover(env, str(path))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().startswith(f"Error: {path}: not valid YAML (")
    assert "line 4" in result.stderr
    assert rows(env) == []


def test_startup_discovery_runs_in_any_app_process(env, tmp_path):
    path = write(tmp_path, [{"name": "edge-1", "host": "10.0.0.1",
                             "ssh_password": "s3cret-pass"}])
    startup = {**env, "NODES_FILE": path, "DISCOVER_NODES_AT_STARTUP": "true"}
    flask_cli(startup, "users", "list")
    assert [r[0] for r in rows(env)] == ["edge-1"]
    assert "unchanged" in flask_cli(startup, "nodes", "discover")
    assert len(rows(env)) == 1
