"""A small private PKI for certificate tests: a root, an intermediate and leaves
with chosen names and validity, as PEM text."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class Issuer:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> str:
        return pem(self.cert)


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def key_pem(key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> str:
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             encryption).decode()


def _build(subject: str, issuer: Issuer | None, key: ec.EllipticCurvePrivateKey, *,
           ca: bool, names: list[str] = (), not_before: datetime | None = None,
           not_after: datetime | None = None) -> x509.Certificate:
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder()
               .subject_name(name)
               .issuer_name(issuer.cert.subject if issuer else name)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before or now - timedelta(hours=1))
               .not_valid_after(not_after or now + timedelta(days=90))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    return builder.sign(issuer.key if issuer else key, hashes.SHA256())


def root(subject: str = "Test Root") -> Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    return Issuer(_build(subject, None, key, ca=True), key)


def intermediate(parent: Issuer, subject: str = "Test Intermediate",
                 not_after: datetime | None = None) -> Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    return Issuer(_build(subject, parent, key, ca=True, not_after=not_after), key)


def leaf(issuer: Issuer, names: list[str], *, not_before: datetime | None = None,
         not_after: datetime | None = None) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    return _build(names[0], issuer, key, ca=False, names=names, not_before=not_before,
                  not_after=not_after), key
