"""What a notice may say about names and addresses: no IP address at all, and domain
names with only the first and last character of each label and the public suffix
kept (``shop.example.com`` becomes ``s**p.e*****e.com``).  Notices leave the control
plane for chat services, mailboxes and other people's servers; a reader learns that
something happened to which site of theirs, and nothing an attacker could aim at.

Pure: text in, text out.  Every notifier sends only what :func:`mask` returned.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from publicsuffixlist import PublicSuffixList

ADDRESS_WORD = "[address]"

_SUFFIXES = PublicSuffixList()
# Anything shaped like IPv6 (with an embedded IPv4 tail, a zone, brackets); what does
# not parse as an address (a time of day, "a::b" in prose) is left alone.
_IPV6 = re.compile(
    r"\[[0-9A-Fa-f:.]+(?:%[\w-]+(?:\.[\w-]+)*)?\]"
    r"|(?<![\w:.%])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{1,4})?"
    r"(?:%[\w-]+(?:\.[\w-]+)*)?(?![\w:]|\.\d)")
# Four dotted numbers are an address whatever their values: a notice never needs them.
_IPV4 = re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?![\w])")
# Dotted names whose last label starts with a letter (Unicode letters included, for
# names written as IDNs); a sentence's final full stop is not part of the name.
_NAME = re.compile(r"(?<![\w.-])(?:[^\W_](?:[\w-]*[^\W_])?\.)+[^\W\d_](?:[\w-]*[^\W_])?")


def mask(text: str) -> str:
    """``text`` with every IP address replaced by a word and every domain name masked."""
    text = _IPV6.sub(_address_or_same, text)
    text = _IPV4.sub(ADDRESS_WORD, text)
    return _NAME.sub(lambda m: mask_name(m.group(0)), text)


def mask_name(name: str) -> str:
    """One domain name masked label by label, its public suffix kept; a name that is
    itself a public suffix (``co.uk``) names no one and stays."""
    lowered = name.lower()
    suffix = _SUFFIXES.publicsuffix(lowered) or lowered.rpartition(".")[2]
    if suffix == lowered:
        return lowered
    labels = lowered[: -len(suffix) - 1].split(".")
    return ".".join([*(mask_word(label) for label in labels), suffix])


def mask_word(word: str) -> str:
    """``word`` with only its first and last characters kept (two or fewer stay)."""
    if len(word) <= 2:
        return word
    return word[0] + "*" * (len(word) - 2) + word[-1]


def mask_url(url: str) -> str:
    """A URL reduced to its scheme, its masked host and port, and "/…" for any path or
    query (where services often put a key)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        host = mask_name(host) if "." in host else mask_word(host)
    else:
        host = ADDRESS_WORD
    port = f":{parts.port}" if parts.port is not None else ""
    rest = "/…" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{host}{port}{rest}"


def mask_address(address: str) -> str:
    """An e-mail address with its local part and its domain masked."""
    local, _, domain = address.rpartition("@")
    return f"{mask_word(local)}@{mask_name(domain)}" if local else mask_word(address)


def _address_or_same(match: re.Match[str]) -> str:
    candidate = match.group(0).strip("[]")
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return match.group(0)
    return ADDRESS_WORD
