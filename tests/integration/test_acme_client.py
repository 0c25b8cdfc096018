"""The ACME client against a real Pebble: every error a CA gives ends as the
AcmeIssueError code its message belongs to.

Tokens are served by a small HTTP server on 127.0.0.31 (the fleet itself is in the
integration tests); Pebble's DNS (challtestsrv) points names at it or elsewhere.
Answers Pebble never gives (a rate limit) come through a relay in front of it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from app.acme.client import AcmeClient, AcmeIssueError, new_account_key
from tests.pebble import ChallTestSrv, Pebble, ProblemRelay, make_tls_files
from tests.processes import free_port

WEB = "127.0.0.31"
NOWHERE = "127.0.0.99"
BLOCKED = "blocked.example.com"


class TokenServer:
    """Answers ``/.well-known/acme-challenge/<token>`` from :attr:`tokens`."""

    def __init__(self, address: str, port: int) -> None:
        tokens: dict[str, str] = {}
        self.tokens = tokens

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                token = self.path.rsplit("/", 1)[-1]
                body = tokens.get(token)
                self.send_response(200 if body is not None else 404)
                data = (body or "not found").encode()
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer((address, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def web() -> Iterator[TokenServer]:
    server = TokenServer(WEB, free_port(WEB))
    yield server
    server.close()


@pytest.fixture(scope="module")
def dns() -> Iterator[ChallTestSrv]:
    server = ChallTestSrv(default_ipv4=WEB)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pebble(web: TokenServer, dns: ChallTestSrv) -> Iterator[Pebble]:
    server = Pebble(http_port=web.server.server_address[1], dns_server=dns.dns_server,
                    blocklist=[BLOCKED])
    yield server
    server.stop()


@pytest.fixture()
def client(pebble: Pebble) -> Iterator[AcmeClient]:
    acme = AcmeClient(pebble.directory_url, pebble.ca_bundle, new_account_key())
    acme.register("ops@example.com")
    yield acme
    acme.close()


def csr_for(*names: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                          critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


def obtain(client: AcmeClient, web: TokenServer, *names: str,
           content: Callable[[str], str | None] = lambda validation: validation) -> str:
    """One order through the client, the token server answering ``content`` of the
    right key authorization (None: no file)."""
    order, authorizations = client.new_order(csr_for(*names), "http-01")
    for authz in authorizations:
        assert authz.challenge is not None
        body = content(authz.validation)
        if body is not None:
            web.tokens[authz.challenge.chall.encode("token")] = body
    deadline = time.monotonic() + 60
    client.answer(authorizations)
    client.wait_for_validation(authorizations, "http-01", deadline)
    return client.finalize(order, deadline)


def failure(call: Callable[[], object]) -> AcmeIssueError:
    with pytest.raises(AcmeIssueError) as caught:
        call()
    return caught.value


def test_a_certificate_for_every_name(client: AcmeClient, web: TokenServer) -> None:
    chain = x509.load_pem_x509_certificates(
        obtain(client, web, "a.example.com", "b.example.com").encode())
    names = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(names.get_values_for_type(x509.DNSName)) == ["a.example.com", "b.example.com"]
    assert len(chain) >= 2  # leaf, then the intermediate


def test_a_name_the_ca_forbids_is_refused_with_its_reason(
        client: AcmeClient, web: TokenServer) -> None:
    error = failure(lambda: obtain(client, web, "ok.example.com", BLOCKED))
    assert error.code == "ca_refused"
    assert str(error).startswith("the CA refused creating the order: ")
    assert "forbidden by policy" in str(error) and BLOCKED in str(error)


def test_a_wrong_token_is_a_challenge_the_ca_could_not_fetch(
        client: AcmeClient, web: TokenServer) -> None:
    error = failure(lambda: obtain(client, web, "wrong.example.com",
                                   content=lambda validation: "something else"))
    assert error.code == "challenge_unreachable"
    assert "wrong.example.com" in str(error) and "did not match" in str(error)


def test_a_missing_token_is_a_challenge_the_ca_could_not_fetch(
        client: AcmeClient, web: TokenServer) -> None:
    error = failure(lambda: obtain(client, web, "missing.example.com",
                                   content=lambda validation: None))
    assert error.code == "challenge_unreachable"
    assert "404" in str(error)


def test_a_name_pointing_nowhere_is_unreachable(
        client: AcmeClient, web: TokenServer, dns: ChallTestSrv) -> None:
    dns.set_a("away.example.com", [NOWHERE])
    try:
        error = failure(lambda: obtain(client, web, "away.example.com"))
    finally:
        dns.clear_a("away.example.com")
    assert error.code == "challenge_unreachable"
    assert NOWHERE in str(error) and "connection refused" in str(error)


def test_a_name_that_does_not_resolve_is_not_pointing(
        client: AcmeClient, web: TokenServer, dns: ChallTestSrv) -> None:
    dns.set_servfail("broken.example.com")
    try:
        error = failure(lambda: obtain(client, web, "broken.example.com"))
    finally:
        dns.clear_servfail("broken.example.com")
    assert error.code == "dns_not_pointing"
    assert str(error).startswith("broken.example.com does not resolve to the site's proxy")


def test_a_rate_limit_is_reported_as_such(pebble: Pebble, web: TokenServer) -> None:
    problem = {"type": "urn:ietf:params:acme:error:rateLimited",
               "detail": "too many certificates already issued for exact set of domains",
               "status": 429}
    relay = ProblemRelay(pebble, "/order-plz", 429, problem, {"Retry-After": "3600"})
    acme = AcmeClient(relay.directory_url, pebble.ca_bundle, new_account_key())
    try:
        acme.register("")
        error = failure(lambda: obtain(acme, web, "busy.example.com"))
    finally:
        acme.close()
        relay.close()
    assert error.code == "rate_limited"
    assert "too many certificates already issued" in str(error)
    assert "/order-plz" in relay.requests  # the account was registered through it too
    assert "/sign-me-up" in relay.requests


def test_an_account_is_found_again_by_its_key(pebble: Pebble) -> None:
    key = new_account_key()
    first = AcmeClient(pebble.directory_url, pebble.ca_bundle, key)
    assert first.find_account() is None  # the CA does not know this key yet
    uri = first.register("ops@example.com")
    first.close()
    again = AcmeClient(pebble.directory_url, pebble.ca_bundle, key)
    try:
        found = again.find_account()
        assert found is not None and found.uri == uri
        assert again.register("ops@example.com") == uri  # no second account
    finally:
        again.close()


def test_a_contact_the_ca_refuses_is_refused(pebble: Pebble) -> None:
    acme = AcmeClient(pebble.directory_url, pebble.ca_bundle, new_account_key())
    try:
        error = failure(lambda: acme.register("not an address"))
    finally:
        acme.close()
    assert error.code == "ca_refused"
    assert str(error).startswith("the CA refused registering the ACME account: ")


def test_a_ca_that_does_not_answer_is_unreachable(pebble: Pebble) -> None:
    port = free_port()
    error = failure(lambda: AcmeClient(f"https://127.0.0.1:{port}/dir", pebble.ca_bundle,
                                       new_account_key()))
    assert error.code == "ca_unreachable"
    assert f"127.0.0.1:{port}" in str(error) and "refused" in str(error)


def test_a_url_that_is_no_acme_directory_is_unreachable(pebble: Pebble) -> None:
    url = f"https://127.0.0.1:{pebble.management_port}/roots/0"
    error = failure(lambda: AcmeClient(url, pebble.ca_bundle, new_account_key()))
    assert error.code == "ca_unreachable"
    assert str(error).startswith(f"{url} does not answer as an ACME directory")


def test_tls_is_verified_against_the_bundle(pebble: Pebble, tmp_path: Path) -> None:
    other, _, _ = make_tls_files(tmp_path, "unrelated CA")
    error = failure(lambda: AcmeClient(pebble.directory_url, str(other), new_account_key()))
    assert error.code == "ca_unreachable"
    assert "certificate verify failed" in str(error)
    # And the system store does not know Pebble's private CA either.
    error = failure(lambda: AcmeClient(pebble.directory_url, None, new_account_key()))
    assert error.code == "ca_unreachable" and "certificate verify failed" in str(error)
