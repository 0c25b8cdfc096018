"""The engine interface: pure rendering of a node's full configuration.

Nothing in ``app/engines`` does I/O.  Services turn models into the frozen specs below
(so renderers never touch the database) and engines turn specs into text.  Every
value in a spec has already passed the validators in ``app/security.py``; templates
escape again as defence in depth.
"""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
import shlex
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar


class Capability:
    """Names of the settings an engine may or may not honour (API field names)."""

    WEIGHTS = "backends.weight"
    BACKEND_HTTPS = "backend_protocol"
    TLS = "ssl_mode"
    FORCE_HTTPS = "force_https"
    HSTS = "hsts"
    HTTP2 = "http2"
    WEBSOCKET = "websocket"
    WAF = "waf_level"
    CACHE = "cache"
    GEO = "geo"
    IP_RULES = "ip_allow"
    BASIC_AUTH = "basic_auth"
    RATE_LIMIT = "rate_limit"
    HEADERS = "headers"
    BLOCK = "blocked"

    ALL: ClassVar[frozenset[str]] = frozenset({
        WEIGHTS, BACKEND_HTTPS, TLS, FORCE_HTTPS, HSTS, HTTP2, WEBSOCKET, WAF, CACHE, GEO,
        IP_RULES, BASIC_AUTH, RATE_LIMIT, HEADERS, BLOCK,
    })


@dataclass(frozen=True)
class BackendSpec:
    host: str
    port: int
    weight: int = 1


@dataclass(frozen=True)
class CertificateSpec:
    """PEM text of the chain and key a site serves (the control plane owns them)."""

    chain_pem: str
    key_pem: str


@dataclass(frozen=True)
class SiteSpec:
    id: int
    owner_id: int
    domain: str
    aliases: tuple[str, ...] = ()
    backends: tuple[BackendSpec, ...] = ()
    backend_protocol: str = "http"
    ssl_mode: str = "none"
    force_https: bool = False
    hsts: bool = False
    http2: bool = True
    websocket: bool = False
    waf_level: str = "off"
    cache_enabled: bool = False
    cache_ttl: int = 300
    geo_mode: str = "off"
    geo_countries: tuple[str, ...] = ()
    ip_allow: tuple[str, ...] = ()
    ip_deny: tuple[str, ...] = ()
    # (username, bcrypt hash)
    basic_auth: tuple[tuple[str, str], ...] = ()
    rate_limit_rps: int | None = None
    rate_limit_burst: int = 0
    headers: tuple[tuple[str, str], ...] = ()
    blocked: bool = False
    blocked_reason: str = ""
    config_version: int = 1
    certificate: CertificateSpec | None = None

    def __hash__(self) -> int:
        """Computed once: the render caches look every site of a pool up for each node,
        and a spec hashes all its fields (certificates included)."""
        kept: int | None = self.__dict__.get("_hash")
        if kept is None:
            kept = hash(tuple(getattr(self, f.name) for f in fields(self)))
            object.__setattr__(self, "_hash", kept)
        return kept

    @property
    def server_names(self) -> tuple[str, ...]:
        return (self.domain, *self.aliases)

    @property
    def serves_tls(self) -> bool:
        return self.ssl_mode != "none" and self.certificate is not None


@dataclass(frozen=True)
class NodeSpec:
    """What a renderer needs to know about the node the files are for."""

    name: str
    proxy_type: str
    config_dir: str
    test_command: str
    reload_command: str
    listen_address: str | None = None
    http_port: int = 80
    https_port: int = 443
    log_dir: str = "/var/log/nginx"
    cache_dir: str = "/var/cache/rpcc"
    geoip_db_path: str = "/usr/share/GeoIP/GeoLite2-Country.mmdb"
    id: int = 0
    # Where the proxy's own counters are read on the node's loopback (None: the
    # engine's default, see :meth:`Engine.status_endpoint`).
    status_port: int | None = None


@dataclass(frozen=True)
class RenderedConfig:
    """The complete file set for one node, plus where and how it is applied."""

    engine: str
    files: dict[str, str]
    config_dir: str
    test_command: list[str]
    reload_command: list[str]
    # The line the node's main configuration needs so that it loads ``config_dir``.
    include_line: str
    site_files: dict[int, list[str]] = field(default_factory=dict)
    # {path: SHA-256 of the UTF-8 text (:func:`digest`)} where the engine knows it
    # without hashing the text again (a form it filled before with the same values);
    # empty when it renders without forms.
    digests: dict[str, str] = field(default_factory=dict, compare=False)

    def node_path(self, relative: str) -> str:
        return f"{self.config_dir.rstrip('/')}/{relative}"


@dataclass(frozen=True)
class CommandForms:
    """The ways of testing and reloading an engine that the control plane knows, so
    that a node's commands are chosen, not typed.

    A pattern is words separated by spaces: literal arguments, ``PATH`` (an absolute
    path), ``ADDRESS`` (``host:port``) and optional groups in brackets (``[-c PATH]``),
    which appear in the order written.  Its first word names the program, which may
    also be given by an absolute path ending in that name (``/usr/sbin/nginx``).
    ``offered_*`` are ready-made lines of these patterns for the administrator's form.
    """

    test: tuple[str, ...]
    reload: tuple[str, ...]
    offered_test: tuple[str, ...]
    offered_reload: tuple[str, ...]


@dataclass(frozen=True)
class NodeDefaults:
    """What a new node of an engine starts with, and how the engine is installed on
    a node that lacks it."""

    config_dir: str
    test_command: str
    reload_command: str
    log_dir: str
    binary: str
    package: str
    # The file that must load the managed directory ("" when a flag does that).
    main_config: str
    # The loopback port where the proxy's counters are read (None: they are not).
    status_port: int | None = None

    def node_fields(self) -> dict[str, str]:
        """The defaults of a node's own fields."""
        return {"config_dir": self.config_dir, "test_command": self.test_command,
                "reload_command": self.reload_command, "log_dir": self.log_dir}


# A name no one can own (RFC 2606) and a path: the deployment probe's address.
PROBE_HOST = "rpcc-probe.invalid"
PROBE_PATH = "/.rpcc-probe"
# Where a proxy whose files open a status listener tells its counters.
STATUS_PATH = "/.rpcc-status"


@dataclass(frozen=True)
class ProxyCounters:
    """What a proxy says of its own load at one moment: connections (or requests)
    being served now, and requests served since it started."""

    active_connections: int
    requests_total: int


@dataclass(frozen=True)
class StatusEndpoint:
    """Where a node's proxy tells its counters over HTTP, on the node's loopback: the
    control plane reaches it through a channel forwarded over SSH, never over the
    network, so it needs no port open to anyone."""

    host: str
    port: int
    path: str
    # Turns the endpoint's answer into counters; ValueError for anything else.
    parse: Callable[[str], ProxyCounters]
    # What an administrator should do when nothing answers there.
    missing: str

    @property
    def host_header(self) -> str:
        """``host:port``, the Host an endpoint bound to that address expects."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class Engine(ABC):
    """One proxy server type: everything the control plane knows about it, so that
    adding one is one class and one entry in the registry (``app/engines/__init__``)
    plus its value of the nodes' ``proxy_type`` column."""

    name: ClassVar[str]
    capabilities: ClassVar[frozenset[str]]
    command_forms: ClassVar[CommandForms]
    defaults: ClassVar[NodeDefaults]
    # Where the engine's Jinja2 templates live (None: it renders in code).
    templates: ClassVar[Path | None] = None

    @abstractmethod
    def render(self, node: NodeSpec, sites: list[SiteSpec]) -> RenderedConfig:
        """Every file of the node's managed directory for these sites."""

    @abstractmethod
    def include_line(self, node: NodeSpec) -> str:
        """The line that makes the node's main config load the managed directory."""

    def probe(self, node: NodeSpec, token: str) -> dict[str, str]:
        """Extra files that make the node answer ``token`` at :data:`PROBE_PATH` for
        the host :data:`PROBE_HOST` once it runs this configuration.

        A deployment adds them so that its verification knows the reload took effect
        (an engine whose reload returns only once the new configuration is live needs
        none: the default).
        """
        return {}

    def status_endpoint(self, node: NodeSpec) -> StatusEndpoint | None:
        """Where this node's proxy tells its connections and requests; None when the
        control plane does not read them for this engine (the default).

        :raises ValueError: when the node's values cannot name one.
        """
        return None

    def missing_capabilities(self, site: SiteSpec) -> set[str]:
        return required_capabilities(site) - self.capabilities

    def commands(self, node: NodeSpec) -> tuple[list[str], list[str]]:
        return shlex.split(node.test_command), shlex.split(node.reload_command)


# A node's values stand in a text rendered for every node as placeholders with a random
# part, so that no site's own text can name one.
_NONCE = secrets.token_hex(12)
_PLACEHOLDER = re.compile(f"rpcc{_NONCE}n([0-9]+)x")
# Where a shared file's header goes: it names the file's content once that is known.
HEADER_SLOT = f"rpcc{_NONCE}header"
# Site versions kept rendered, per engine and process (a few KB each).
SITE_CACHE_SIZE = 20_000
# Digests of filled forms kept, per engine and process (about 200 bytes each): a
# pool of thousands of sites on tens of nodes with values of their own.
DIGEST_CACHE_SIZE = 100_000


def digest(text: str) -> str:
    """A file's name by content, as the deployments record it and ``sha256sum``
    prints it on the node: the SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode()).hexdigest()


class FormEngine(Engine):
    """An engine that renders each site once per version for every node of a pool.

    A site's own files depend on the node only through a few values (directories,
    listen addresses, ports), so they are rendered once with placeholders where those
    go and kept as ``str.format`` strings (forms): a node's copy costs one ``format``
    a file, whatever the templates cost.  The pool's shared files are rendered the
    same way once per pool state.  A value a node lacks (``None``) leaves out the part
    that would write it, so the forms are kept per set of missing values.

    ``once=False`` renders every site for each node with the node's own values: the
    reference the forms must equal (a test holds the two to that).
    """

    # The names of the node's values, as :meth:`node_values` gives them.
    value_names: ClassVar[tuple[str, ...]]

    def __init__(self, once: bool = True) -> None:
        self.once = once
        self.placeholders = {name: f"rpcc{_NONCE}n{index}x"
                             for index, name in enumerate(self.value_names)}
        self._site_forms = functools.lru_cache(maxsize=SITE_CACHE_SIZE)(self._any_node_site)
        # The shared files of the last few states of a pool: every node of a pool
        # takes the same state in a rollout.
        self._shared_forms = functools.lru_cache(maxsize=8)(self._any_node_shared)
        # A form filled with a node's values names the same content every time: its
        # digest is kept, so that a node's unchanged files are not hashed again.
        self._digests = functools.lru_cache(maxsize=DIGEST_CACHE_SIZE)(_filled_digest)

    @abstractmethod
    def node_values(self, node: NodeSpec) -> dict[str, str | None]:
        """The node's value for each of :attr:`value_names` (``None``: it has none).

        :raises ValueError: for a value the engine refuses to write in its files.
        """

    @abstractmethod
    def site_files(self, site: SiteSpec, values: Mapping[str, str | None]) -> dict[str, str]:
        """The site's own files, keyed by relative path, for the node's values (or
        their placeholders)."""

    def shared_files(self, sites: list[SiteSpec],
                     values: Mapping[str, str | None]) -> dict[str, str]:
        """Files of the whole pool (none by default).  A file that starts with
        :data:`HEADER_SLOT` gets a header naming its own content, so that it keeps
        its bytes while no change touches it."""
        return {}

    def written(self, name: str, value: str) -> str:
        """How a node's value is written where its placeholder stands: as it is,
        unless the engine's format writes such a value otherwise (quoted, say)."""
        return value

    def render(self, node: NodeSpec, sites: list[SiteSpec]) -> RenderedConfig:
        """:raises ValueError: for two sites sharing an id or a domain, a site that
            needs a capability the engine lacks (the services refuse such sites first),
            or a value the engine refuses."""
        ordered = sorted(sites, key=lambda s: s.domain)
        _check_unique(ordered)
        values = self.node_values(node)
        own_files: Callable[[SiteSpec], dict[str, str]]
        shared_files: Callable[[list[SiteSpec]], dict[str, str]]
        digests: dict[str, str] = {}
        if self.once:
            missing = frozenset(name for name in self.value_names if values[name] is None)
            fill = tuple(self.written(name, values[name] or "") for name in self.value_names)
            own_files = functools.partial(self._filled, missing=missing, fill=fill,
                                          digests=digests)
            shared_files = functools.partial(self._filled_shared, missing=missing, fill=fill,
                                             digests=digests)
        else:
            own_files = functools.partial(self._own_files, values=values)
            shared_files = functools.partial(self.shared_files, values=values)
        files: dict[str, str] = {}
        site_files: dict[int, list[str]] = {}
        for site in ordered:
            own = own_files(site)
            files.update(own)
            site_files[site.id] = sorted(own)
        files.update({path: _stamped(text) for path, text in shared_files(ordered).items()})
        test_command, reload_command = self.commands(node)
        return RenderedConfig(
            engine=self.name, files=files, config_dir=node.config_dir,
            test_command=test_command, reload_command=reload_command,
            include_line=self.include_line(node), site_files=site_files, digests=digests,
        )

    def _filled(self, site: SiteSpec, missing: frozenset[str], fill: tuple[str, ...],
                digests: dict[str, str]) -> dict[str, str]:
        forms = self._site_forms(site, missing)
        for path, form in forms.items():
            digests[path] = self._digests(form, fill)
        return {path: form.format(*fill) for path, form in forms.items()}

    def _filled_shared(self, sites: list[SiteSpec], missing: frozenset[str],
                       fill: tuple[str, ...], digests: dict[str, str]) -> dict[str, str]:
        files = {}
        for path, form in self._shared_forms(tuple(sites), missing).items():
            files[path] = text = _stamped(form.format(*fill))
            digests[path] = digest(text)
        return files

    def _own_files(self, site: SiteSpec, values: Mapping[str, str | None]) -> dict[str, str]:
        missing = self.missing_capabilities(site)
        if missing:
            raise ValueError(f"{self.name} cannot honour {sorted(missing)} of site {site.domain}")
        return self.site_files(site, values)

    def _stand_ins(self, missing: frozenset[str]) -> dict[str, str | None]:
        return {name: None if name in missing else placeholder
                for name, placeholder in self.placeholders.items()}

    def _any_node_site(self, site: SiteSpec, missing: frozenset[str]) -> dict[str, str]:
        """The site's files as forms (cached per site version: a site that did not
        change is not rendered again, for any node)."""
        files = self._own_files(site, self._stand_ins(missing))
        return {path: _form(text) for path, text in files.items()}

    def _any_node_shared(self, sites: tuple[SiteSpec, ...],
                         missing: frozenset[str]) -> dict[str, str]:
        files = self.shared_files(list(sites), self._stand_ins(missing))
        return {path: _form(text) for path, text in files.items()}


def _filled_digest(form: str, fill: tuple[str, ...]) -> str:
    return digest(form.format(*fill))


def _check_unique(sites: list[SiteSpec]) -> None:
    ids = [s.id for s in sites]
    if len(set(ids)) != len(ids):
        raise ValueError("two sites share an id")
    domains = [s.domain for s in sites]
    if len(set(domains)) != len(domains):
        raise ValueError("two sites share a domain")


def _form(text: str) -> str:
    """``text`` with its node placeholders as ``str.format`` fields."""
    return _PLACEHOLDER.sub(r"{\1}", text.replace("{", "{{").replace("}", "}}"))


def _stamped(text: str) -> str:
    """A shared file with its header, which names the file's own content: a file that
    did not change keeps its bytes (and is not sent again) whatever other site of the
    pool changed."""
    if not text.startswith(HEADER_SLOT):
        return text
    body = text[len(HEADER_SLOT):]
    digest = hashlib.sha256(body.encode()).hexdigest()[:12]
    return file_header("#", None, f"content {digest}") + body


def required_capabilities(site: SiteSpec) -> set[str]:
    """The capabilities a site's settings need (defaults need none)."""
    needed = set()
    if any(b.weight != 1 for b in site.backends):
        needed.add(Capability.WEIGHTS)
    if site.backend_protocol == "https":
        needed.add(Capability.BACKEND_HTTPS)
    if site.ssl_mode != "none":
        needed.add(Capability.TLS)
    flags = {
        Capability.FORCE_HTTPS: site.force_https, Capability.HSTS: site.hsts,
        Capability.WEBSOCKET: site.websocket, Capability.WAF: site.waf_level != "off",
        Capability.CACHE: site.cache_enabled, Capability.GEO: site.geo_mode != "off",
        Capability.IP_RULES: bool(site.ip_allow or site.ip_deny),
        Capability.BASIC_AUTH: bool(site.basic_auth),
        Capability.RATE_LIMIT: site.rate_limit_rps is not None,
        Capability.HEADERS: bool(site.headers), Capability.BLOCK: site.blocked,
    }
    needed.update(name for name, wanted in flags.items() if wanted)
    return needed


def acme_webroot(node: NodeSpec) -> str:
    """Where HTTP-01 tokens live on a node: beside the managed directory, not in it,
    so that swapping the managed directory never removes a pending token."""
    return node.config_dir.rstrip("/") + "-acme"


def listen_address(node: NodeSpec, port: int) -> str:
    """``address:port`` for one node (nodes sharing a machine must not bind ``*``)."""
    if node.listen_address is None:
        return str(port)
    host = f"[{node.listen_address}]" if ":" in node.listen_address else node.listen_address
    return f"{host}:{port}"


def file_header(comment: str, site: SiteSpec | None, version: str) -> str:
    """The first lines of every generated file: who and what it is for."""
    if site is None:
        return f"{comment} Managed by Reverse Proxy Control Center; do not edit. Shared file, " \
               f"config {version}\n"
    return (f"{comment} Managed by Reverse Proxy Control Center; do not edit.\n"
            f"{comment} site {site.domain} (id {site.id}), owner {site.owner_id}, "
            f"config version {site.config_version}\n")


# A file name may have 255 bytes; ".access.log" is the longest suffix a site's
# files carry, and domains reach 253 characters.
_NAME_MAX = 255
_LONGEST_SUFFIX = len(".access.log")


def file_stem(domain: str) -> str:
    """The name a site's files and logs carry: its domain, unless that would make a
    file name too long for the file system; then the domain's start and a digest of
    all of it, which stays unique and still tells an operator whose file it is."""
    if len(domain) + _LONGEST_SUFFIX <= _NAME_MAX:
        return domain
    digest = hashlib.sha256(domain.encode()).hexdigest()[:16]
    return f"{domain[:_NAME_MAX - _LONGEST_SUFFIX - len(digest) - 1]}-{digest}"
