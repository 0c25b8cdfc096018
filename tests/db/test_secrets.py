"""Secrets at rest: encrypted in the database, readable after key rotation."""

from cryptography.fernet import Fernet
from sqlalchemy import text

from app.extensions import db
from app.models import Node, User
from app.security import parse_encryption_keys
from app.services import keys, nodes
from tests import factories


def _raw(sql: str) -> list[tuple]:
    return [tuple(row) for row in db.session.execute(text(sql))]


def _seed_secrets(app):
    key = factories.ssh_key()
    node = factories.make_node("secret-node", ssh_private_key=key)
    pw_node = nodes.create_node(None, {"name": "pw-node", "host": "127.0.0.9",
                                       "ssh_password": "hunter2-but-longer"})
    user = factories.make_user("client", "totp-user")
    user.totp_secret = "JBSWY3DPEHPK3PXP"
    db.session.commit()
    return key, node.id, pw_node.id, user.id


def test_secrets_are_not_stored_in_plaintext(app, db):
    key, node_id, pw_node_id, user_id = _seed_secrets(app)
    raw_key, raw_pw = _raw(f"SELECT ssh_private_key, ssh_password FROM nodes WHERE id={node_id}")[0]
    assert "PRIVATE KEY" not in raw_key and raw_key.startswith("gAAAA") and raw_pw is None
    (raw_pw,) = _raw(f"SELECT ssh_password FROM nodes WHERE id={pw_node_id}")[0]
    assert "hunter2" not in raw_pw and raw_pw.startswith("gAAAA")
    (raw_totp,) = _raw(f"SELECT totp_secret FROM users WHERE id={user_id}")[0]
    assert "JBSWY3DP" not in raw_totp
    (pw_hash,) = _raw(f"SELECT password_hash FROM users WHERE id={user_id}")[0]
    assert factories.PASSWORD not in pw_hash
    db.session.expire_all()
    assert db.session.get(Node, node_id).ssh_private_key.strip() == key.strip()


def test_key_rotation_keeps_every_secret_readable(app, db):
    key, node_id, pw_node_id, user_id = _seed_secrets(app)
    old_keys = app.config["ENCRYPTION_KEYS"]
    before = _raw(f"SELECT ssh_private_key FROM nodes WHERE id={node_id}")[0][0]
    new_key = Fernet.generate_key().decode()
    app.extensions["rpcc_fernet"] = parse_encryption_keys(f"{new_key},{old_keys}")
    try:
        counts = keys.rotate_all()
        assert counts["nodes.ssh_private_key"] == 1
        assert counts["nodes.ssh_password"] == 1
        assert counts["users.totp_secret"] == 1
        after = _raw(f"SELECT ssh_private_key FROM nodes WHERE id={node_id}")[0][0]
        assert after != before
        # Only the new key is needed from now on.
        app.extensions["rpcc_fernet"] = parse_encryption_keys(new_key)
        db.session.expire_all()
        assert db.session.get(Node, node_id).ssh_private_key.strip() == key.strip()
        assert db.session.get(Node, pw_node_id).ssh_password == "hunter2-but-longer"
        assert db.session.get(User, user_id).totp_secret == "JBSWY3DPEHPK3PXP"
    finally:
        app.extensions["rpcc_fernet"] = parse_encryption_keys(f"{new_key},{old_keys}")


def test_rotation_command_reports_counts(app, db):
    _seed_secrets(app)
    result = app.test_cli_runner().invoke(args=["keys", "rotate"])
    assert result.exit_code == 0, result.output
    assert "nodes.ssh_private_key: 1 re-encrypted" in result.output
