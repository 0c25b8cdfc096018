"""Browser journeys: the product as a real gunicorn process on loopback, driven by
Playwright in Debian's Chromium, typing and clicking like a person.

Every page a journey visits passes :meth:`Journey.check`: no JavaScript error, no
failed request, no horizontal scroll at phone width, the dark preference honoured,
no serious or critical axe-core finding; a desktop and a phone screenshot of it are
written under ``E2E_ARTIFACTS`` (default ``test-artifacts/e2e``), not committed.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests.components import ROOT, AppServer, app_env, flask_cli
from tests.fleet import start_nginx
from tests.nginx_node import NginxNode
from tests.notice_servers import FakeTelegram
from tests.pebble import ChallTestSrv, Pebble, start_nginx_on
from tests.processes import free_port, require_binary
from tests.smtp import SmtpServer
from tests.sshd import SshServer

# Chromium reaches out to Google's hosts unless told not to (RECIPES.md).
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
]
NODE_ADDRESS = "127.0.0.61"
SHARED_NODE_ADDRESS = "127.0.0.62"
SHARED_POOL = "shared"
MAIL_ADDRESS = "127.0.0.66"
TELEGRAM_ADDRESS = "127.0.0.67"
#: The bot token the product's Telegram stand-in accepts (any other is refused).
TELEGRAM_TOKEN = "424242:" + "E" * 35
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
ARTIFACTS = Path(os.environ.get("E2E_ARTIFACTS", os.path.join(ROOT, "test-artifacts", "e2e")))


@dataclass
class Product:
    """The running product and its first administrator."""

    server: AppServer
    env: dict[str, str]
    admin_password: str

    @property
    def url(self) -> str:
        return self.server.url

    def cli(self, *args: str, stdin: str | None = None) -> str:
        return flask_cli(self.env, *args, stdin=stdin)


@pytest.fixture(scope="session")
def acme_http_port() -> int:
    """The port the shared pool's node serves HTTP on: Pebble validates HTTP-01 there."""
    return free_port(SHARED_NODE_ADDRESS)


@pytest.fixture(scope="session")
def pebble(acme_http_port: int) -> Iterator[Pebble]:
    """A real ACME CA whose DNS points every name at the shared pool's node."""
    dns = ChallTestSrv(default_ipv4=SHARED_NODE_ADDRESS)
    try:
        server = Pebble(http_port=acme_http_port, dns_server=dns.dns_server)
        try:
            yield server
        finally:
            server.stop()
    finally:
        dns.stop()


@pytest.fixture(scope="session")
def mailbox() -> Iterator[SmtpServer]:
    """The product's mail server: it keeps every message, and journeys read them as
    people read their mail.  It runs in this process, so it adds no start-up wait."""
    server = SmtpServer(MAIL_ADDRESS)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def telegram() -> Iterator[FakeTelegram]:
    """The Telegram Bot API the product's notices go to: it keeps every message sent
    with ``TELEGRAM_TOKEN``.  Like the mail server, it runs in this process."""
    server = FakeTelegram(TELEGRAM_ADDRESS, token=TELEGRAM_TOKEN)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def product_env(pebble: Pebble, mailbox: SmtpServer, telegram: FakeTelegram) -> dict[str, str]:
    """Settings of the product under test: its own SQLite database, the local CA, the
    local mail server, the local Telegram Bot API."""
    directory = tempfile.mkdtemp(prefix="rpcc-e2e-")
    return app_env(f"sqlite:///{directory}/rpcc.db", SIGN_IN_ADDRESS_FAILURES="200",
                   SCHEDULER_HEARTBEAT="2", E2E_DIRECTORY=directory,
                   ACME_DIRECTORY_URL=pebble.directory_url, ACME_CA_BUNDLE=pebble.ca_bundle,
                   ACME_EMAIL="certs@example.test",
                   SMTP_HOST=mailbox.host, SMTP_PORT=str(mailbox.port), SMTP_SECURITY="none",
                   MAIL_FROM="Control Center <rpcc@example.test>",
                   TELEGRAM_API_BASE_URL=telegram.url,
                   # The suite's nginx nodes run from prefixes under /tmp, which no
                   # offered command names: the administrator types them.
                   ALLOW_CUSTOM_NODE_COMMANDS="1",
                   # A journey may hold a DNS answer back while it looks at the page.
                   DNS_TIMEOUT="60")


@pytest.fixture(scope="session")
def product(product_env: dict[str, str]) -> Iterator[Product]:
    """One product process for the whole browser suite, set up as the README's run
    command does: migrations, then the first administrator from the CLI."""
    flask_cli(product_env, "db", "upgrade")
    password = secrets.token_urlsafe(16)
    flask_cli(product_env, "users", "create", "--username", "admin", "--email",
              "admin@example.com", "--role", "admin", "--password-stdin", stdin=password)
    server = AppServer(product_env)
    try:
        yield Product(server, product_env, password)
    finally:
        server.stop()
        shutil.rmtree(product_env["E2E_DIRECTORY"], ignore_errors=True)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    executable = require_binary("chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Journey:
    """One person's browser session, with the checks every visited page must pass."""

    page: Page
    context: BrowserContext
    base_url: str
    artifacts: Path
    problems: list[str] = field(default_factory=list)
    visited: list[str] = field(default_factory=list)

    def go(self, path: str) -> Page:
        self.page.goto(self.base_url + path)
        return self.page

    def check(self, name: str) -> None:
        """The page as it is now passes every check; screenshots for the reviewer."""
        page = self.page
        page.wait_for_load_state("load")
        assert not self.problems, f"{name}: {self.problems}"
        self.visited.append(page.url)
        slug = f"{len(self.visited):02d}-{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}"
        page.screenshot(path=str(self.artifacts / f"{slug}-desktop.png"), full_page=True)
        findings = _axe_findings(page)
        assert not findings, f"{name}: accessibility: {findings}"
        page.emulate_media(color_scheme="dark")
        expect(page.locator("html")).to_have_attribute("data-bs-theme", "dark")
        findings = _axe_findings(page)
        assert not findings, f"{name} (dark): accessibility: {findings}"
        page.emulate_media(color_scheme="light")
        expect(page.locator("html")).to_have_attribute("data-bs-theme", "light")
        page.set_viewport_size(PHONE)
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth")
        page.screenshot(path=str(self.artifacts / f"{slug}-phone.png"), full_page=True)
        page.set_viewport_size(DESKTOP)
        assert overflow <= 0, f"{name}: scrolls sideways by {overflow}px at 390px"
        assert not self.problems, f"{name}: {self.problems}"


_AXE = Axe()


def _axe_findings(page: Page) -> list[str]:
    result = _AXE.run(page)
    return [f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:3]}"
            for v in result.response["violations"] if v["impact"] in ("serious", "critical")]


@pytest.fixture()
def journey_factory(browser: Browser, product: Product,
                    request: pytest.FixtureRequest) -> Iterator[Any]:
    """Fresh browser sessions (``journey_factory()``), each watching for JavaScript
    errors and failed requests; all closed after the test."""
    contexts: list[BrowserContext] = []
    directory = ARTIFACTS / re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)
    shutil.rmtree(directory, ignore_errors=True)  # screenshots of this run only
    directory.mkdir(parents=True, exist_ok=True)

    def start(name: str = "") -> Journey:
        # Reduced motion: no colour transitions half-way through when axe measures.
        context = browser.new_context(viewport=DESKTOP, base_url=product.url,
                                      reduced_motion="reduce")
        contexts.append(context)
        page = context.new_page()
        journey = Journey(page, context, product.url,
                          directory / name if name else directory)
        journey.artifacts.mkdir(parents=True, exist_ok=True)
        page.on("pageerror", lambda error: journey.problems.append(f"JavaScript: {error}"))
        # Chromium also logs a page answered 422 (a form with errors) as a failed load;
        # failed assets are caught from their responses below.
        page.on("console", lambda message: journey.problems.append(
            f"console: {message.text}") if message.type == "error"
            and not message.text.startswith("Failed to load resource") else None)
        # A navigation aborts what the page left loading (and its event stream).
        page.on("requestfailed", lambda req: journey.problems.append(
            f"request failed: {req.url} ({req.failure})")
            if req.failure != "net::ERR_ABORTED" else None)
        page.on("response", lambda response: journey.problems.append(
            f"{response.status} for {response.url}")
            if response.status >= 400 and response.request.resource_type != "document"
            else None)
        return journey

    yield start
    for context in contexts:
        context.close()


def sign_in(journey: Journey, username: str, password: str, *, press_enter: bool = False) -> None:
    page = journey.page
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    if press_enter:
        page.get_by_label("Password").press("Enter")
    else:
        page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state("load")


@pytest.fixture(scope="session")
def sshd() -> Iterator[SshServer]:
    """The sshd every node of the browser suite is reached through."""
    server = SshServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nginx_node() -> Iterator[NginxNode]:
    """A real nginx on its own loopback address, on the operator's initial layout."""
    node = start_nginx(NODE_ADDRESS)
    try:
        yield node
    finally:
        node.stop()
        node.remove()


def api(product: Product, method: str, path: str, body: dict[str, Any],
        token: str | None = None) -> dict[str, Any]:
    """One call of the product's REST API (set-up the journeys do not click through)."""
    request = urllib.request.Request(
        product.url + "/api/v1" + path, method=method, data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json",
                 **({"Authorization": f"Bearer {token}"} if token else {})})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"{}")


def admin_token(product: Product) -> str:
    return str(api(product, "POST", "/tokens", {"username": "admin", "name": "e2e",
                                               "password": product.admin_password})["token"])


def add_pool_with_node(product: Product, sshd: SshServer, node: NginxNode, pool: str,
                       name: str) -> None:
    """What an administrator sets up before clients come: a pool and its node."""
    token = admin_token(product)
    api(product, "POST", "/pools", {"name": pool}, token)
    spec = node.spec
    api(product, "POST", "/nodes", {
        "name": name, "host": "127.0.0.1", "ssh_port": sshd.port, "ssh_user": "root",
        "ssh_private_key": sshd.client_key_text, "proxy_type": "nginx", "pool": pool,
        "config_dir": spec.config_dir, "test_command": spec.test_command,
        "reload_command": spec.reload_command, "listen_address": spec.listen_address,
        "http_port": spec.http_port, "https_port": spec.https_port,
        "log_dir": spec.log_dir, "cache_dir": spec.cache_dir,
        "status_port": spec.status_port}, token)


@pytest.fixture(scope="session")
def shared_pool(product: Product, sshd: SshServer, acme_http_port: int) -> Iterator[NginxNode]:
    """The pool ``SHARED_POOL`` with one real nginx node that answers HTTP-01 for the
    local CA, for the clients' journeys; yields that node."""
    node = start_nginx_on(SHARED_NODE_ADDRESS, acme_http_port)
    try:
        add_pool_with_node(product, sshd, node, SHARED_POOL, "shared-1")
        yield node
    finally:
        node.stop()
        node.remove()


def make_client(product: Product, username: str, max_sites: int = 5) -> str:
    """A client account made with the CLI, as an administrator would; its password."""
    password = secrets.token_urlsafe(16)
    product.cli("users", "create", "--username", username, "--email",
                f"{username}@example.test", "--role", "client", "--max-sites", str(max_sites),
                "--password-stdin", stdin=password)
    return password


def account_menu(page: Page, item: str) -> None:
    """Open the account menu at the top right and choose ``item`` in it."""
    page.locator("#account-menu").click()
    page.locator(".dropdown-menu.show").get_by_role("link", name=item).or_(
        page.locator(".dropdown-menu.show").get_by_role("button", name=item)).click()
