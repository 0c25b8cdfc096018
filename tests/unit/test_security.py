"""Validators in app/security.py: the last line before a proxy config or a command."""

import pytest

from app import security
from tests.hostile import CIDR_GARBAGE, HEADER_VALUES, INJECTION_STRINGS


@pytest.mark.parametrize("value,expected", [
    ("example.com", "example.com"),
    ("Sub.Example.COM", "sub.example.com"),
    ("example.com.", "example.com"),
    ("bücher.example", "xn--bcher-kva.example"),
    ("xn--bcher-kva.example", "xn--bcher-kva.example"),
    ("a-b.c-d.example.org", "a-b.c-d.example.org"),
])
def test_valid_domains_are_normalised_to_ascii(value, expected):
    assert security.validate_domain(value) == expected


@pytest.mark.parametrize("value", [v for v in INJECTION_STRINGS if v != "*.example.com"]
                         + ["localhost", "example", "1.2.3.4", "example.123", "", None, 42])
def test_hostile_or_malformed_domains_are_refused(value):
    with pytest.raises(ValueError):
        security.validate_domain(value)


def test_wildcard_only_where_allowed():
    assert security.validate_domain("*.example.com", allow_wildcard=True) == "*.example.com"
    with pytest.raises(ValueError):
        security.validate_domain("*.example.com")
    with pytest.raises(ValueError):
        security.validate_domain("a.*.example.com", allow_wildcard=True)


def test_domain_length_limit():
    label = "a" * 63
    name = ".".join([label] * 3) + ".com"  # 195 chars: fine
    assert security.validate_domain(name) == name
    with pytest.raises(ValueError):
        security.validate_domain(".".join([label] * 4) + ".com")  # 260 chars


@pytest.mark.parametrize("value,expected", [
    ("127.0.0.1", "127.0.0.1"), ("[::1]", "::1"), ("2001:DB8::1", "2001:db8::1"),
    ("backend", "backend"), ("app-1.internal", "app-1.internal"),
])
def test_hosts(value, expected):
    assert security.validate_host(value) == expected


@pytest.mark.parametrize("value", ["a b", "a;b", "$(id)", "a\nb", "1.2.3.999", "h:80", "", None])
def test_bad_hosts(value):
    with pytest.raises(ValueError):
        security.validate_host(value)


@pytest.mark.parametrize("value", [0, 65536, -1, True, "80;", "x", 1.5, None])
def test_bad_ports(value):
    with pytest.raises(ValueError):
        security.validate_port(value)


def test_ports_accept_numeric_strings_from_forms():
    assert security.validate_port("8080") == 8080


@pytest.mark.parametrize("value", CIDR_GARBAGE)
def test_cidr_garbage_is_refused(value):
    with pytest.raises(ValueError):
        security.validate_cidr(value)


def test_cidrs_are_normalised():
    assert security.validate_cidr("10.0.0.0/8") == "10.0.0.0/8"
    assert security.validate_cidr("192.0.2.7") == "192.0.2.7/32"
    assert security.validate_cidr("2001:DB8::/32") == "2001:db8::/32"


@pytest.mark.parametrize("value", HEADER_VALUES)
def test_header_values_with_config_syntax_are_refused(value):
    with pytest.raises(ValueError):
        security.validate_header_value(value)


def test_ordinary_header_values_pass():
    for value in ["nosniff", "max-age=31536000, includeSubDomains", "https://a.example/x?y=1"]:
        assert security.validate_header_value(value) == value


@pytest.mark.parametrize("value", ["Host", "content-length", "X Bad", "X:Bad", "", "a" * 65])
def test_header_names_refused(value):
    with pytest.raises(ValueError):
        security.validate_header_name(value)


def test_countries():
    assert security.validate_country("us") == "US"
    for bad in ["XX", "USA", "", "U;", None]:
        with pytest.raises(ValueError):
            security.validate_country(bad)


@pytest.mark.parametrize("value", ["relative", "/a/../b", "/a/./b", "/a b", "/a;b", "/a\n",
                                   "/$x", "/{x}", "/a'b"])
def test_paths_refused(value):
    with pytest.raises(ValueError):
        security.validate_path(value)


def test_password_policy():
    assert security.check_password_policy("long enough passphrase", "bob")
    for bad, username in [("short", ""), ("aaaaaaaaaaaaaaaa", ""), ("password1234", ""),
                          ("bob-is-my-password", "bob"), ("line\nbreak-password", "")]:
        with pytest.raises(ValueError):
            security.check_password_policy(bad, username)


def test_api_tokens_are_random_and_hashed():
    token, prefix, token_hash = security.generate_api_token()
    other, _, _ = security.generate_api_token()
    assert token != other and token.startswith(prefix)
    assert token_hash == security.hash_api_token(token) and token not in token_hash


def test_basic_auth_hash_is_bcrypt():
    assert security.hash_basic_auth_password("secret-password").startswith("$2b$")


@pytest.mark.parametrize("address", ["ops@corp.internal", "admin@example.test",
                                     "noc@corp.lan", "Ops@Example.COM"])
def test_internal_and_test_mail_domains_are_accepted(address):
    assert security.normalize_email(address).split("@")[0] == address.split("@")[0]


@pytest.mark.parametrize("address", ["a@x.invalid", "a@localhost", "a@host.local", "bad@@x",
                                     "no-at-sign", "a@b@c.com", "a b@example.com"])
def test_addresses_that_never_carry_mail_are_refused(address):
    with pytest.raises(ValueError):
        security.normalize_email(address)
