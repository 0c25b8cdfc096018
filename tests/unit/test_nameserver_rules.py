"""The resolver lists every DNS check reads, and how a nameserver check judges what
DNS answered against what administrators expect (pure: no DNS, no database)."""

from __future__ import annotations

import pytest

from app.models import NameserverStatus
from app.services.nameservers import Expectations, Lookup, judge
from app.services.resolvers import ResolverAddress, parse_resolvers


@pytest.mark.parametrize(("text", "expected"), [
    ("192.0.2.53", [ResolverAddress("192.0.2.53", 53)]),
    ("127.0.0.1:5300, 192.0.2.53", [ResolverAddress("127.0.0.1", 5300),
                                    ResolverAddress("192.0.2.53", 53)]),
    ("[2001:db8::53]:5353\n2001:db8::54", [ResolverAddress("2001:db8::53", 5353),
                                          ResolverAddress("2001:db8::54", 53)]),
    (" 10.0.0.1  10.0.0.1:53 ,, ", [ResolverAddress("10.0.0.1", 53)]),
    ("", []),
])
def test_resolver_lists_take_addresses_with_optional_ports(text: str,
                                                           expected: list[ResolverAddress]) -> None:
    assert list(parse_resolvers(text)) == expected


@pytest.mark.parametrize(("text", "reason"), [
    ("dns.example.net", "is not an IP address"),
    ("127.0.0.1:0", "port that is not a number between 1 and 65535"),
    ("127.0.0.1:65536", "port that is not a number"),
    ("127.0.0.1:", "port that is not a number"),
    ("[2001:db8::1", "is not an address such as [2001:db8::53]:53"),
    ("[2001:db8::1]x", "is not an address such as"),
    ("fe80::1%eth0", "names an IPv6 zone"),
    ("127.1", "is not an IP address"),
    ("1.2.3.4:53;rm", "port that is not a number"),
])
def test_resolver_lists_refuse_anything_but_addresses_naming_the_entry(text: str,
                                                                       reason: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_resolvers(text)
    assert reason in str(refused.value)
    assert text.strip()[:20] in str(refused.value)


def test_resolver_lists_are_bounded() -> None:
    with pytest.raises(ValueError, match="at most 16 resolvers"):
        parse_resolvers(",".join(f"192.0.2.{n}" for n in range(1, 18)))


def test_an_address_prints_as_it_is_typed_back() -> None:
    servers = parse_resolvers("[::1]:5300 ::1 127.0.0.1 127.0.0.1:5300")
    assert [str(server) for server in servers] == ["[::1]:5300", "[::1]", "127.0.0.1",
                                                   "127.0.0.1:5300"]
    assert parse_resolvers([str(server) for server in servers]) == servers


EXPECT = Expectations(("ns1.global.net", "ns2.global.net"),
                      {"example.com": ("ns1.example.com",),
                       "dev.example.com": ("ns1.dev.example.com", "ns2.dev.example.com")})


def test_the_longest_configured_zone_is_chosen_label_by_label() -> None:
    assert EXPECT.zone_of("www.example.com") == "example.com"
    assert EXPECT.zone_of("api.dev.example.com") == "dev.example.com"
    assert EXPECT.zone_of("dev.example.com") == "dev.example.com"
    assert EXPECT.zone_of("evil-example.com") == ""
    assert EXPECT.zone_of("example.com.evil.net") == ""
    assert EXPECT.for_name("shop.example.org") == ("ns1.global.net", "ns2.global.net")


def test_the_same_nameservers_in_any_order_are_ok() -> None:
    outcome = judge("www.other.org", Lookup("other.org", ("ns2.global.net", "ns1.global.net")),
                    EXPECT)
    assert outcome.status == NameserverStatus.OK
    assert (outcome.zone, outcome.error) == ("other.org", "")
    assert outcome.expected == ["ns1.global.net", "ns2.global.net"]


def test_a_zones_own_list_outranks_the_global_one() -> None:
    outcome = judge("www.example.com", Lookup("example.com", ("ns1.global.net",
                                                              "ns2.global.net")), EXPECT)
    assert outcome.status == NameserverStatus.MISMATCH
    assert outcome.expected == ["ns1.example.com"]
    assert outcome.error == ("zone example.com is served by ns1.global.net, ns2.global.net "
                             "(missing ns1.example.com; not expected ns1.global.net, "
                             "ns2.global.net)")


def test_one_nameserver_missing_is_a_mismatch_naming_it() -> None:
    outcome = judge("api.dev.example.com", Lookup("dev.example.com", ("ns1.dev.example.com",)),
                    EXPECT)
    assert outcome.status == NameserverStatus.MISMATCH
    assert outcome.error == ("zone dev.example.com is served by ns1.dev.example.com "
                             "(missing ns2.dev.example.com)")


def test_a_name_that_does_not_exist_is_an_error_even_when_its_zone_is_fine() -> None:
    outcome = judge("gone.example.com", Lookup("example.com", ("ns1.example.com",),
                                               missing=True), EXPECT)
    assert outcome.status == NameserverStatus.ERROR
    assert outcome.error == ("gone.example.com does not exist in zone example.com (NXDOMAIN): "
                             "add a record for it there")
    assert outcome.found == ["ns1.example.com"]


def test_a_lookup_that_failed_is_an_error_with_its_reason() -> None:
    outcome = judge("www.example.com", Lookup(error="the DNS resolvers did not answer "
                                                    "within 5 s (timeout)"), EXPECT)
    assert outcome.status == NameserverStatus.ERROR
    assert outcome.error == "the DNS resolvers did not answer within 5 s (timeout)"
    assert outcome.expected == ["ns1.example.com"]  # what its configured zone expects


def test_a_zone_nobody_set_expectations_for_is_an_error_saying_so() -> None:
    outcome = judge("www.other.org", Lookup("other.org", ("ns1.other.org",)),
                    Expectations((), {"example.com": ("ns1.example.com",)}))
    assert outcome.status == NameserverStatus.ERROR
    assert outcome.error.startswith("no nameservers are expected for zone other.org: an "
                                    "administrator sets them in Settings")


def test_messages_fit_their_column() -> None:
    many = tuple(f"ns{n}.a-rather-long-nameserver-name.example.net" for n in range(20))
    outcome = judge("www.example.com", Lookup("example.com", many), EXPECT)
    assert outcome.status == NameserverStatus.MISMATCH
    assert len(outcome.error) == 300
