"""Rotation of the encryption keys for secrets at rest."""

from __future__ import annotations

from sqlalchemy import Integer, Text, column, select, table

from app.extensions import db
from app.security import EncryptedText, fernet
from app.services import audit


def encrypted_columns() -> list[tuple[str, str]]:
    """Every (table, column) stored as an EncryptedText, found from the models so
    that a new secret column is rotated without editing this module."""
    found = []
    for model_table in db.metadata.sorted_tables:
        for model_column in model_table.columns:
            if isinstance(model_column.type, EncryptedText):
                found.append((model_table.name, model_column.name))
    return found


def rotate_all() -> dict[str, int]:
    """Decrypt with any configured key and re-encrypt with the first.  Works on the
    raw ciphertext through a plain-Text view of each table, in one transaction: a
    failure leaves every secret as it was."""
    multi = fernet()
    counts: dict[str, int] = {}
    for table_name, column_name in encrypted_columns():
        raw = table(table_name, column("id", Integer), column(column_name, Text))
        secret = raw.c[column_name]
        rows = db.session.execute(select(raw.c.id, secret).where(secret.isnot(None))).all()
        for row_id, token in rows:
            new_token = multi.rotate(token.encode()).decode()
            db.session.execute(raw.update().where(raw.c.id == row_id).values(
                {column_name: new_token}))
        counts[f"{table_name}.{column_name}"] = len(rows)
    audit.record(None, "keys.rotate", "keys", "", {"columns": counts})
    db.session.commit()
    return counts
