"""A webhook goes to the address its name was checked at: the policy resolves the
name once, and the request connects to that address with the name in its Host header
and, over TLS, in its SNI, so a name that answers differently to a second lookup (DNS
rebinding) cannot steer a tenant's webhook to an internal address.  A real DNS server
(challtestsrv) answers for the names; the system resolver knows none of them."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.models import DeliveryStatus, NotificationDelivery, User
from app.services import notifiers
from app.services.notifiers import ChannelInput, channels
from tests import pki
from tests.notice_servers import WebhookReceiver
from tests.pebble import ChallTestSrv
from tests.processes import free_port

SECRET = "a-webhook-secret-of-some-length"
HOOKS = "127.0.0.88"


@pytest.fixture(scope="module")
def dns() -> Iterator[ChallTestSrv]:
    server = ChallTestSrv(default_ipv4="10.9.8.7")
    yield server
    server.stop()


@pytest.fixture()
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver(HOOKS, secret=SECRET)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def resolving(app: Any, dns: ChallTestSrv, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(app.config, "BACKEND_RESOLVERS", dns.dns_server)
    monkeypatch.setattr(channels, "RETRY_DELAYS", (0.05, 0.1))


def deliver(db: Any, user: User, url: str) -> NotificationDelivery:
    channel = notifiers.create_channel(user, ChannelInput(name="hooks", kind="webhook",
                                                          target=url, secret=SECRET))
    delivery = notifiers.send_test(user, channel.id)
    notifiers.wait(delivery.id)
    db.session.expire_all()
    return db.session.get(NotificationDelivery, delivery.id)


def test_the_request_goes_to_the_checked_address_with_the_name_as_host(
        db, alice, dns, receiver):
    dns.set_a("hooks.tenant.test", [HOOKS])
    delivery = deliver(db, alice, f"http://hooks.tenant.test:{receiver.port}/hook")
    assert delivery.status == DeliveryStatus.SENT, delivery.error
    [request] = receiver.received
    assert request.headers["Host"] == f"hooks.tenant.test:{receiver.port}"
    assert request.path == "/hook" and receiver.valid == [True]


def test_a_name_rebound_to_an_internal_address_gets_no_request(db, alice, dns, receiver):
    dns.set_a("rebind.tenant.test", [HOOKS])
    channel = notifiers.create_channel(alice, ChannelInput(
        name="rebind", kind="webhook", target=f"http://rebind.tenant.test:{receiver.port}/",
        secret=SECRET))
    dns.set_a("rebind.tenant.test", ["169.254.169.254"])
    delivery = notifiers.send_test(alice, channel.id)
    notifiers.wait(delivery.id)
    db.session.expire_all()
    delivery = db.session.get(NotificationDelivery, delivery.id)
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.attempts == 1  # refused for good, not retried
    assert delivery.error == ("the webhook URL is not allowed: rebind.tenant.test resolves "
                              "to 169.254.169.254 is a cloud metadata address")
    assert receiver.received == []


def test_a_name_without_an_address_is_a_delivery_failure_not_an_error(db, alice, dns):
    dns.set_a("gone.tenant.test", [HOOKS])
    channel = notifiers.create_channel(alice, ChannelInput(
        name="gone", kind="webhook", target="http://gone.tenant.test/", secret=SECRET))
    dns.set_servfail("gone.tenant.test")
    delivery = notifiers.send_test(alice, channel.id)
    notifiers.wait(delivery.id)
    db.session.expire_all()
    delivery = db.session.get(NotificationDelivery, delivery.id)
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.error == "the webhook cannot be reached (gone.tenant.test does not resolve)"


class TlsListener:
    """A TLS server that records the name each client asks for (SNI) and presents a
    certificate for that name from a CA nobody trusts."""

    def __init__(self, host: str, name: str, directory: Path) -> None:
        cert, key = pki.leaf(pki.root(), [name])
        (directory / "cert.pem").write_text(pki.pem(cert))
        (directory / "key.pem").write_text(pki.key_pem(key))
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
        self.names: list[str | None] = []
        self.context.sni_callback = lambda _sock, server_name, _ctx: self.names.append(
            server_name)
        self.port = free_port(host)
        self.socket = socket.create_server((host, self.port))
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            with connection:
                try:
                    self.context.wrap_socket(connection, server_side=True).close()
                except (ssl.SSLError, OSError):
                    pass

    def stop(self) -> None:
        self.socket.close()
        self.thread.join(5)


def test_tls_asks_for_the_name_and_checks_the_certificate_against_it(
        db, alice, dns, tmp_path):
    dns.set_a("secure.tenant.test", [HOOKS])
    listener = TlsListener(HOOKS, "secure.tenant.test", tmp_path)
    try:
        delivery = deliver(db, alice, f"https://secure.tenant.test:{listener.port}/hook")
    finally:
        listener.stop()
    assert listener.names and set(listener.names) == {"secure.tenant.test"}
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.error == "the webhook's TLS certificate is not valid for secure.tenant.test"
