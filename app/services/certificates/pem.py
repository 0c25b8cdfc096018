"""Reading and making certificate chains, apart from the database: whatever reaches a
node's files passes :func:`parse_chain` first, whether uploaded, made here or issued
by a CA."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from app.errors import ValidationError
from app.models.base import utcnow

MAX_PEM_BYTES = 64 * 1024
MAX_CHAIN_LENGTH = 10


@dataclass(frozen=True)
class ParsedChain:
    chain_pem: str
    key_pem: str
    names: list[str]
    not_before: datetime
    not_after: datetime
    issuer: str
    serial: str
    fingerprint: str


def _name_matches(pattern: str, name: str) -> bool:
    """RFC 6125: a wildcard stands for exactly one left-most label; a wildcard name
    of the site is covered only by the same wildcard."""
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern == name:
        return True
    if pattern.startswith("*.") and not name.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return False


def uncovered(names: list[str], cert_names: list[str]) -> list[str]:
    return [n for n in names if not any(_name_matches(p, n) for p in cert_names)]


def _san_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [n.lower() for n in san.value.get_values_for_type(x509.DNSName)]


def _public_bytes(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_key_type(key: Any) -> None:
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise ValueError(f"the RSA key has {key.key_size} bits; at least 2048 are needed")
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise ValueError("EC keys must use P-256 or P-384")
    elif not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError("the key must be RSA (2048 bits or more) or EC P-256/P-384")


def parse_chain(chain_pem: str, key_pem: str, *, now: datetime | None = None) -> ParsedChain:
    """Check a chain and its key and return them re-encoded (only certificates and
    the key reach the node's files, never surrounding text).

    :raises ValidationError: with ``chain_pem`` or ``key_pem`` saying what is wrong.
    """
    now = now or utcnow()
    for field, value in (("chain_pem", chain_pem), ("key_pem", key_pem)):
        if not isinstance(value, str) or not value.strip():
            raise ValidationError("invalid certificate", {field: "is required"})
        if len(value.encode()) > MAX_PEM_BYTES:
            raise ValidationError("invalid certificate", {field: "must be at most 64 KiB"})
    try:
        certs = x509.load_pem_x509_certificates(chain_pem.encode())
    except ValueError:
        raise ValidationError("invalid certificate", {
            "chain_pem": "is not a PEM certificate chain (-----BEGIN CERTIFICATE----- blocks)"
        }) from None
    if len(certs) > MAX_CHAIN_LENGTH:
        raise ValidationError("invalid certificate", {
            "chain_pem": f"holds {len(certs)} certificates; at most {MAX_CHAIN_LENGTH}"})
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except TypeError:
        raise ValidationError("invalid certificate", {
            "key_pem": "is protected by a password: upload the key without one"}) from None
    except (ValueError, Exception):
        raise ValidationError("invalid certificate", {
            "key_pem": "is not a PEM private key (-----BEGIN PRIVATE KEY-----)"}) from None
    try:
        _check_key_type(key)
    except ValueError as exc:
        raise ValidationError("invalid certificate", {"key_pem": str(exc)}) from None
    for child, parent in zip(certs, certs[1:], strict=False):
        if child.issuer != parent.subject:
            raise ValidationError("invalid certificate", {
                "chain_pem": "the chain is out of order: each certificate must be followed "
                             "by the one that issued it (leaf first)"})
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, Exception):
            raise ValidationError("invalid certificate", {
                "chain_pem": f"{child.subject.rfc4514_string()} is not signed by the next "
                             f"certificate of the chain"}) from None
    leaf = certs[0]
    if _public_bytes(key.public_key()) != _public_bytes(leaf.public_key()):
        raise ValidationError("invalid certificate", {
            "key_pem": "does not belong to the first certificate of the chain (the key "
                       "and the certificate do not match)"})
    for cert in certs:
        who = cert.subject.rfc4514_string() or "the certificate"
        if cert.not_valid_after_utc <= now:
            raise ValidationError("invalid certificate", {
                "chain_pem": f"{who} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"})
        if cert.not_valid_before_utc > now + timedelta(days=1):
            raise ValidationError("invalid certificate", {
                "chain_pem": f"{who} is not valid before "
                             f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"})
    names = _san_names(leaf)
    chain_out = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)
    key_out = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return ParsedChain(
        chain_pem=chain_out, key_pem=key_out, names=names,
        not_before=leaf.not_valid_before_utc, not_after=leaf.not_valid_after_utc,
        issuer=leaf.issuer.rfc4514_string()[:500], serial=format(leaf.serial_number, "x")[:64],
        fingerprint=leaf.fingerprint(hashes.SHA256()).hex(),
    )


def self_signed(names: list[str], days: int) -> tuple[str, str]:
    """A P-256 certificate for every name (chain PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])])
    now = utcnow()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return (cert.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode())
