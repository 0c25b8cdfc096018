"""services.discovery: nodes.yaml creates or updates nodes, reports each bad entry,
and never duplicates a node."""

import logging
import threading
import uuid

import pytest
import yaml
from sqlalchemy import func, select, text

from app.errors import ValidationError
from app.extensions import db
from app.models import AuditLog, Node, Pool, ProxyType
from app.services import discovery, nodes
from tests import factories
from tests.conftest import make_app


def write(tmp_path, document, name="nodes.yaml"):
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
    return str(path)


def entry(name="edge-1", **extra):
    return {"name": name, "host": "10.0.0.1", "ssh_password": "s3cret-pass", **extra}


def node_names():
    return list(db.session.scalars(select(Node.name).order_by(Node.name)))


def test_new_entries_create_discovered_nodes_with_audit(db, tmp_path):
    key = factories.ssh_key()
    path = write(tmp_path, {"nodes": [
        entry("edge-1", proxy_type="caddy", ssh_port=2222, enabled=False),
        {"name": "edge-2", "host": "Edge-2.Example.NET", "ssh_private_key": key},
    ]})
    report = discovery.discover_nodes(path)
    assert report.created == ["edge-1", "edge-2"] and report.ok
    assert report.updated == {} and report.unchanged == []
    one = db.session.scalar(select(Node).where(Node.name == "edge-1"))
    assert one.is_discovered and one.proxy_type == ProxyType.CADDY and one.ssh_port == 2222
    assert one.enabled is False and one.ssh_password == "s3cret-pass"
    assert one.config_dir == "/etc/caddy/rpcc.d" and one.pool.name == "default"
    two = db.session.scalar(select(Node).where(Node.name == "edge-2"))
    assert two.host == "edge-2.example.net" and two.ssh_private_key == key.strip() + "\n"
    entries = db.session.scalars(select(AuditLog).where(AuditLog.action == "node.create")).all()
    assert {(e.username, e.user_id, e.details["name"]) for e in entries} == {
        ("system", None, "edge-1"), ("system", None, "edge-2")}


def test_secrets_are_stored_encrypted(db, tmp_path):
    discovery.discover_nodes(write(tmp_path, [entry()]))
    raw = db.session.execute(text("SELECT ssh_password FROM nodes WHERE name = 'edge-1'"))
    assert raw.scalar_one().startswith("gAAAA")


def test_running_twice_gives_the_same_rows(db, tmp_path):
    path = write(tmp_path, {"nodes": [entry("edge-1"), entry("edge-2", host="10.0.0.2")]})
    discovery.discover_nodes(path)
    before = db.session.execute(select(Node.id, Node.name, Node.host).order_by(Node.id)).all()
    audits = db.session.scalar(select(func.count(AuditLog.id)))
    report = discovery.discover_nodes(path)
    assert report.created == [] and report.updated == {}
    assert report.unchanged == ["edge-1", "edge-2"]
    assert db.session.execute(select(Node.id, Node.name, Node.host).order_by(Node.id)).all() \
        == before
    assert db.session.scalar(select(func.count(AuditLog.id))) == audits


def test_only_fields_in_the_entry_change(db, tmp_path):
    node = factories.make_node("edge-1", ssh_port=2200, glances_url="http://10.0.0.9:61208")
    key = node.ssh_private_key
    node.is_discovered = True
    db.session.commit()
    report = discovery.discover_nodes(write(tmp_path, [{"name": "edge-1", "host": "10.9.9.9",
                                                        "test_command": "nginx -t -q"}]))
    assert report.updated == {"edge-1": ["host", "test_command"]}
    fresh = db.session.get(Node, node.id)
    assert fresh.host == "10.9.9.9" and fresh.test_command == "nginx -t -q"
    assert fresh.ssh_port == 2200 and fresh.glances_url == "http://10.0.0.9:61208"
    assert fresh.ssh_private_key == key and fresh.ssh_password is None
    audit = db.session.scalars(select(AuditLog).where(AuditLog.action == "node.update")).all()
    assert [a.details["fields"] for a in audit] == [["host", "test_command"]]
    assert audit[0].username == "system"


def test_a_manual_node_with_the_same_name_is_adopted_not_duplicated(db, tmp_path):
    node = factories.make_node("edge-1", host="10.0.0.1")
    assert not node.is_discovered
    report = discovery.discover_nodes(write(tmp_path, [{"name": "edge-1", "host": "10.0.0.1"}]))
    assert report.updated == {"edge-1": ["is_discovered"]}
    assert node_names() == ["edge-1"]
    assert db.session.get(Node, node.id).is_discovered
    assert discovery.discover_nodes(write(tmp_path, [{"name": "edge-1"}])).unchanged == ["edge-1"]


def test_a_changed_secret_counts_as_a_change_and_is_never_in_the_report_values(db, tmp_path):
    path = write(tmp_path, [entry()])
    discovery.discover_nodes(path)
    report = discovery.discover_nodes(write(tmp_path, [entry(ssh_password="an0ther-pass")]))
    assert report.updated == {"edge-1": ["ssh_password"]}
    assert "an0ther" not in repr(report)
    assert db.session.scalar(select(Node).where(Node.name == "edge-1")).ssh_password \
        == "an0ther-pass"


HOSTILE = [
    ({"test_command": "nginx -t; rm -rf /"}, "test_command"),
    ({"reload_command": "nginx -s reload && curl evil"}, "reload_command"),
    ({"name": "edge-1\nserver { }"}, "name"),
    ({"host": "10.0.0.1;"}, "host"),
    ({"host": "$(id)"}, "host"),
    ({"config_dir": "/etc/nginx/../../root"}, "config_dir"),
    ({"ssh_port": "22; rm"}, "ssh_port"),
    ({"ssh_user": "root\nx"}, "ssh_user"),
    ({"proxy_type": "apache"}, "proxy_type"),
    ({"listen_address": "0.0.0.0 evil"}, "listen_address"),
    ({"glances_url": "http://user:pw@10.0.0.1:61208"}, "glances_url"),
    ({"enabled": "sometimes"}, "enabled"),
    ({"ssh_private_key": "not a key"}, "ssh_private_key"),
]


@pytest.mark.parametrize("change,field", HOSTILE)
def test_hostile_values_make_the_entry_invalid_and_store_nothing(db, tmp_path, change, field):
    path = write(tmp_path, [{**entry("bad-1"), **change}, entry("good-1")])
    report = discovery.discover_nodes(path)
    assert report.created == ["good-1"]
    [bad] = report.invalid
    assert bad.index == 0 and bad.section == "nodes" and field in bad.fields, bad.fields
    assert node_names() == ["good-1"]


def test_every_reason_of_an_entry_is_reported(db, tmp_path):
    path = write(tmp_path, [{"name": "bad-1", "host": "a b", "ssh_port": 0,
                             "test_command": "x;y", "colour": "blue"}])
    [bad] = discovery.discover_nodes(path).invalid
    assert bad.name == "bad-1"
    assert set(bad.fields) == {"host", "ssh_port", "test_command", "colour", "ssh_private_key"}
    assert bad.fields["colour"] == "unknown field"


def test_unknown_keys_are_refused_also_for_existing_nodes(db, tmp_path):
    factories.make_node("edge-1")
    report = discovery.discover_nodes(write(tmp_path, [{"name": "edge-1", "hots": "10.0.0.5"},
                                                       {"name": "edge-2", "status": "online",
                                                        "host": "10.0.0.2",
                                                        "ssh_password": "s3cret-pass"}]))
    assert [(e.index, e.name, e.fields) for e in report.invalid] == [
        (0, "edge-1", {"hots": "unknown field"}), (1, "edge-2", {"status": "unknown field"})]
    assert node_names() == ["edge-1"]


def test_an_entry_that_is_not_a_mapping_is_reported(db, tmp_path):
    report = discovery.discover_nodes(write(tmp_path, ["edge-1", entry("edge-2")]))
    assert report.created == ["edge-2"]
    assert [(e.index, e.name, list(e.fields)) for e in report.invalid] == [(0, None, ["_"])]


def test_a_missing_pool_makes_the_entry_invalid(db, tmp_path):
    report = discovery.discover_nodes(write(tmp_path, [entry(pool="nowhere")]))
    [bad] = report.invalid
    assert bad.fields == {"pool": "no pool named 'nowhere'"}
    assert node_names() == []


def test_the_pools_section_creates_missing_pools_first_and_once(db, tmp_path):
    db.session.add(Pool(name="asia", description="kept as is"))
    db.session.commit()
    path = write(tmp_path, {
        "nodes": [entry("edge-1", pool="europe"), entry("edge-2", pool="asia")],
        "pools": [{"name": "europe", "description": "EU edge"},
                  {"name": "asia", "description": "ignored for an existing pool"}],
    })
    report = discovery.discover_nodes(path)
    assert report.pools_created == ["europe"] and report.created == ["edge-1", "edge-2"]
    pools = dict(db.session.execute(select(Pool.name, Pool.description)).all())
    assert pools == {"default": "Default pool", "europe": "EU edge", "asia": "kept as is"}
    again = discovery.discover_nodes(path)
    assert again.pools_created == [] and again.unchanged == ["edge-1", "edge-2"]
    assert db.session.scalar(select(func.count(Pool.id))) == 3
    assert db.session.scalar(
        select(func.count(AuditLog.id)).where(AuditLog.action == "pool.create")) == 1


def test_invalid_pool_entries_are_reported_and_their_nodes_too(db, tmp_path):
    path = write(tmp_path, {
        "pools": [{"name": "Bad Pool"}, {"name": "ok", "colour": "red"}, "x"],
        "nodes": [entry(pool="Bad Pool")],
    })
    report = discovery.discover_nodes(path)
    assert [(e.section, e.index, list(e.fields)) for e in report.invalid] == [
        ("pools", 0, ["name"]), ("pools", 1, ["colour"]), ("pools", 2, ["_"]),
        ("nodes", 0, ["pool"])]
    assert db.session.scalar(select(func.count(Pool.id))) == 1


def test_duplicate_names_in_the_file_apply_none_of_them(db, tmp_path):
    path = write(tmp_path, [entry("edge-1"), entry("edge-2"),
                            entry("edge-1", host="10.0.0.9", ssh_port=0)])
    report = discovery.discover_nodes(path)
    assert report.created == ["edge-2"]
    assert [(e.index, e.name) for e in report.invalid] == [(0, "edge-1"), (2, "edge-1")]
    reason = "appears more than once in the file (entries 0, 2)"
    assert report.invalid[0].fields == {"name": reason}
    assert set(report.invalid[1].fields) == {"name", "ssh_port"}
    assert report.invalid[1].fields["name"] == reason
    assert node_names() == ["edge-2"]


def test_a_key_written_twice_in_an_entry_is_a_file_error(db, tmp_path):
    path = write(tmp_path, "nodes:\n  - name: edge-1\n    host: 10.0.0.1\n    host: 10.0.0.2\n")
    with pytest.raises(ValidationError, match="found the key 'host' twice at line 4"):
        discovery.discover_nodes(path)


@pytest.mark.parametrize("text,message", [
    ("nodes: [\n  - name: x\n", "not valid YAML"),
    ("just a string\n", "must be a list of nodes"),
    ("", "must be a list of nodes"),
    ("nodes: {name: x}\n", "'nodes' must be a list"),
    ("pools: []\n", "'nodes' must be a list"),
    ("nodes: []\npools: x\n", "'pools' must be a list"),
    ("nodez: []\n", "unknown top-level key 'nodez'"),
    ("\xff\xfe garbage", "cannot be read"),
])
def test_a_file_that_is_not_an_inventory_gives_one_clear_error(db, tmp_path, text, message):
    path = tmp_path / "nodes.yaml"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ValidationError, match=message):
        discovery.discover_nodes(str(path))
    assert node_names() == []


def test_a_missing_file_is_a_clear_error(db, tmp_path):
    with pytest.raises(ValidationError, match="cannot be read"):
        discovery.discover_nodes(str(tmp_path / "absent.yaml"))


def test_yaml_errors_never_quote_the_file(db, tmp_path):
    key = factories.ssh_key()
    text = "nodes:\n  - name: x\n    ssh_private_key: " + key.splitlines()[1] + " : [\n"
    with pytest.raises(ValidationError) as info:
        discovery.discover_nodes(write(tmp_path, text))
    assert key.splitlines()[1][:20] not in info.value.message


def test_a_bare_list_is_accepted(db, tmp_path):
    assert discovery.discover_nodes(write(tmp_path, [entry()])).created == ["edge-1"]
    assert discovery.discover_nodes(write(tmp_path, "[]\n")).ok


def test_the_key_file_is_read_relative_to_the_inventory(db, tmp_path):
    key = factories.ssh_key()
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "edge-1").write_text(key)
    path = write(tmp_path, [{"name": "edge-1", "host": "10.0.0.1",
                             "ssh_private_key_file": "keys/edge-1"}])
    assert discovery.discover_nodes(path).created == ["edge-1"]
    node = db.session.scalar(select(Node).where(Node.name == "edge-1"))
    assert node.ssh_private_key == key.strip() + "\n"
    assert discovery.discover_nodes(path).unchanged == ["edge-1"]
    (tmp_path / "keys" / "edge-1").write_text(factories.ssh_key())
    assert discovery.discover_nodes(path).updated == {"edge-1": ["ssh_private_key"]}


@pytest.mark.parametrize("setup,value,reason", [
    (None, "keys/absent", "cannot be read"),
    ("not a key", "bad.key", "must be a PEM or OpenSSH private key"),
    (b"\xff" * 100, "bad.key", "must be a PEM or OpenSSH private key"),
    (b"x" * (discovery.MAX_KEY_FILE_BYTES + 1), "bad.key", "too large"),
    (None, 42, "must be a file path"),
])
def test_an_unusable_key_file_is_reported_on_that_field(db, tmp_path, setup, value, reason):
    if setup is not None:
        data = setup.encode() if isinstance(setup, str) else setup
        (tmp_path / "bad.key").write_bytes(data)
    path = write(tmp_path, [{"name": "edge-1", "host": "10.0.0.1",
                             "ssh_private_key_file": value}])
    [bad] = discovery.discover_nodes(path).invalid
    assert list(bad.fields) == ["ssh_private_key_file"] and reason in bad.fields[
        "ssh_private_key_file"]
    assert node_names() == []


def test_a_key_and_a_key_file_together_are_refused(db, tmp_path):
    (tmp_path / "k").write_text(factories.ssh_key())
    path = write(tmp_path, [{"name": "edge-1", "host": "10.0.0.1", "ssh_private_key_file": "k",
                             "ssh_private_key": factories.ssh_key()}])
    [bad] = discovery.discover_nodes(path).invalid
    assert "not both" in bad.fields["ssh_private_key_file"]


def test_a_node_created_meanwhile_by_another_process_is_updated(db, tmp_path, monkeypatch):
    """The race the unique name settles: the lookup misses, another worker commits the
    node, our insert hits the constraint and the entry becomes an update."""
    factories.make_node("edge-1", host="10.0.0.1")
    real_lookup = discovery._node_named
    misses = iter([True])
    monkeypatch.setattr(discovery, "_node_named",
                        lambda name: None if next(misses, False) else real_lookup(name))
    monkeypatch.setattr(nodes, "_check_name_free", lambda name, exclude_id: None)
    report = discovery.discover_nodes(write(tmp_path, [entry("edge-1", host="10.0.0.7")]))
    assert report.created == [] and report.ok
    assert report.updated == {"edge-1": ["host", "is_discovered", "ssh_password"]}
    assert node_names() == ["edge-1"]


def test_concurrent_runs_never_duplicate(app, db, tmp_path):
    names = [f"edge-{i}-{uuid.uuid4().hex[:6]}" for i in range(5)]
    path = write(tmp_path, {"pools": [{"name": "race", "description": ""}],
                            "nodes": [entry(n, pool="race") for n in names]})
    runs = 4
    barrier = threading.Barrier(runs)
    reports, errors = [], []

    def run() -> None:
        with app.app_context():
            try:
                barrier.wait()
                reports.append(discovery.discover_nodes(path))
            except Exception as exc:  # noqa: BLE001 - surfaced by the assert below
                errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(runs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors and len(reports) == runs
    assert all(r.ok for r in reports), [r.invalid for r in reports]
    db.session.expire_all()
    assert node_names() == sorted(names)
    assert sum(len(r.created) for r in reports) == len(names)
    assert sum(len(r.pools_created) for r in reports) == 1
    assert db.session.scalar(select(func.count(Pool.id)).where(Pool.name == "race")) == 1


def test_startup_discovery_runs_once_when_enabled(db, tmp_path, startup_log):
    path = write(tmp_path, [entry()])
    make_app(DISCOVER_NODES_AT_STARTUP=True, NODES_FILE=path)
    assert node_names() == ["edge-1"]
    assert "1 node(s) created, 0 updated, 0 unchanged, 0 invalid" in startup_log.text


def test_startup_discovery_is_off_by_default(db, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, [entry()])
    make_app()
    assert node_names() == []


@pytest.fixture()
def startup_log(caplog, monkeypatch):
    """The migrations' logging.config.fileConfig disables loggers that existed before
    it ran; these tests need ours back."""
    for name in ("app", "app.services.discovery"):
        monkeypatch.setattr(logging.getLogger(name), "disabled", False)
    caplog.set_level(logging.INFO)
    return caplog


@pytest.mark.parametrize("document", ["nodes: [\n", "- {name: edge-1, host: 'a b'}\n"])
def test_a_bad_file_at_startup_is_logged_not_fatal(db, tmp_path, startup_log, document):
    path = write(tmp_path, document)
    make_app(DISCOVER_NODES_AT_STARTUP=True, NODES_FILE=path)
    assert path in startup_log.text and node_names() == []


def test_a_missing_file_at_startup_is_logged_not_fatal(db, tmp_path, startup_log):
    make_app(DISCOVER_NODES_AT_STARTUP=True, NODES_FILE=str(tmp_path / "absent.yaml"))
    assert "absent.yaml does not exist" in startup_log.text
