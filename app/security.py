"""Validators for every value that reaches a proxy config or a remote command,
secret encryption at rest, the password policy and API token hashing.

The validators are deliberately stricter than the RFCs: a value that is legal in
HTTP but meaningful to a config parser (quotes, ``;``, braces, ``$``, backslashes,
control characters) is refused rather than escaped, so that no template ever has
to be trusted to escape correctly.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import shlex
import unicodedata
from typing import Any

import bcrypt
import idna
import pycountry
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from flask import current_app
from sqlalchemy.types import Text, TypeDecorator

# --------------------------------------------------------------------------- #
# Validators: each returns the normalised value or raises ValueError(message). #
# --------------------------------------------------------------------------- #

_LDH_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")
# Printable ASCII without the characters any of our config languages give meaning to.
_SAFE_TEXT = re.compile(r"^[A-Za-z0-9 !#%&()*+,\-./:=?@\[\]^_|~]*$")
_PATH = re.compile(r"^/[A-Za-z0-9._~!*+,=:@%/-]*$")
_USERNAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_FORBIDDEN_HEADERS = {
    "host", "content-length", "transfer-encoding", "connection", "upgrade",
    "keep-alive", "te", "trailer", "proxy-authorization", "proxy-connection",
}
COUNTRY_CODES = frozenset(c.alpha_2 for c in pycountry.countries)
MAX_DOMAIN_LENGTH = 253


def _reject_controls(value: str) -> None:
    if any(unicodedata.category(ch) in {"Cc", "Cf", "Zl", "Zp"} for ch in value):
        raise ValueError("must not contain control or invisible characters")


def validate_domain(value: Any, *, allow_wildcard: bool = False) -> str:
    """Return the ASCII (IDNA A-label) form of a fully qualified domain name.

    Unicode names are accepted in NFC form and converted with IDNA 2008; names that
    only become valid after compatibility mapping (full-width dots, invisible
    characters, mixed case tricks) are refused, because what the user sees must be
    what the proxy serves.
    """
    if not isinstance(value, str) or not value:
        raise ValueError("is required")
    _reject_controls(value)
    if value != value.strip() or " " in value:
        raise ValueError("must not contain spaces")
    name = value.rstrip(".") if value.endswith(".") and not value.endswith("..") else value
    wildcard = False
    if name.startswith("*."):
        if not allow_wildcard:
            raise ValueError("wildcards are not allowed here")
        wildcard, name = True, name[2:]
    if unicodedata.normalize("NFC", name) != name:
        raise ValueError("must be in Unicode NFC form")
    if name.lower() != name:
        name = name.lower()
    try:
        ascii_name = idna.encode(name, uts46=False).decode("ascii")
        round_trip = idna.decode(ascii_name)
    except (idna.IDNAError, UnicodeError, ValueError):
        raise ValueError("is not a valid domain name") from None
    if (name.isascii() and ascii_name != name) or (not name.isascii() and round_trip != name):
        raise ValueError("is not a valid domain name")
    labels = ascii_name.split(".")
    if len(labels) < 2:
        raise ValueError("must be a fully qualified name such as example.com")
    for label in labels:
        if not _LDH_LABEL.fullmatch(label):
            raise ValueError(f"has an invalid label '{label[:70]}'")
    if labels[-1].isdigit():
        raise ValueError("must not end in a numeric label")
    full = ("*." if wildcard else "") + ascii_name
    if len(full) > MAX_DOMAIN_LENGTH:
        raise ValueError(f"must be at most {MAX_DOMAIN_LENGTH} characters")
    return full


def validate_host(value: Any) -> str:
    """A backend or node host: an IP literal or a DNS name (single labels allowed)."""
    if not isinstance(value, str) or not value:
        raise ValueError("is required")
    candidate = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    if "%" in candidate:
        # Python accepts any IPv6 zone ("::1%a;b"); proxies accept none.
        raise ValueError("is not a valid host name or IP address (no IPv6 zone)")
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        pass
    _reject_controls(value)
    name = value.lower().rstrip(".")
    if len(name) > MAX_DOMAIN_LENGTH or not name:
        raise ValueError("is not a valid host name or IP address")
    labels = name.split(".")
    if not all(_LDH_LABEL.fullmatch(label) for label in labels):
        raise ValueError("is not a valid host name or IP address")
    if labels[-1].isdigit():
        raise ValueError("is not a valid IP address")
    return name


def validate_port(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("must be a number between 1 and 65535")
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,5}", value):
        value = int(value)
    if not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError("must be a number between 1 and 65535")
    return value


def validate_int(value: Any, low: int, high: int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"must be a whole number between {low} and {high}")
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,12}", value.strip()):
        value = int(value)
    if not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"must be a whole number between {low} and {high}")
    return value


def validate_cidr(value: Any) -> str:
    """An IPv4/IPv6 network or address; host bits are refused rather than masked."""
    if not isinstance(value, str) or not value or value != value.strip():
        raise ValueError("must be an IP address or network such as 10.0.0.0/8")
    if not re.fullmatch(r"[0-9A-Fa-f.:/]+", value):
        raise ValueError("must be an IP address or network such as 10.0.0.0/8")
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError:
        raise ValueError(f"'{value[:60]}' is not a valid IP address or network") from None


def validate_header_name(value: Any) -> str:
    if not isinstance(value, str) or not _HEADER_NAME.fullmatch(value):
        raise ValueError("header names may use letters, digits and '-' (max 64)")
    if value.lower() in _FORBIDDEN_HEADERS:
        raise ValueError(f"the header '{value}' is managed by the proxy")
    return value


def validate_safe_text(value: Any, *, max_length: int, allow_empty: bool = False) -> str:
    """Free text that ends up inside a config (header values, block reasons)."""
    if not isinstance(value, str):
        raise ValueError("must be text")
    if not value and not allow_empty:
        raise ValueError("is required")
    if len(value) > max_length:
        raise ValueError(f"must be at most {max_length} characters")
    if not _SAFE_TEXT.fullmatch(value):
        raise ValueError(
            "may only use letters, digits, spaces and ! # % & ( ) * + , - . / : = ? @ [ ] ^ _ | ~"
        )
    if value != value.strip():
        raise ValueError("must not start or end with spaces")
    return value


def validate_header_value(value: Any) -> str:
    return validate_safe_text(value, max_length=1024)


def validate_country(value: Any) -> str:
    if not isinstance(value, str) or value.upper() not in COUNTRY_CODES:
        raise ValueError(f"'{str(value)[:10]}' is not an ISO 3166 country code")
    return value.upper()


def validate_path(value: Any, *, max_length: int = 512) -> str:
    """An absolute path (URL path or node file path) with no traversal segment."""
    if not isinstance(value, str) or not _PATH.fullmatch(value) or len(value) > max_length:
        raise ValueError("must be an absolute path of letters, digits and . _ ~ - / only")
    if any(segment in {"..", "."} for segment in value.split("/")):
        raise ValueError("must not contain '.' or '..' segments")
    return value


# Paths in node commands: none of the characters a shell gives a meaning to.
_COMMAND_PATH = re.compile(r"^/[A-Za-z0-9._+/-]*$")
_COMMAND_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})$")


def validate_command_path(value: Any) -> str:
    """A path in a node's test or reload command.  Commands never pass through a
    shell, but an administrator may copy one into a terminal: it must mean the same
    there."""
    if not isinstance(value, str) or len(value) > 255 or not _COMMAND_PATH.fullmatch(value):
        raise ValueError(f"'{str(value)[:60]}' must be an absolute path of letters, digits "
                         "and . _ + - / only")
    if any(segment in {"..", "."} for segment in value.split("/")):
        raise ValueError(f"'{value[:60]}' must not contain '.' or '..' segments")
    return value


def validate_command_address(value: Any) -> str:
    """``host:port`` in a node command (the admin endpoint Caddy's reload talks to)."""
    match = _COMMAND_ADDRESS.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"'{str(value)[:60]}' must be host:port")
    validate_host(match.group(1))
    validate_port(match.group(2))
    return value


def split_command(value: Any) -> list[str]:
    """A command line as its argument list, split as a shell splits words; the list is
    what runs (quoted argument by argument), so nothing in it is shell syntax.

    :raises ValueError: for an empty, overlong or unsplittable line, or one with control
        characters (a newline would end the command in a terminal it is pasted into).
    """
    if not isinstance(value, str) or not value.strip() or len(value) > 512:
        raise ValueError("is required (at most 512 characters)")
    _reject_controls(value)
    try:
        argv = shlex.split(value)
    except ValueError:
        raise ValueError("cannot be split into arguments (is a quote left open?)") from None
    if not argv[0]:
        raise ValueError("must start with a program")
    return argv


_OBJECT_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def validate_object_name(value: Any) -> str:
    """An administrator's name for a node or DNS provider (shown in logs and CLI)."""
    if not isinstance(value, str) or not _OBJECT_NAME.fullmatch(value):
        raise ValueError("1 to 64 lowercase letters, digits, '.', '_' or '-'")
    return value


def validate_basic_auth_username(value: Any) -> str:
    if not isinstance(value, str) or not _USERNAME.fullmatch(value):
        raise ValueError("may use letters, digits, '.', '_' and '-' (1 to 64)")
    return value


_TSIG_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_BASE64 = re.compile(r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$")


def validate_tsig_key_name(value: Any) -> str:
    """A TSIG key name as DNS servers write it (``acme-key``, ``acme._tsig.example.com``):
    a DNS name of letters, digits, '-' and '_' labels; single labels allowed."""
    if not isinstance(value, str) or not value:
        raise ValueError("is required")
    name = value.lower().removesuffix(".")
    if not name or len(name) > MAX_DOMAIN_LENGTH or not all(
        _TSIG_LABEL.fullmatch(label) for label in name.split(".")
    ):
        raise ValueError("must be a DNS name of letters, digits, '-' and '_' (e.g. acme-key)")
    return name


def validate_base64_secret(value: Any, *, min_bytes: int = 16, max_bytes: int = 128) -> str:
    """A key given in base64 (TSIG secrets): canonical padding, no spaces or newlines."""
    if not isinstance(value, str) or not value:
        raise ValueError("is required")
    if len(value) > 4 * max_bytes or not _BASE64.fullmatch(value):
        raise ValueError("must be base64 (letters, digits, '+', '/', '=' padding)")
    size = len(value) // 4 * 3 - value.count("=")
    if not min_bytes <= size <= max_bytes:
        raise ValueError(f"must decode to {min_bytes} to {max_bytes} bytes")
    return value


def validate_secret_text(value: Any, *, max_length: int = 256) -> str:
    """A password that is hashed or encrypted, never placed in a config verbatim."""
    if not isinstance(value, str) or not value:
        raise ValueError("is required")
    if len(value) > max_length:
        raise ValueError(f"must be at most {max_length} characters")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError("must not contain control characters")
    return value


# --------------------------------------------------------------------------- #
# Passwords and tokens                                                          #
# --------------------------------------------------------------------------- #

PASSWORD_MIN_LENGTH = 12
_COMMON_PASSWORDS = frozenset(
    {
        "password1234", "123456789012", "qwertyuiopas", "administrator",
        "passwordpassword", "letmeinletmein", "welcome12345", "changeme1234",
    }
)


def check_password_policy(password: str, username: str = "") -> str:
    """Length over composition (NIST SP 800-63B), plus obvious-guess checks."""
    validate_secret_text(password)
    if len(password) < PASSWORD_MIN_LENGTH:
        raise ValueError(f"must be at least {PASSWORD_MIN_LENGTH} characters")
    if len(set(password)) < 5:
        raise ValueError("is too repetitive")
    if password.lower() in _COMMON_PASSWORDS:
        raise ValueError("is too common")
    if username and username.lower() in password.lower():
        raise ValueError("must not contain the username")
    return password


def generate_password() -> str:
    return secrets.token_urlsafe(18)


def hash_basic_auth_password(password: str) -> str:
    """bcrypt: understood by nginx (libxcrypt), Caddy and Traefik alike."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode()


TOKEN_PREFIX = "rpcc_"


def generate_api_token() -> tuple[str, str, str]:
    """Return (token, display prefix, hash). Tokens carry 256 bits of entropy, so a
    plain SHA-256 is enough and keeps per-request verification cheap."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, token[: len(TOKEN_PREFIX) + 6], hash_api_token(token)


def hash_api_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def tokens_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a, b)


# --------------------------------------------------------------------------- #
# Encryption at rest                                                            #
# --------------------------------------------------------------------------- #


def parse_encryption_keys(raw: str) -> MultiFernet:
    keys = [k.strip() for k in raw.split(",") if k.strip()]
    if not keys:
        raise ValueError("ENCRYPTION_KEYS is empty")
    try:
        return MultiFernet([Fernet(k) for k in keys])
    except (ValueError, TypeError) as exc:
        raise ValueError(f"ENCRYPTION_KEYS holds an invalid Fernet key: {exc}") from None


def fernet() -> MultiFernet:
    return current_app.extensions["rpcc_fernet"]


def encrypt(value: str) -> str:
    return fernet().encrypt(value.encode()).decode()


def decrypt(value: str) -> str:
    try:
        return fernet().decrypt(value.encode()).decode()
    except InvalidToken:
        raise RuntimeError("a secret cannot be decrypted with ENCRYPTION_KEYS") from None


class EncryptedText(TypeDecorator):
    """A text column stored as a Fernet token; the plaintext never reaches SQL."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else encrypt(value)

    def process_result_value(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else decrypt(value)


def normalize_email(value: str) -> str:
    """A syntactically valid e-mail address, normalised. Fleets are run by companies
    with internal mail, so internal and test domains (``ops@corp.internal``,
    ``admin@example.test``) are accepted; names that never carry mail (``.invalid``,
    ``localhost``, mDNS ``.local``) are not. Nothing is looked up.

    :raises ValueError: with the reason.
    """
    from email_validator import EmailNotValidError, validate_email

    try:
        return validate_email(value, check_deliverability=False, globally_deliverable=False,
                              test_environment=True).normalized
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None


# -- backend address policy ------------------------------------------------------------

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud instance metadata services: denied whatever the policy says, unless an
# administrator allows one of them by its exact address.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254"))
# Always denied, unless an allowed network covers them: link-local (metadata lives
# there), loopback (the node itself) and "this host".
DEFAULT_DENIED_NETWORKS = ("169.254.0.0/16", "fe80::/10", "127.0.0.0/8", "::1/128",
                           "0.0.0.0/8", "::/128", "fd00:ec2::254/128",
                           "100.100.100.200/32")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_INET_ATON = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}", re.I)


def parse_networks(value: str) -> tuple[Network, ...]:
    """Comma- or space-separated CIDRs (a bare address is its own /32 or /128).

    :raises ValueError: naming the entry that is not a network.
    """
    networks = []
    for item in re.split(r"[,\s]+", value.strip()):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item[:60]!r} is not an IP network (e.g. 10.0.0.0/8)") from None
    return tuple(networks)


def numeric_address(host: str) -> Address | None:
    """The address a numeric host stands for in any spelling a resolver accepts:
    dotted decimal and IPv6, and also the forms of ``inet_aton`` (one number, hex
    ``0xa9fea9fe``, octal ``0251.0376.0251.0376``, fewer than four parts) that nginx's
    resolver reads as addresses although they look like names."""
    candidate = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(candidate)
    except ValueError:
        pass
    if not _INET_ATON.fullmatch(candidate):
        return None
    parts = candidate.split(".")
    try:
        numbers = [int(p, 16) if p.lower().startswith("0x") else
                   int(p, 8) if len(p) > 1 and p.startswith("0") else int(p) for p in parts]
    except ValueError:
        return None
    limits = [256] * (len(numbers) - 1) + [256 ** (5 - len(numbers))]
    if any(not 0 <= n < limit for n, limit in zip(numbers, limits, strict=True)):
        return None
    value = 0
    for n in numbers[:-1]:
        value = value * 256 + n
    value = value * limits[-1] + numbers[-1]
    return ipaddress.IPv4Address(value)


def _spellings(address: Address) -> list[Address]:
    """The address, and the IPv4 address an IPv6 one carries (mapped, compatible,
    6to4, Teredo, NAT64), since each reaches that IPv4 host."""
    found: list[Address] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        carried = [address.ipv4_mapped, address.sixtofour,
                   *(address.teredo or ()),
                   # NAT64, and IPv4-compatible ::a.b.c.d (but :: and ::1 are not)
                   ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
                   if address in _NAT64 or (int(address) >> 32 == 0 and int(address) > 1)
                   else None]
        found += [a for a in carried if a is not None]
    return found


def backend_refusal(address: Address, denied: tuple[Network, ...],
                    allowed: tuple[Network, ...]) -> str | None:
    """Why a backend may not be ``address`` under the policy, or None if it may.

    An allowed network is an exception to the denied ones; a metadata address is an
    exception only to an allowed network that is that address alone.
    """
    for candidate in _spellings(address):
        if candidate in METADATA_ADDRESSES:
            if not any(n.num_addresses == 1 and candidate in n for n in allowed):
                return f"{candidate} is a cloud metadata address"
            continue
        network = next((n for n in denied if candidate.version == n.version
                        and candidate in n), None)
        if network is not None and not any(candidate.version == n.version and candidate in n
                                           for n in allowed):
            return f"{candidate} is in a network backends may not use ({network})"
    return None
