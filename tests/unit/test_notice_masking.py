"""Notices never carry an IP address and mask every domain name, whatever the text."""

from __future__ import annotations

import pytest

from app.services.notifiers import NOTIFIERS, mask
from app.services.notifiers.masking import ADDRESS_WORD


@pytest.mark.parametrize(("text", "expected"), [
    ("shop.example.com", "s**p.e*****e.com"),
    ("SHOP.Example.COM is down", "s**p.e*****e.com is down"),
    ("see https://shop.example.co.uk/path?q=1", "see https://s**p.e*****e.co.uk/path?q=1"),
    ("bücher.example.de", "b****r.e*****e.de"),
    ("xn--bcher-kva.example.de.", "x***********a.e*****e.de."),
    ("a.example.com and ab.cd.org", "a.e*****e.com and ab.cd.org"),
    ("co.uk alone names no one", "co.uk alone names no one"),
    ("mail ops@shop.example.com", "mail ops@s**p.e*****e.com"),
])
def test_domain_names_keep_first_and_last_characters_and_the_public_suffix(
        text: str, expected: str) -> None:
    assert mask(text) == expected


@pytest.mark.parametrize("address", [
    "10.1.2.3", "192.168.0.1:8080", "fe80::1%eth0", "[2001:db8::1]:443", "::1",
    "::ffff:10.0.0.1", "2001:DB8:0:0:0:0:0:1", "[fe80::1%25eth0]", "http://[::1]:80/x",
])
def test_ip_addresses_become_a_word(address: str) -> None:
    masked = mask(f"node at {address}, then.")
    assert ADDRESS_WORD in masked
    for part in ("10.1", "192.168", "fe80", "2001", "::1", "db8"):
        assert part not in masked.lower()


def test_prose_and_times_stay_readable() -> None:
    assert mask("At 12:30:45 the rollout stopped, e.g. on 3 of 4 nodes.") == (
        "At 12:30:45 the rollout stopped, e.g. on 3 of 4 nodes.")


@pytest.mark.parametrize(("kind", "target", "shown"), [
    ("telegram", "123456789", "1*******9"),
    ("telegram", "@opschannel", "@*********l"),
    ("email", "alice@shop.example.com", "a***e@s**p.e*****e.com"),
    ("webhook", "https://hooks.example.com/services/T0/B0/key", "https://h***s.e*****e.com/…"),
    ("webhook", "http://127.0.0.9:8080/hook?token=x", f"http://{ADDRESS_WORD}:8080/…"),
    ("webhook", "https://[2001:db8::1]/", f"https://{ADDRESS_WORD}"),
])
def test_channel_lists_show_targets_masked(kind: str, target: str, shown: str) -> None:
    assert NOTIFIERS[kind].shown_target(target) == shown
