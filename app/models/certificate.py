"""Certificates the sites serve, the ACME accounts that obtained them, the DNS
providers that answer DNS-01 challenges, and every issuance attempt."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.extensions import db
from app.models.base import TimestampMixin, enum_column, utcnow
from app.models.site import Site
from app.security import EncryptedText


class CertificateStatus(enum.StrEnum):
    PENDING = "pending"
    VALID = "valid"
    FAILED = "failed"


class CertificateProvider(enum.StrEnum):
    SELF_SIGNED = "self_signed"
    UPLOADED = "uploaded"
    ACME = "acme"


class AcmeChallenge(enum.StrEnum):
    HTTP01 = "http-01"
    DNS01 = "dns-01"


class Certificate(TimestampMixin, db.Model):
    """The one certificate a site serves.  Renewal replaces the PEMs in place; the
    attempts keep the history."""

    __tablename__ = "certificates"

    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"),
                                         unique=True)
    provider: Mapped[CertificateProvider] = mapped_column(
        enum_column(CertificateProvider, name="certificate_provider"))
    challenge: Mapped[AcmeChallenge | None] = mapped_column(
        enum_column(AcmeChallenge, name="certificate_challenge"), nullable=True)
    status: Mapped[CertificateStatus] = mapped_column(
        enum_column(CertificateStatus, name="certificate_status"),
        default=CertificateStatus.PENDING)
    domains: Mapped[list[str]] = mapped_column(JSON, default=list)
    # The chain (leaf first) and key currently served; empty until the first success.
    chain_pem: Mapped[str] = mapped_column(Text, default="")
    key_pem: Mapped[str | None] = mapped_column(EncryptedText, nullable=True)
    not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    not_after: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True,
                                                       index=True)
    issuer: Mapped[str] = mapped_column(String(500), default="")
    serial: Mapped[str] = mapped_column(String(64), default="")
    fingerprint_sha256: Mapped[str] = mapped_column(String(64), default="")
    # The ACME directory it came from (renewal goes back there).
    acme_directory: Mapped[str] = mapped_column(String(500), default="")
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                             nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    # What kind of problem it was (app.acme.client.AcmeIssueError codes, or "invalid").
    last_error_code: Mapped[str] = mapped_column(String(32), default="")
    # Set while an issuance runs (in whichever process): claimed by a conditional
    # UPDATE so that two never run at once for one certificate.
    issuing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                           nullable=True)
    # Consecutive failures, and when the scheduler may try again (backoff).
    failures: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                             nullable=True, index=True)

    site: Mapped[Site] = relationship(back_populates="certificate")
    attempts: Mapped[list[CertificateAttempt]] = relationship(
        back_populates="certificate", cascade="all, delete-orphan", passive_deletes=True,
        order_by="CertificateAttempt.id.desc()")


class CertificateAttempt(db.Model):
    """One issuance or renewal attempt, kept for the site's history."""

    __tablename__ = "certificate_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    certificate_id: Mapped[int] = mapped_column(
        ForeignKey("certificates.id", ondelete="CASCADE"), index=True)
    # issue | renew
    kind: Mapped[str] = mapped_column(String(16))
    triggered_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    ok: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    error: Mapped[str] = mapped_column(Text, default="")

    certificate: Mapped[Certificate] = relationship(back_populates="attempts")


class AcmeAccount(db.Model):
    """One registered account per ACME directory; its key signs every request."""

    __tablename__ = "acme_accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    directory_url: Mapped[str] = mapped_column(String(500), unique=True)
    email: Mapped[str] = mapped_column(String(254), default="")
    key_pem: Mapped[str] = mapped_column(EncryptedText)
    uri: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DnsProvider(TimestampMixin, db.Model):
    """Where DNS-01 records for a zone are written (RFC 2136 dynamic update)."""

    __tablename__ = "dns_providers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(32), default="rfc2136")
    zone: Mapped[str] = mapped_column(String(253), unique=True)
    server: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer, default=53)
    tsig_name: Mapped[str] = mapped_column(String(253), default="")
    tsig_algorithm: Mapped[str] = mapped_column(String(32), default="hmac-sha256")
    tsig_secret: Mapped[str | None] = mapped_column(EncryptedText, nullable=True)
