"""The inventory at the top of the repository is what ``nodes discover`` reads by
default: as shipped it lists no node, so running discovery changes nothing, and its
commented example, once uncommented, is an inventory the discovery accepts."""

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from app.models import Node, Pool
from app.services import discovery

INVENTORY = Path(__file__).resolve().parents[2] / "nodes.yaml"


def test_the_shipped_inventory_changes_nothing(app, db):
    assert app.config["NODES_FILE"] == "nodes.yaml"
    report = discovery.discover_nodes(str(INVENTORY))
    assert (report.created, report.updated, report.pools_created) == ([], {}, [])
    assert db.session.query(Node).count() == 0


def test_the_commented_example_is_an_inventory_discovery_accepts(app, db, tmp_path):
    """Uncommented, with a real key at the path it names: the pool and the first two
    nodes are created; the third entry's key is a placeholder and is refused."""
    example = INVENTORY.read_text().split("# Example:\n#\n", 1)[1]
    text = "\n".join(line[2:] if line.startswith("# ") else line[1:]
                     for line in example.splitlines())
    (tmp_path / "keys").mkdir()
    key = Ed25519PrivateKey.generate().private_bytes(
        Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption())
    (tmp_path / "keys" / "edge-eu-1").write_bytes(key)
    path = tmp_path / "nodes.yaml"
    path.write_text(text)
    report = discovery.discover_nodes(str(path))
    assert report.pools_created == ["edge-eu"]
    assert sorted(report.created) == ["edge-eu-1", "edge-eu-2"]
    assert [entry.name for entry in report.invalid] == ["lab-1"]
    assert {n.name: n.pool.name for n in db.session.query(Node)} == {
        "edge-eu-1": "edge-eu", "edge-eu-2": "edge-eu"}
    assert db.session.query(Pool).filter_by(name="edge-eu").count() == 1
