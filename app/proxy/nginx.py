"""Nginx engine: renders a node's managed directory from Jinja2 templates.

What the node must provide (checked by the node's test command, not here):

* ``nginx.conf`` loads the two dynamic modules the sites may use, in the main
  context (Debian's ``libnginx-mod-http-modsecurity`` and ``libnginx-mod-http-geoip2``
  do this through ``modules-enabled/``)::

      load_module modules/ngx_http_modsecurity_module.so;
      load_module modules/ngx_http_geoip2_module.so;

  and carries :meth:`NginxEngine.include_line` (``include <config_dir>/rpcc.conf;``)
  inside its ``http {}`` block.  The managed directory owns
  ``server_names_hash_*`` and ``variables_hash_max_size`` (sized for its sites), so
  ``nginx.conf`` must not set them, nor load ModSecurity rules of its own.
* Debian's ``modsecurity-crs`` (the paths in ``CRS_FILES``) and ``unicode.mapping``.
* ``log_dir`` and ``cache_dir`` exist.  Each site has its own access and error log,
  so the master opens two descriptors per site: a node carrying N sites needs a
  ``nofile`` limit above 2N (systemd ``LimitNOFILE``) and ``worker_rlimit_nofile``.
* ACME HTTP-01 tokens live at ``<acme_webroot>/.well-known/acme-challenge/<token>``
  (certbot's ``--webroot`` layout), world-readable: workers run unprivileged.

Design notes:

* ModSecurity: parsing the Core Rule Set costs about 60 ms and 16 MB per
  ``modsecurity_rules_file`` that loads it, and nginx loads it again for every
  server or location naming such a file (50 WAF sites: 4 s and 850 MB for
  ``nginx -t``).  So the CRS is loaded once, at http level, and every block inherits
  it (about 50 KB per server); a WAF site's location turns the engine on and names
  a one-line file per paranoia level.  libmodsecurity runs a block's own rules before
  the inherited ones, so the ``setvar:tx.paranoia_level`` action runs before the
  CRS initialisation rules read it.  Blocks without ``modsecurity on`` inspect nothing.
* Everything that restricts access (IP lists, basic auth, rate limit, WAF, country
  rules) lives in the proxied location, never at server level, so that the ACME
  challenge location stays reachable: nginx has no way to switch ``limit_req`` off
  in a nested block.
* All ``add_header`` directives sit at server level: a nested ``add_header`` would
  silently drop the inherited ones (HSTS among them).
* nginx 1.22 negotiates HTTP/2 per listening socket: if any TLS site on a node's
  HTTPS port asks for HTTP/2, every TLS site on that port offers it.
* Backends named by host name are resolved when nginx loads the configuration
  (upstream ``resolve`` needs nginx 1.27.3); prefer IP addresses for backends that move.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, Template

from app.proxy.base import (
    Capability,
    Engine,
    NodeSpec,
    RenderedConfig,
    SiteSpec,
    acme_webroot,
    file_header,
    listen_address,
)

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "nginx_templates"
ENTRY_FILE = "rpcc.conf"
PARANOIA_LEVELS = {"low": 1, "medium": 2, "high": 3}
GEO_MODES = ("allow", "deny")
BACKEND_SCHEMES = ("http", "https")
# Debian's modsecurity-crs, in the order of its own owasp-crs.load (libmodsecurity
# has no IncludeOptional, so the operator's exclusion files must exist; the package
# ships them).
CRS_FILES = (
    "/etc/modsecurity/crs/crs-setup.conf",
    "/etc/modsecurity/crs/REQUEST-900-EXCLUSION-RULES-BEFORE-CRS.conf",
    "/usr/share/modsecurity-crs/rules/*.conf",
    "/etc/modsecurity/crs/RESPONSE-999-EXCLUSION-RULES-AFTER-CRS.conf",
)
UNICODE_MAPPING = "/etc/nginx/unicode.mapping"

# Characters that would end or change an nginx token or string.
_NGINX_SPECIAL = re.compile(r'["\\$;{}]')
_WORD_SPECIAL = re.compile(r"[\s'#]")


def nginx_quoted(value: Any) -> str:
    """A double-quoted nginx string.  Defence in depth: values were validated
    before rendering, so this only fires if a validator let something through.

    :raises ValueError: on a quote, backslash, ``$``, brace, ``;`` or control character.
    """
    text = str(value)
    if _NGINX_SPECIAL.search(text) or not text.isprintable():
        raise ValueError(f"refusing to place {text[:40]!r} in an nginx configuration")
    return f'"{text}"'


def nginx_bare(value: Any) -> str:
    """A bare nginx token (name, address, path): :func:`nginx_quoted`'s checks plus
    no whitespace, single quote or ``#``, and not empty.

    :raises ValueError: when the value could not stand alone as one token.
    """
    text = str(value)
    if not text or _WORD_SPECIAL.search(text):
        raise ValueError(f"refusing to place {text[:40]!r} in an nginx configuration")
    nginx_quoted(text)
    return text


def _hash_size(entries: int, floor: int) -> int:
    """A power of two with room for twice the entries, so nginx builds its hash at
    once instead of warning and falling back to a slow search."""
    return max(floor, 1 << (2 * entries - 1).bit_length()) if entries else floor


def _bucket_size(longest_name: int) -> int:
    """The smallest power-of-two bucket (64 at least) that holds the longest server
    name plus nginx's per-entry pointer and length."""
    size = 64
    while size < longest_name + 2 * 8 + 2:
        size *= 2
    return size


class _InliningLoader(FileSystemLoader):
    """Splices each ``{% include "_partial" %}`` into the including template's source
    when it is loaded, so that a site renders as one compiled function: a runtime
    include copies the whole context each time, a third of the render time."""

    _INCLUDE = re.compile(r'^[ \t]*\{%-?\s*include\s+"(_[^"]+)"\s*-?%\}\n?', re.MULTILINE)

    def get_source(self, environment: Environment,
                   template: str) -> tuple[str, str, Callable[[], bool]]:
        source, filename, uptodate = super().get_source(environment, template)
        inlined = self._INCLUDE.sub(lambda m: self.get_source(environment, m.group(1))[0],
                                    source)
        return inlined, filename, uptodate


def build_environment(inline_partials: bool = True) -> Environment:
    """The template environment; ``inline_partials=False`` keeps runtime includes,
    which must render the same text (a test holds the two to that)."""
    loader = _InliningLoader(TEMPLATE_DIR) if inline_partials else FileSystemLoader(TEMPLATE_DIR)
    env = Environment(
        loader=loader,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        # Templates are fixed at deployment: never stat them again while rendering.
        auto_reload=False,
        autoescape=lambda name: bool(name and name.endswith(".html.j2")),
    )
    env.filters["quoted"] = nginx_quoted
    env.filters["bare"] = nginx_bare
    return env


TEMPLATE_NAMES = (
    "site.conf", "blocked.html", "rpcc.conf", "upstreams.conf", "limit_req_zones.conf",
    "cache_zones.conf", "geoip2.conf", "websocket.conf", "modsecurity/main.conf",
    "modsecurity/paranoia.conf",
)


def _htpasswd(site: SiteSpec) -> str:
    """``user:hash`` lines; nginx skips lines starting with ``#`` (the header)."""
    lines = [file_header("#", site, "")]
    for username, password_hash in site.basic_auth:
        for part in (username, password_hash):
            if ":" in part or not part.isprintable() or part != part.strip() or not part:
                raise ValueError(f"refusing basic auth entry for site {site.id}")
        lines.append(f"{username}:{password_hash}\n")
    return "".join(lines)


def _pem(site: SiteSpec, pem: str) -> str:
    """PEM text after the header: OpenSSL skips the lines before ``-----BEGIN``."""
    return file_header("#", site, "") + pem.strip() + "\n"


class NginxEngine(Engine):
    """nginx honours every site setting (see the module docstring for the how)."""

    name = "nginx"
    capabilities = Capability.ALL

    def __init__(self, environment: Environment | None = None) -> None:
        """Compiles every template once, here, rather than per render."""
        env = environment or build_environment()
        self._templates: dict[str, Template] = {
            name: env.get_template(f"{name}.j2") for name in TEMPLATE_NAMES
        }

    def include_line(self, node: NodeSpec) -> str:
        return f"include {nginx_bare(node.config_dir.rstrip('/') + '/' + ENTRY_FILE)};"

    def render(self, node: NodeSpec, sites: list[SiteSpec]) -> RenderedConfig:
        """:raises ValueError: for two sites sharing an id or a domain, a proxied site
            without backends, or a value the quoting filters refuse."""
        ordered = sorted(sites, key=lambda s: s.domain)
        _check_unique(ordered)
        base = node.config_dir.rstrip("/")
        https_suffix = "" if node.https_port == 443 else f":{node.https_port}"
        node_context = {
            "node": node,
            "base": base,
        "log_root": node.log_dir.rstrip("/"),
        "cache_root": node.cache_dir.rstrip("/"),
            "acme_root": acme_webroot(node),
            "listen_http": listen_address(node, node.http_port),
            "listen_https": listen_address(node, node.https_port),
            "https_redirect": f"https://$host{https_suffix}$request_uri",
        }
        files: dict[str, str] = {}
        site_files: dict[int, list[str]] = {}
        for site in ordered:
            own = _site_files(site, base, node_context, self._templates)
            files.update(own)
            site_files[site.id] = sorted(own)
        files.update(_shared_files(ordered, node_context, self._templates))
        test_command, reload_command = self.commands(node)
        return RenderedConfig(
            engine=self.name,
            files=files,
            config_dir=node.config_dir,
            test_command=test_command,
            reload_command=reload_command,
            include_line=self.include_line(node),
            site_files=site_files,
        )


def _check_unique(sites: list[SiteSpec]) -> None:
    ids = [s.id for s in sites]
    if len(set(ids)) != len(ids):
        raise ValueError("two sites share an id")
    domains = [s.domain for s in sites]
    if len(set(domains)) != len(domains):
        raise ValueError("two sites share a domain")


def _site_files(site: SiteSpec, base: str, node_context: dict[str, Any],
                templates: dict[str, Template]) -> dict[str, str]:
    """The site's server blocks and the files they name, keyed by relative path."""
    if site.waf_level != "off" and site.waf_level not in PARANOIA_LEVELS:
        raise ValueError(f"site {site.id}: unknown waf_level {site.waf_level!r}")
    if site.geo_mode != "off" and site.geo_mode not in GEO_MODES:
        raise ValueError(f"site {site.id}: unknown geo_mode {site.geo_mode!r}")
    if site.backend_protocol not in BACKEND_SCHEMES:
        raise ValueError(f"site {site.id}: unknown backend_protocol")
    if not site.blocked and not site.backends:
        raise ValueError(f"site {site.id} has no backend")
    conf = f"sites/{nginx_bare(site.domain)}.conf"
    own_dir = f"sites/{site.domain}"
    files: dict[str, str] = {}
    if site.blocked:
        files[f"{own_dir}/blocked.html"] = templates["blocked.html"].render(
            header="<!--\n" + file_header("  ", site, "") + "-->\n", site=site)
    elif site.basic_auth:
        files[f"{own_dir}/htpasswd"] = _htpasswd(site)
    if site.serves_tls:
        assert site.certificate is not None  # serves_tls says so
        files[f"{own_dir}/fullchain.pem"] = _pem(site, site.certificate.chain_pem)
        files[f"{own_dir}/privkey.pem"] = _pem(site, site.certificate.key_pem)
    files[conf] = templates["site.conf"].render(
        header=file_header("#", site, ""), site=site,
        paranoia=PARANOIA_LEVELS.get(site.waf_level), site_dir=f"{base}/{own_dir}",
        **node_context,
    )
    return files


def _shared_version(sites: Iterable[SiteSpec]) -> str:
    """Names the site versions the shared files were built from."""
    summary = ",".join(f"{s.id}:{s.config_version}" for s in sorted(sites, key=lambda s: s.id))
    return "sites " + hashlib.sha256(summary.encode()).hexdigest()[:12]


def _shared_files(sites: list[SiteSpec], node_context: dict[str, Any],
                  templates: dict[str, Template]) -> dict[str, str]:
    """Files every site relies on; each exists only when some site needs it."""
    header = file_header("#", None, _shared_version(sites))
    proxied = [s for s in sites if not s.blocked]
    uses = {
        "upstreams.conf": proxied,
        "limit_req_zones.conf": [s for s in proxied if s.rate_limit_rps is not None],
        "cache_zones.conf": [s for s in proxied if s.cache_enabled],
        "geoip2.conf": [s for s in proxied if s.geo_mode != "off"],
        "websocket.conf": [s for s in proxied if s.websocket],
    }
    context = {"header": header, **node_context}
    files = {name: templates[name].render(sites=used, **context)
             for name, used in uses.items() if used}
    levels = sorted({PARANOIA_LEVELS[s.waf_level] for s in proxied if s.waf_level != "off"})
    if levels:
        files["modsecurity/main.conf"] = templates["modsecurity/main.conf"].render(
            crs_files=CRS_FILES, unicode_mapping=UNICODE_MAPPING, **context)
        for level in levels:
            files[f"modsecurity/paranoia-{level}.conf"] = templates[
                "modsecurity/paranoia.conf"].render(level=level, **context)
    names = [name for site in sites for name in site.server_names]
    files[ENTRY_FILE] = templates["rpcc.conf"].render(
        includes=[name for name in uses if name in files],
        waf=bool(levels),
        sites=sites,
        server_names_hash_max_size=_hash_size(len(names), 512),
        server_names_hash_bucket_size=_bucket_size(max(map(len, names), default=0)),
        # Each country-rule site adds one map variable; room for nginx's own too.
        variables_hash_max_size=_hash_size(len(uses["geoip2.conf"]) + 512, 1024),
        **context,
    )
    return files


ENGINE = NginxEngine()
