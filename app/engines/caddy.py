"""Caddy 2.6 engine: one Caddyfile per site, imported by a managed ``rpcc.caddy``.

Files, relative to the node's ``config_dir``:

``options.caddy``
    Global options, imported *inside* the global options block of the node's main
    Caddyfile.  A Caddyfile has exactly one global block and it must come first, so
    the managed files cannot carry their own: the node keeps ``admin`` and
    ``default_bind`` there.  ``auto_https off`` is needed because the control plane
    owns certificates: Caddy must never ask a CA for one, and its automatic
    HTTP->HTTPS redirects would otherwise bind the global ``http_port`` (80) on
    nodes that serve other ports.  ``servers { metrics }`` turns on Caddy's HTTP
    metrics (off by default), which the control plane reads at ``/metrics`` on the
    node's admin endpoint (see :meth:`CaddyEngine.status_endpoint`).
``rpcc.caddy``
    Imports every site file; imported at the top level of the node's main Caddyfile.
``sites/<domain>.caddy``
    The site: an ``http://`` block on ``http_port`` and, when the control plane
    supplies a certificate, an ``https://`` block on ``https_port``.
``tls/<fingerprint>.crt``, ``tls/<fingerprint>.key``
    The certificate chain and key that ``https://`` blocks serve, named by the
    chain's SHA-256 so that sites sharing a certificate share its files.

Every user value is written as a double-quoted Caddyfile token by :func:`quote`,
which refuses the characters the Caddyfile lexer or placeholder expansion give a
meaning to.  The validators in ``app/security.py`` have refused them already; this
is the second line of defence.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shlex
from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

from app.engines.base import (
    HEADER_SLOT,
    BackendSpec,
    Capability,
    CertificateSpec,
    CommandForms,
    FormEngine,
    NodeDefaults,
    NodeSpec,
    ProxyCounters,
    SiteSpec,
    StatusEndpoint,
    acme_webroot,
    file_header,
    file_stem,
)

# Printable ASCII only, without the quote and escape characters of the lexer, the
# braces of placeholders and snippets, and ``$`` of environment placeholders.
_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\{}$]')
# Lower-case DNS names, optionally with one leading wildcard label: a '/' or ':' in a
# site address would turn into a path matcher or a port, and the domain names files.
_HOST = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?")
HSTS_VALUE = "max-age=31536000"
# Passive health: an upstream that fails this often within the window is skipped.
FAIL_DURATION = "30s"
MAX_FAILS = 3
# How long a request may keep trying other upstreams when one is down.
LB_TRY_DURATION = "5s"
# The managed global options: the control plane owns certificates, and reads the
# servers' metrics.
OPTIONS = "servers {\n\tmetrics\n}\nauto_https off\n"
METRICS_PATH = "/metrics"
ADMIN_MISSING = ("Caddy's admin endpoint is not there: name the address of the admin "
                 "option of the node's Caddyfile with --address in its reload command, or "
                 "set the node's status port")
# Caddy's samples of requests being served and served since it started (one per
# server and top-level handler; a request no site's route matches is not counted).
IN_FLIGHT = "caddy_http_requests_in_flight"
REQUESTS = "caddy_http_requests_total"


def quote(value: str) -> str:
    """A Caddyfile double-quoted token holding ``value`` literally.

    :raises ValueError: for any character that could end the token, escape, start a
        placeholder or a block, or is not printable ASCII.
    """
    if _UNSAFE.search(value):
        raise ValueError(f"refusing to write {value!r} into a Caddyfile")
    return f'"{value}"'


# Words the header directive reads as its own keywords even when quoted.
_HEADER_KEYWORDS = frozenset({"defer", "match"})


def _field_name(name: str) -> str:
    """A header name Caddy reads as a name: header names are case-insensitive, so a
    keyword-like one is written capitalized ("Defer")."""
    return name.capitalize() if name in _HEADER_KEYWORDS else name


def host_name(name: str) -> str:
    """:raises ValueError: unless ``name`` is a plain (possibly wildcard) host name."""
    if not _HOST.fullmatch(name) or ".." in name:
        raise ValueError(f"refusing {name!r} as a Caddy site address")
    return name


def _block(opening: str, body: list[str]) -> list[str]:
    """``opening {``, the body indented one tab, ``}``."""
    return [f"{opening} {{", *(f"\t{line}" for line in body), "}"]


def _upstream(backend: BackendSpec) -> str:
    host = f"[{backend.host}]" if ":" in backend.host else backend.host
    return quote(f"{host}:{backend.port}")


class CaddyEngine(FormEngine):
    """Caddy 2.6 as shipped by Debian 12 (no third-party modules)."""

    name = "caddy"
    # Left out: weights (weighted_round_robin arrived in Caddy 2.8), the WAF (no
    # ModSecurity), country rules (no GeoIP matcher), rate limiting and caching
    # (third-party modules only).  HTTP/2 and WebSocket are always on: TLS listeners
    # speak h2 and reverse_proxy passes upgrades, with no per-site switch.
    capabilities = frozenset({
        Capability.BACKEND_HTTPS, Capability.TLS, Capability.FORCE_HTTPS, Capability.HSTS,
        Capability.HTTP2, Capability.WEBSOCKET, Capability.IP_RULES, Capability.BASIC_AUTH,
        Capability.HEADERS, Capability.BLOCK,
    })
    # --address reaches an admin API moved off its default localhost:2019.
    command_forms = CommandForms(
        test=("caddy validate --config PATH [--adapter caddyfile]",),
        reload=("caddy reload --config PATH [--adapter caddyfile] [--address ADDRESS]",
                "systemctl reload caddy"),
        offered_test=("caddy validate --config /etc/caddy/Caddyfile --adapter caddyfile",),
        offered_reload=("caddy reload --config /etc/caddy/Caddyfile --adapter caddyfile",
                        "systemctl reload caddy"),
    )

    # One Caddyfile, whose global options block must come first.
    defaults = NodeDefaults(
        config_dir="/etc/caddy/rpcc.d",
        test_command="caddy validate --config /etc/caddy/Caddyfile --adapter caddyfile",
        reload_command="caddy reload --config /etc/caddy/Caddyfile --adapter caddyfile",
        log_dir="/var/log/caddy", binary="caddy", package="caddy",
        main_config="/etc/caddy/Caddyfile", status_port=2019)
    # What the files take from the node; "listen" is None when the node binds no
    # address of its own.
    value_names = ("base", "log_root", "acme_root", "listen", "http_port", "https_port",
                   "https_suffix")

    def include_line(self, node: NodeSpec) -> str:
        """Two imports, not one line: ``options.caddy`` goes inside the node's global
        options block (next to its own ``admin``), ``rpcc.caddy`` after that block."""
        options, sites = (quote(_node_path(node, name)) for name in ("options.caddy",
                                                                      "rpcc.caddy"))
        return f"{{\n\timport {options}\n}}\nimport {sites}"

    def status_endpoint(self, node: NodeSpec) -> StatusEndpoint:
        """Caddy's admin endpoint, which serves the metrics ``options.caddy`` turns on.

        Its address is the one the node's reload command names with ``--address``
        (the control plane already reloads through it); without one, the node's
        status port on its loopback (Caddy's own default, 2019, unless set).

        :raises ValueError: when ``--address`` is not ``host:port``.
        """
        words = shlex.split(node.reload_command)
        host, port = "127.0.0.1", node.status_port or self.defaults.status_port
        if "--address" in words[:-1]:
            named, separator, digits = words[words.index("--address") + 1].rpartition(":")
            if not separator or not digits.isdigit():
                raise ValueError(f"node {node.name}: the reload command's --address is not "
                                 "host:port")
            named = named.strip("[]")
            host, port = ("127.0.0.1" if named in ("", "localhost") else named), int(digits)
        assert port is not None  # the engine's default names one
        return StatusEndpoint(host=host, port=port, path=METRICS_PATH, parse=parse_metrics,
                              missing=ADMIN_MISSING)

    def node_values(self, node: NodeSpec) -> dict[str, str | None]:
        """:raises ValueError: for a value :func:`quote` refuses (every one of them
            is written inside a quoted token, or is a number)."""
        values: dict[str, str | None] = {
            "base": node.config_dir.rstrip("/"),
            "log_root": node.log_dir.rstrip("/"),
            "acme_root": acme_webroot(node),
            "listen": node.listen_address,
            "http_port": str(node.http_port),
            "https_port": str(node.https_port),
            "https_suffix": "" if node.https_port == 443 else f":{node.https_port}",
        }
        for value in values.values():
            quote(value or "")
        return values

    def site_files(self, site: SiteSpec, values: Mapping[str, str | None]) -> dict[str, str]:
        return _SiteRenderer(values, site).files()

    def shared_files(self, sites: list[SiteSpec],
                     values: Mapping[str, str | None]) -> dict[str, str]:
        """The global options and the file importing every site."""
        base = values["base"]
        return {
            "options.caddy": HEADER_SLOT + OPTIONS,
            "rpcc.caddy": HEADER_SLOT + "".join(
                f"import {quote(f'{base}/{_site_path(site)}')}\n" for site in sites),
        }


def parse_metrics(text: str) -> ProxyCounters:
    """Counters from Caddy's Prometheus metrics: requests in flight stand for the
    active connections (Caddy has no connection gauge), summed over its servers, and
    requests served.  Before its first request Caddy has no such samples: 0.

    :raises ValueError: for text that is not Prometheus' text format, or holds no
        metric at all.
    """
    totals = {IN_FLIGHT: 0.0, REQUESTS: 0.0}
    samples = [sample for family in text_string_to_metric_families(text)
               for sample in family.samples]
    if not samples:
        raise ValueError("no metrics in the answer")
    for sample in samples:
        if sample.name in totals:
            totals[sample.name] += sample.value
    return ProxyCounters(active_connections=int(totals[IN_FLIGHT]),
                         requests_total=int(totals[REQUESTS]))


def _node_path(node: NodeSpec, relative: str) -> str:
    return f"{node.config_dir.rstrip('/')}/{relative}"


def _fingerprint(certificate: CertificateSpec) -> str:
    """Names a certificate's files.  Caddy keeps one copy of identical certificates,
    so sites sharing one (a wildcard, say) must load it from the same files: with a
    copy per site, the second site's TLS handshakes fail."""
    return hashlib.sha256(certificate.chain_pem.encode()).hexdigest()[:16]


def _site_path(site: SiteSpec) -> str:
    return f"sites/{file_stem(host_name(site.domain))}.caddy"


class _SiteRenderer:
    """The files of one site; a class only to keep the node's values and the site at
    hand."""

    def __init__(self, values: Mapping[str, str | None], site: SiteSpec) -> None:
        # The domain names the site file and the access log: checked before either.
        host_name(site.domain)
        self.values, self.site = values, site

    def files(self) -> dict[str, str]:
        site = self.site
        lines = self._http_block()
        out = {}
        if site.certificate is not None and site.serves_tls:
            fingerprint = _fingerprint(site.certificate)
            lines += ["", *self._https_block(fingerprint)]
            # PEM readers skip text before the first BEGIN line, so the header stays.
            header = file_header("#", None, f"certificate {fingerprint}")
            out[f"tls/{fingerprint}.crt"] = header + site.certificate.chain_pem
            out[f"tls/{fingerprint}.key"] = header + site.certificate.key_pem
        out[_site_path(site)] = (file_header("#", site, str(site.config_version))
                                 + "\n".join(lines) + "\n")
        return out

    def _addresses(self, scheme: str, port: str | None) -> str:
        return " ".join(quote(f"{scheme}://{host_name(name)}:{port}")
                        for name in self.site.server_names)

    def _common(self) -> list[str]:
        """Bind, access log and the ACME challenge: the same on both listeners.

        The challenge path is its own ``handle``, which Caddy tries before the
        catch-all one, so tokens are served even for blocked, protected or
        redirected sites."""
        lines = []
        listen = self.values["listen"]
        if listen is not None:
            lines.append(f"bind {quote(listen)}")
        log_file = f"{self.values['log_root']}/{file_stem(self.site.domain)}.access.log"
        lines += _block("log", [f"output file {quote(log_file)}"])
        lines += _block(
            "handle /.well-known/acme-challenge/*",
            [f"root * {quote(str(self.values['acme_root']))}", "file_server"],
        )
        return lines

    def _http_block(self) -> list[str]:
        site = self.site
        if site.force_https and site.serves_tls:
            # Placeholders are written literally here: no user value is involved.
            body = [f"redir https://{{host}}{self.values['https_suffix']}{{uri}} 308"]
        else:
            body = _block("route", self._site_route(tls=False))
        return _block(self._addresses("http", self.values["http_port"]),
                      self._common() + _block("handle", body))

    def _https_block(self, fingerprint: str) -> list[str]:
        chain = f"{self.values['base']}/tls/{fingerprint}.crt"
        key = f"{self.values['base']}/tls/{fingerprint}.key"
        body = _block("route", self._site_route(tls=True))
        return _block(self._addresses("https", self.values["https_port"]),
                      [f"tls {quote(chain)} {quote(key)}", *self._common(),
                       *_block("handle", body)])

    def _site_route(self, *, tls: bool) -> list[str]:
        """Everything but the challenge, in order: headers first so that they are on
        every answer, then the block page, IP rules, basic auth, the proxy."""
        site = self.site
        lines = self._headers(tls)
        if site.blocked:
            page = f"This site is blocked: {site.blocked_reason}" if site.blocked_reason \
                else "This site is blocked."
            return lines + [f"respond {quote(page)} 451"]
        if site.ip_deny:
            lines += [f"@rpcc_denied remote_ip {' '.join(map(quote, site.ip_deny))}",
                      "respond @rpcc_denied 403"]
        if site.ip_allow:
            lines += [f"@rpcc_not_allowed not remote_ip {' '.join(map(quote, site.ip_allow))}",
                      "respond @rpcc_not_allowed 403"]
        if site.basic_auth:
            # Caddy 2.6 takes the bcrypt hash base64-encoded; encoding also keeps the
            # hash's '$' out of placeholder expansion.
            lines += _block("basicauth", [
                f"{quote(user)} {quote(base64.b64encode(hashed.encode()).decode())}"
                for user, hashed in site.basic_auth
            ])
        return lines + self._reverse_proxy()

    def _headers(self, tls: bool) -> list[str]:
        """Response headers; ``defer`` applies them when the response is written, so
        they replace a backend's value instead of adding a second one."""
        pairs = list(self.site.headers)
        if tls and self.site.hsts:
            pairs.append(("Strict-Transport-Security", HSTS_VALUE))
        if not pairs:
            return []
        return _block("header", ["defer", *(f"{quote(_field_name(k))} {quote(v)}"
                                             for k, v in pairs)])

    def _reverse_proxy(self) -> list[str]:
        site = self.site
        options = []
        if len(site.backends) > 1:
            options += ["lb_policy round_robin", f"lb_try_duration {LB_TRY_DURATION}"]
        options += [f"fail_duration {FAIL_DURATION}", f"max_fails {MAX_FAILS}"]
        if site.backend_protocol == "https":
            # SNI is the public name the client asked for, as the Host header is.
            # Backends are reached by address inside the operator's network and often
            # carry self-signed certificates, so they are not verified (as nginx's
            # default proxy_ssl_verify off).
            options += _block("transport http", [
                "tls", f"tls_server_name {quote(site.domain)}", "tls_insecure_skip_verify",
            ])
        upstreams = " ".join(_upstream(b) for b in site.backends)
        return _block(f"reverse_proxy {upstreams}", options)


ENGINE = CaddyEngine()
