"""Hostile payloads per site field, shared by the service, API and UI tests.

Each entry is (field, value) where value is what an attacker would send in the API
field; the UI tests send the same strings through the form.
"""

from __future__ import annotations

from typing import Any

INJECTION_STRINGS = [
    "example.com\nserver { }",
    "example.com;",
    "a;b.example.com",
    "{example}.com",
    "ex\"ample.com",
    "ex'ample.com",
    "$host.example.com",
    "`id`.example.com",
    "exam\x00ple.com",
    ("a" * 64) + ".example.com",
    "a." * 127 + "com",
    "xn--ls8h.example.com\u200b",
    "ｅｘａｍｐｌｅ．ｃｏｍ",
    "exa\u200dmple.com",
    "../../etc/passwd",
    "example.com/../../x",
    "example.com\r\nX-Injected: 1",
    "-example.com",
    "example-.com",
    "*.example.com",
    "xn--zz.example.com",
]

HEADER_VALUES = [
    "value\r\nX-Injected: 1", "a;b", "{x}", "\"quoted\"", "'single'", "$remote_addr",
    "`id`", "nul\x00byte", "back\\slash", "x" * 2000, "new\nline",
]

CIDR_GARBAGE = [
    "10.0.0.0/33", "10.0.0.1/8", "999.1.1.1", "1.2.3.4; deny all", "::1/129",
    "10.0.0.0/8\n", "all", "", "1.2.3.4/8 ", "0x7f.1",
]


def hostile_site_payloads() -> list[tuple[str, str, Any]]:
    """(error-field prefix, API field, hostile value) triples."""
    cases: list[tuple[str, str, Any]] = []
    for value in INJECTION_STRINGS:
        if value == "*.example.com":
            continue  # wildcards are legal for aliases but not for the domain
        cases.append(("domain", "domain", value))
    for value in INJECTION_STRINGS:
        if value == "*.example.com":
            continue
        cases.append(("aliases", "aliases", [value]))
    for host in ["127.0.0.1;", "host name", "a\nb", "$(id)", "`id`", "{x}", "'x'", "\"x\"",
                 "evil.com:80", "a" * 300, "1.2.3.4/32", "../x", "x\x00y"]:
        cases.append(("backends", "backends", [{"host": host, "port": 80, "weight": 1}]))
    for port in [0, 65536, -1, "80;", "80 ", "8o", True, 1.5, None]:
        cases.append(("backends", "backends", [{"host": "127.0.0.1", "port": port}]))
    for weight in [0, 101, "1;", -5]:
        cases.append(("backends", "backends",
                      [{"host": "127.0.0.1", "port": 80, "weight": weight}]))
    for value in CIDR_GARBAGE:
        cases.append(("ip_allow", "ip_allow", [value]))
        cases.append(("ip_deny", "ip_deny", [value]))
    for value in ["XX", "us;", "U S", "usa", "", "\"US\"", "U\x00"]:
        cases.append(("geo", "geo", {"mode": "deny", "countries": [value]}))
    cases.append(("geo", "geo", {"mode": "allow; deny all", "countries": ["US"]}))
    for value in HEADER_VALUES:
        cases.append(("headers", "headers", {"X-Test": value}))
    for name in ["X Test", "X-Test:", "X;Test", "Host", "X-Test\r\n", "{x}", "$x", "Ä-Header",
                 "Transfer-Encoding", "x" * 100]:
        cases.append(("headers", "headers", {name: "ok"}))
    for username in ["a:b", "a b", "a;b", "a\nb", "", "$x", "{x}", "'x'", "x" * 100]:
        cases.append(("basic_auth", "basic_auth", [{"username": username,
                                                    "password": "long-enough-pw"}]))
    for password in ["short", "new\nline-password", "nul\x00password-x", "x" * 500]:
        cases.append(("basic_auth", "basic_auth", [{"username": "user", "password": password}]))
    for rate in [{"requests_per_second": 0, "burst": 1},
                 {"requests_per_second": "10r/s;", "burst": 1},
                 {"requests_per_second": 10, "burst": -1},
                 {"requests_per_second": 10, "burst": "5; x"}]:
        cases.append(("rate_limit", "rate_limit", rate))
    for ttl in [0, -1, "60;", "1h", 10**12]:
        cases.append(("cache", "cache", {"enabled": True, "ttl": ttl}))
    for key, value in [("backend_protocol", "http; evil"), ("ssl_mode", "auto"),
                       ("acme_challenge", "http-01;rm"),
                       ("waf_level", "paranoid"), ("force_https", "yes"), ("http2", 1),
                       ("websocket", "true"), ("pool", "default;"), ("pool", "../etc"),
                       ("pool", "no-such-pool")]:
        cases.append((key, key, value))
    return cases
