"""The ACME account of each directory: registered on first use (agreeing to the CA's
terms, with the configured contact) and reused afterwards; its key is stored
encrypted.

Account rows are written on their own connection, so the caller's session and
transaction stay untouched while an order is under way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from app.acme.client import AcmeClient, AcmeIssueError, AcmeSettings, new_account_key
from app.extensions import db
from app.models import AcmeAccount

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredAccount:
    """The account row's values, read before the session lets its connection go."""

    id: int
    key_pem: str
    uri: str
    email: str


def stored_account(directory_url: str) -> StoredAccount | None:
    row = db.session.scalar(select(AcmeAccount).where(AcmeAccount.directory_url == directory_url))
    return None if row is None else StoredAccount(row.id, row.key_pem, row.uri, row.email)


def account_client(settings: AcmeSettings, stored: StoredAccount | None) -> AcmeClient:
    """A client signed in to the directory's account, registering it on first use."""
    if stored is None:
        key_pem = new_account_key()
        client = AcmeClient(settings.directory_url, settings.ca_bundle, key_pem)
        try:
            _refuse_external_binding(client)
            uri = client.register(settings.email)
        except BaseException:
            client.close()
            raise
        _save_account(settings, key_pem, uri)
        return client
    client = AcmeClient(settings.directory_url, settings.ca_bundle, stored.key_pem)
    try:
        account = client.find_account()
        if account is None:  # the CA forgot it (reset, deactivated): register again
            _refuse_external_binding(client)
            uri = client.register(settings.email)
            logger.info("ACME account for %s registered again", settings.directory_url)
        else:
            uri = account.uri
            if stored.email != settings.email:
                client.update_contact(account, settings.email)
    except BaseException:
        client.close()
        raise
    if (uri, settings.email) != (stored.uri, stored.email):
        with db.engine.begin() as conn:
            conn.execute(update(AcmeAccount).where(AcmeAccount.id == stored.id)
                         .values(uri=uri, email=settings.email))
    return client


def _refuse_external_binding(client: AcmeClient) -> None:
    if client.external_account_required():
        raise AcmeIssueError(
            "ca_refused", "this CA requires an external account binding (EAB), which the "
            "control plane does not support; choose another ACME directory")


def _save_account(settings: AcmeSettings, key_pem: str, uri: str) -> None:
    try:
        with db.engine.begin() as conn:
            conn.execute(insert(AcmeAccount).values(
                directory_url=settings.directory_url, email=settings.email, key_pem=key_pem,
                uri=uri))
        logger.info("ACME account registered at %s", settings.directory_url)
    except IntegrityError:
        # Another issuance registered the directory's account at the same moment;
        # its row is kept, this account is used for this order only.
        logger.info("ACME account for %s was registered concurrently",
                    settings.directory_url)
