"""Which columns hold secrets is read from the models, and production refuses to
start without its keys (secrets in the database and their rotation are in
tests/db/test_secrets.py)."""

from app.services import keys


def test_encrypted_columns_are_discovered_from_the_models():
    assert set(keys.encrypted_columns()) == {
        ("users", "totp_secret"), ("nodes", "ssh_private_key"), ("nodes", "ssh_password"),
        ("config_blobs", "content"), ("acme_accounts", "key_pem"),
        ("certificates", "key_pem"), ("dns_providers", "tsig_secret"),
        ("notification_channels", "secret"),
    }


def test_production_refuses_to_start_without_secrets(monkeypatch):
    import pytest

    from app import create_app

    with pytest.raises(RuntimeError, match="SECRET_KEY and ENCRYPTION_KEYS"):
        create_app("production", {"SECRET_KEY": "", "ENCRYPTION_KEYS": ""})
