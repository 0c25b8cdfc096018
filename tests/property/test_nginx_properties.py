"""Properties of the nginx engine over generated sites, judged by the real nginx.

Site data is generated the way users type it and goes through the product's own
validators (``app/security.py``, applied as ``app/services/sites.py`` applies them);
only values that pass build a ``SiteSpec``.  Then:

(a) every such node of sites renders a configuration that the real ``nginx -t``
    (ModSecurity and GeoIP2 loaded) accepts without a warning, and each server block
    names exactly its site's domain and aliases;
(b) a value carrying a character nginx gives a meaning to is refused by its
    validator, and, forced into a ``SiteSpec`` past the validator, makes
    ``ENGINE.render`` raise ``ValueError`` instead of writing it into a file.

``HYPOTHESIS_PROFILE`` is not read: the profiles below keep the run near 20 s.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.engines.base import BackendSpec, NodeSpec, SiteSpec
from app.engines.nginx import ENGINE
from app.models import BackendProtocol, GeoMode, SslMode, WafLevel
from app.security import (
    COUNTRY_CODES,
    hash_basic_auth_password,
    validate_basic_auth_username,
    validate_cidr,
    validate_country,
    validate_domain,
    validate_header_name,
    validate_header_value,
    validate_host,
    validate_int,
    validate_port,
    validate_safe_text,
    validate_secret_text,
)
from tests.hostile import CIDR_GARBAGE, HEADER_VALUES, INJECTION_STRINGS
from tests.nginx_node import NginxPrefix, self_signed

# Each example runs the real nginx -t (20 to 150 ms; the Core Rule Set is the cost).
settings.register_profile("nginx-t", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
# Rendering only: cheap, so many more examples.
settings.register_profile("nginx-render", max_examples=300, deadline=None)
REAL_NGINX = settings.get_profile("nginx-t")
RENDER_ONLY = settings.get_profile("nginx-render")

CERTIFICATE = self_signed(["property.example.com"])
# A few passwords, each hashed once: bcrypt costs 50 ms a hash.
PASSWORDS = ("correct horse battery", "s3cret-enough", "Ünïcode pässword")


def passing(validator: Callable[..., Any], **options: Any) -> Callable[[Any], Any]:
    """The validator's result, or None where it refuses (filtered out afterwards)."""
    def attempt(value: Any) -> Any:
        try:
            return validator(value, **options)
        except ValueError:
            return None
    return attempt


def validated(raw: st.SearchStrategy[Any], validator: Callable[..., Any],
              **options: Any) -> st.SearchStrategy[Any]:
    """Only what the product's validator accepts, in the form it returns."""
    return raw.map(passing(validator, **options)).filter(lambda value: value is not None)


@functools.cache
def bcrypt_hash(password: str) -> str:
    return hash_basic_auth_password(validate_secret_text(password, max_length=128))


# --- what users type -----------------------------------------------------------------

# Up to 63 characters a label, so that some names near the 253-character limit.
ascii_label = st.from_regex(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?", fullmatch=True)
unicode_label = st.text(alphabet="abcdeéüßøåжπ中文", min_size=1, max_size=8)
top_level = st.sampled_from(["com", "org", "net", "de", "io", "xn--p1ai", "example"])
raw_domain = st.builds(lambda labels, tld: ".".join([*labels, tld]),
                       st.lists(st.one_of(ascii_label, unicode_label), min_size=1, max_size=4),
                       top_level)
domains = validated(raw_domain, validate_domain)
aliases = validated(st.one_of(raw_domain, raw_domain.map("*.{}".format)), validate_domain,
                    allow_wildcard=True)
# Host names other than localhost would need DNS when nginx loads the configuration.
hosts = validated(st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str),
                            st.ip_addresses(v=6).map("[{}]".format), st.just("localhost")),
                  validate_host)
ports = validated(st.one_of(st.integers(1, 65535), st.integers(1, 65535).map(str)),
                  validate_port)
backends = st.builds(BackendSpec, hosts, ports,
                     validated(st.integers(1, 100), validate_int, low=1, high=100))
networks = validated(
    st.one_of(st.tuples(st.ip_addresses(v=4), st.integers(0, 32)),
              st.tuples(st.ip_addresses(v=6), st.integers(0, 128))).map(
        lambda pair: str(ipaddress.ip_network(f"{pair[0]}/{pair[1]}", strict=False))),
    validate_cidr)
SAFE_TEXT = "abcXYZ019 !#%&()*+,-./:=?@[]^_|~"
header_names = validated(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}", fullmatch=True),
                         validate_header_name)
header_values = validated(st.text(alphabet=SAFE_TEXT, min_size=1, max_size=40),
                          validate_header_value)
countries = validated(st.sampled_from(sorted(COUNTRY_CODES)).flatmap(
    lambda code: st.sampled_from([code, code.lower()])), validate_country)
usernames = validated(st.from_regex(r"[A-Za-z0-9._-]{1,16}", fullmatch=True),
                      validate_basic_auth_username)
reasons = validated(st.text(alphabet=SAFE_TEXT, min_size=1, max_size=80), validate_safe_text,
                    max_length=500)


@st.composite
def site_settings(draw: st.DrawFn) -> dict[str, Any]:
    """One site's cleaned settings, obeying the service's cross-field rules."""
    domain = draw(domains)
    ssl_mode = draw(st.sampled_from([m.value for m in SslMode]))
    tls = ssl_mode != SslMode.NONE
    geo_mode = draw(st.sampled_from([m.value for m in GeoMode]))
    rate = draw(st.none() | st.tuples(validated(st.integers(1, 100_000), validate_int,
                                                low=1, high=100_000),
                                      validated(st.integers(0, 100_000), validate_int,
                                                low=0, high=100_000)))
    # Mostly proxied: a blocked site renders none of its other settings.
    blocked = draw(st.sampled_from((False, False, False, True)))
    return {
        "domain": domain,
        "aliases": tuple(draw(st.lists(aliases.filter(lambda a: a != domain), max_size=3,
                                       unique=True))),
        "backends": tuple(draw(st.lists(backends, min_size=1, max_size=3))),
        "backend_protocol": draw(st.sampled_from([p.value for p in BackendProtocol])),
        "ssl_mode": ssl_mode,
        "certificate": CERTIFICATE if tls and draw(st.booleans()) else None,
        "force_https": tls and draw(st.booleans()),
        "hsts": tls and draw(st.booleans()),
        "http2": draw(st.booleans()),
        "websocket": draw(st.booleans()),
        "waf_level": draw(st.sampled_from([w.value for w in WafLevel])),
        "cache_enabled": draw(st.booleans()),
        "cache_ttl": draw(validated(st.integers(1, 31_536_000), validate_int,
                                    low=1, high=31_536_000)),
        "geo_mode": geo_mode,
        "geo_countries": tuple(draw(st.lists(countries, min_size=geo_mode != GeoMode.OFF,
                                             max_size=4, unique=True))),
        "ip_allow": tuple(draw(st.lists(networks, max_size=3, unique=True))),
        "ip_deny": tuple(draw(st.lists(networks, max_size=3, unique=True))),
        "basic_auth": tuple(
            (user, bcrypt_hash(password)) for user, password in draw(st.lists(
                st.tuples(usernames, st.sampled_from(PASSWORDS)), max_size=2,
                unique_by=lambda entry: entry[0])) if user),
        "rate_limit_rps": rate[0] if rate else None,
        "rate_limit_burst": rate[1] if rate else 0,
        "headers": tuple(draw(st.lists(st.tuples(header_names, header_values), max_size=3,
                                       unique_by=lambda header: header[0].lower()))),
        "blocked": blocked,
        "blocked_reason": draw(reasons) if blocked else "",
    }


def all_names_distinct(sites: list[dict[str, Any]]) -> bool:
    """The service refuses a name another site already serves."""
    names = [name for site in sites for name in (site["domain"], *site["aliases"])]
    return len(names) == len(set(names))


nodes = st.lists(site_settings(), min_size=1, max_size=5).filter(all_names_distinct)


@pytest.fixture(scope="module")
def prefix() -> Iterator[NginxPrefix]:
    scratch = NginxPrefix("127.0.0.2")
    scratch.use_geoip({"127.0.0.0/8": "US"})
    yield scratch
    scratch.remove()


@REAL_NGINX
@given(sites=nodes)
def test_validated_sites_pass_nginx_t_and_serve_exactly_their_names(prefix, sites):
    specs = [SiteSpec(id=n, owner_id=1, config_version=n, **site)
             for n, site in enumerate(sites, 1)]
    rendered = ENGINE.render(prefix.spec, specs)
    prefix.check(rendered)
    for spec in specs:
        (conf,) = [rendered.files[path] for path in rendered.site_files[spec.id]
                   if path.endswith(".conf")]
        lines = re.findall(r"^    server_name (.*);$", conf, flags=re.MULTILINE)
        assert lines == [" ".join((spec.domain, *spec.aliases))] * (
            2 if spec.serves_tls else 1)


# --- what must never get through -------------------------------------------------------

# Characters nginx gives a meaning to anywhere, quoted or not (line and paragraph
# separators, NEL and zero-width characters included: nothing invisible either).
NGINX_META = '"\\$;{}\n\r\t\x00\x0b\x0c\x7f\x85\u2028\u2029\u200b\u00a0'
# What also splits a bare token.
TOKEN_BREAKERS = NGINX_META + " '#"
BASE = SiteSpec(id=1, owner_id=1, domain="base.example.com",
                backends=(BackendSpec("192.0.2.10", 8080),))
BASE_NODE = NodeSpec(name="property", proxy_type="nginx", config_dir="/etc/nginx/rpcc",
                     test_command="nginx -t", reload_command="nginx -s reload",
                     listen_address="192.0.2.1")


def injected(valid: st.SearchStrategy[str], chars: str) -> st.SearchStrategy[str]:
    """A value that passed validation with dangerous characters spliced in."""
    return st.builds(
        lambda value, at, bad: value[:at % (len(value) + 1)] + bad + value[at % (len(value) + 1):],
        valid, st.integers(0, 300), st.text(alphabet=chars, min_size=1, max_size=3))


def known(payloads: list[str], chars: str) -> list[str]:
    """tests/hostile.py's payloads that hold a character dangerous in this field."""
    return [p for p in payloads if any(c in chars for c in p)]


# field: (valid values, validator, dangerous characters there, payloads from
#         tests/hostile.py, the site that carries a raw value past the validator)
FIELDS: dict[str, tuple[st.SearchStrategy[str], Callable[[Any], Any], str, list[str],
                        Callable[[str], SiteSpec]]] = {
    "domain": (domains, validate_domain, TOKEN_BREAKERS, INJECTION_STRINGS,
               lambda v: replace(BASE, domain=v)),
    "alias": (aliases, functools.partial(validate_domain, allow_wildcard=True),
              TOKEN_BREAKERS, INJECTION_STRINGS, lambda v: replace(BASE, aliases=(v,))),
    "backend host": (hosts, validate_host, TOKEN_BREAKERS, INJECTION_STRINGS,
                     lambda v: replace(BASE, backends=(BackendSpec(v, 80),))),
    "ip_allow": (networks, validate_cidr, TOKEN_BREAKERS, CIDR_GARBAGE,
                 lambda v: replace(BASE, ip_allow=(v,))),
    "ip_deny": (networks, validate_cidr, TOKEN_BREAKERS, CIDR_GARBAGE,
                lambda v: replace(BASE, ip_deny=(v,))),
    "header name": (header_names, validate_header_name, TOKEN_BREAKERS, HEADER_VALUES,
                    lambda v: replace(BASE, headers=((v, "1"),))),
    "header value": (header_values, validate_header_value, NGINX_META, HEADER_VALUES,
                     lambda v: replace(BASE, headers=(("X-Test", v),))),
    "country": (countries, validate_country, TOKEN_BREAKERS, INJECTION_STRINGS,
                lambda v: replace(BASE, geo_mode="deny", geo_countries=(v,))),
    # htpasswd lines: a colon ends the name, a line break starts another entry.
    "basic auth user": (usernames, validate_basic_auth_username, ":\n\r\x00\x85\u2028",
                        INJECTION_STRINGS,
                        lambda v: replace(BASE, basic_auth=((v, bcrypt_hash(PASSWORDS[0])),))),
}


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_hostile_values_are_refused_and_never_rendered(field):
    valid, validator, dangerous, payloads, carry = FIELDS[field]
    hostile = st.one_of(injected(valid, dangerous), st.sampled_from(known(payloads, dangerous)))

    @RENDER_ONLY
    @given(value=hostile)
    def check(value: str) -> None:
        with pytest.raises(ValueError):
            validator(value)
        with pytest.raises(ValueError):
            ENGINE.render(BASE_NODE, [carry(value)])

    check()


@pytest.mark.parametrize("host", ["fe80::1%eth0", "::1%a;b", "::1%x\n}", "[::1%$host]"])
def test_ipv6_scope_ids_are_refused_as_backend_hosts(host):
    with pytest.raises(ValueError):
        validate_host(host)
