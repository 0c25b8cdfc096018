"""Certificates: what each site serves over TLS, where it came from (self-signed,
uploaded, or an ACME CA), and keeping it valid.

A certificate change is deployed with the site's configuration (the same atomic
deployment), so a node never holds a certificate its config does not name.  A failed
issuance or renewal changes nothing on the nodes: the previous certificate stays in
the database and on the nodes until a new one is obtained.

Chains are read and made in :mod:`.pem`, stored and shown in :mod:`.stored`, ordered
from an ACME CA in :mod:`.ordering` (with the directory's account from
:mod:`.accounts`), and issued and renewed in :mod:`.renewal`.  This module is the
package's only door: other modules import these names, never the submodules.
"""

from app.acme.client import AcmeIssueError, AcmeSettings
from app.services.certificates.ordering import Issued, issue
from app.services.certificates.renewal import renew_due, request_certificate, wait
from app.services.certificates.stored import (
    aware,
    certificate_to_dict,
    get_site_certificate,
    sync_site,
    upload_certificate,
)

__all__ = [
    "AcmeIssueError",
    "AcmeSettings",
    "Issued",
    "aware",
    "certificate_to_dict",
    "get_site_certificate",
    "issue",
    "renew_due",
    "request_certificate",
    "sync_site",
    "upload_certificate",
    "wait",
]
