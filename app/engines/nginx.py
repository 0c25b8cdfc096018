"""Nginx engine: renders a node's managed directory from Jinja2 templates.

What the node must provide (checked by the node's test command, not here):

* ``nginx.conf`` loads the two dynamic modules the sites may use, in the main
  context (Debian's ``libnginx-mod-http-modsecurity`` and ``libnginx-mod-http-geoip2``
  do this through ``modules-enabled/``)::

      load_module modules/ngx_http_modsecurity_module.so;
      load_module modules/ngx_http_geoip2_module.so;

  and carries :meth:`NginxEngine.include_line` (``include <config_dir>/rpcc.conf;``)
  inside its ``http {}`` block.  The managed directory owns
  ``server_names_hash_*`` and ``variables_hash_*`` (sized for its sites), so
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
* The proxy's counters (``stub_status``) are served by a server of their own on
  ``127.0.0.1:<status port>`` (``status.conf``): the control plane reads them through
  a channel forwarded over SSH.  Sites listen on the node's listen address and its
  HTTP and HTTPS ports, which the status port must differ from, so no site can share
  that socket and no request from the network reaches it, whatever its Host.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import operator
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, Template

from app.engines.base import (
    HEADER_SLOT,
    PROBE_HOST,
    PROBE_PATH,
    STATUS_PATH,
    Capability,
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
    listen_address,
)

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "nginx_templates"
# What a site's own files and the shared ones take from the node (see FormEngine).
NODE_VALUES = ("base", "log_root", "cache_root", "acme_root", "listen_http", "listen_https",
               "https_redirect", "geoip_db_path", "status_listen")
ENTRY_FILE = "rpcc.conf"
PROBE_FILE = "probe.conf"
STATUS_FILE = "status.conf"
# The status listener binds this address only: the node's own loopback.
STATUS_ADDRESS = "127.0.0.1"
STATUS_MISSING = ("the status listener does not answer on the node: deploy the pool once "
                  "so that it is rendered (and check that no other program holds its port)")
PARANOIA_LEVELS = {"low": 1, "medium": 2, "high": 3}
GEO_MODES = ("allow", "deny")
# A site's parts of the shared files, and its server names' hash entries, kept per
# process (a few hundred bytes each).
PARTS_CACHE_SIZE = 50_000
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


_LIMITED_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def never_a_client(cidr: Any) -> bool:
    """Whether an allow/deny rule names only 255.255.255.255 (or its IPv4-mapped
    form).  nginx reads that address as its parse failure (INADDR_NONE) and refuses
    the whole configuration, while no TCP client can ever come from it: leaving the
    rule out matches exactly the same clients."""
    try:
        network = ipaddress.ip_network(str(cidr))
    except ValueError:
        return False  # not an address at all: the bare filter refuses it
    address = network.network_address
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else address
    return network.num_addresses == 1 and mapped == _LIMITED_BROADCAST


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


# nginx's hash key (ngx_hash_key_lc) is the polynomial sum(byte * 31**k) over the
# lower-case name, kept in a 64-bit ngx_uint_t; precomputed powers per name length.
_KEY_MASK = (1 << 64) - 1
_POWERS = [tuple(31 ** k for k in range(length - 1, -1, -1)) for length in range(256)]
# A 64-byte bucket holds one name of 15 characters or more (cache line of 64 bytes,
# 8 of them for the bucket's end): nginx's own variables need more than one a bucket.
VARIABLES_BUCKET_FLOOR = 128


@functools.lru_cache(maxsize=PARTS_CACHE_SIZE)
def _entry(name: str) -> tuple[int, int]:
    """(key, bytes) of one name in an nginx hash bucket: a value pointer, a 2-byte
    length and the name, aligned to 8 (NGX_HASH_ELT_SIZE)."""
    data = name.lower().encode()
    key = sum(map(operator.mul, data, _POWERS[len(data)])) & _KEY_MASK
    return key, 8 + ((len(data) + 2 + 7) & ~7)


def _fits(entries: list[tuple[int, int]], size: int, bucket: int) -> bool:
    """Whether ``size`` buckets of ``bucket`` bytes hold these entries, each bucket
    keeping room for its terminating pointer (as ngx_hash_init checks)."""
    room = bucket - 8
    load = [0] * size
    for key, length in entries:
        slot = key % size
        load[slot] += length
        if load[slot] > room:
            return False
    return True


def _bucket_for(hashes: list[list[str]], max_size: int, floor: int) -> int:
    """A ``*_hash_bucket_size`` (``floor`` at least) with which nginx builds each of
    these hashes within ``max_size`` buckets.

    nginx tries table sizes up to ``*_hash_max_size`` and warns ("could not build
    optimal ...") when no size keeps every bucket within its bytes; with 64-byte
    buckets (one ordinary name each) a hundred sites already fail.  Keys that fit at
    ``max_size`` itself guarantee nginx a size, so the bucket doubles until they do.
    A larger bucket costs no memory: nginx allocates what each bucket holds.
    """
    entries = [[_entry(key) for key in keys] for keys in hashes if keys]
    bucket = max(floor, _bucket_size(max((len(k) for keys in hashes for k in keys),
                                         default=0)))
    while not all(_fits(group, max_size, bucket) for group in entries):
        bucket *= 2
    return bucket


def _server_name_hashes(names: list[str]) -> list[list[str]]:
    """The keys of each hash nginx builds for a port's server names: exact names
    share one; wildcard names (``*.a.example.com``) are stored label by label, one
    hash per common suffix."""
    hashes = [[name for name in names if not name.startswith("*.")]]
    levels: dict[tuple[str, ...], set[str]] = {}
    for name in names:
        if name.startswith("*."):
            labels = name[2:].split(".")[::-1]
            for depth, label in enumerate(labels):
                levels.setdefault(tuple(labels[:depth]), set()).add(label)
    return hashes + [sorted(labels) for labels in levels.values()]


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
    env.tests["never_a_client"] = never_a_client
    return env


TEMPLATE_NAMES = (
    "site.conf", "blocked.html", "rpcc.conf", "upstreams.conf", "limit_req_zones.conf",
    "cache_zones.conf", "geoip2.conf", "websocket.conf", "modsecurity/main.conf",
    "modsecurity/paranoia.conf", "probe.conf", "status.conf", "upstream.part",
    "limit_req_zone.part", "cache_zone.part", "geoip2_map.part", "site_include.part",
)
# Which shared files a site that is not blocked takes part in.
SHARED_USES: dict[str, Callable[[SiteSpec], bool]] = {
    "upstreams.conf": lambda site: True,
    "limit_req_zones.conf": lambda site: site.rate_limit_rps is not None,
    "cache_zones.conf": lambda site: site.cache_enabled,
    "geoip2.conf": lambda site: site.geo_mode != "off",
    "websocket.conf": lambda site: site.websocket,
}
# The shared files made of one part per site, after their own first lines, and the
# template of that part.
PART_TEMPLATES = {
    "upstreams.conf": "upstream.part",
    "limit_req_zones.conf": "limit_req_zone.part",
    "cache_zones.conf": "cache_zone.part",
    "geoip2.conf": "geoip2_map.part",
}


# What stub_status answers (nginx 1.22): every figure since the master started.
_STUB_STATUS = re.compile(
    r"Active connections: (\d+) \n"
    r"server accepts handled requests\n (\d+) (\d+) (\d+) \n"
    r"Reading: \d+ Writing: \d+ Waiting: \d+ \n")


def parse_stub_status(text: str) -> ProxyCounters:
    """Counters from a ``stub_status`` answer.  nginx counts the connection that asks
    among the active ones, so it is left out here: an idle node reads 0.  The request
    that asks is counted in the total, as every other request is.

    :raises ValueError: for any other text.
    """
    match = _STUB_STATUS.fullmatch(text)
    if match is None:
        raise ValueError("not an nginx stub_status answer")
    return ProxyCounters(active_connections=max(int(match.group(1)) - 1, 0),
                         requests_total=int(match.group(4)))


def status_port(node: NodeSpec) -> int:
    """The node's status port (its own, else the engine's default).

    :raises ValueError: when it is one of the node's HTTP and HTTPS ports, where a
        site could answer instead of the status listener.
    """
    port = node.status_port or NginxEngine.defaults.status_port
    assert port is not None  # the engine's default names one
    if port in (node.http_port, node.https_port):
        raise ValueError(f"node {node.name}: the status port {port} is also its HTTP or "
                         "HTTPS port; give the node another status port")
    return port


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


class NginxEngine(FormEngine):
    """nginx honours every site setting (see the module docstring for the how)."""

    name = "nginx"
    capabilities = Capability.ALL
    templates = TEMPLATE_DIR
    # nginx reads every conf.d/*.conf inside http {}.
    defaults = NodeDefaults(config_dir="/etc/nginx/rpcc.d", test_command="nginx -t",
                            reload_command="nginx -s reload", log_dir="/var/log/nginx",
                            binary="nginx", package="nginx",
                            main_config="/etc/nginx/conf.d/rpcc.conf", status_port=8899)
    # -p, -c and -e let a node run nginx from its own prefix or configuration file.
    # ``nginx -s reload`` (and systemd's reload, which runs it) parses the whole
    # configuration once more just to find the master's pid file: on a node of
    # thousands of sites that is a third parse per deployment, after the test's and
    # before the master's.  pkill signals the master its pid file names, and only a
    # process called nginx, without reading any configuration.
    command_forms = CommandForms(
        test=("nginx -t [-q] [-p PATH] [-c PATH] [-e PATH]",),
        reload=("nginx -s reload [-p PATH] [-c PATH] [-e PATH]", "systemctl reload nginx",
                "pkill -HUP -F PATH -x nginx"),
        offered_test=("nginx -t", "nginx -t -q", "nginx -t -c /etc/nginx/nginx.conf"),
        offered_reload=("nginx -s reload", "nginx -s reload -c /etc/nginx/nginx.conf",
                        "systemctl reload nginx", "pkill -HUP -F /run/nginx.pid -x nginx"),
    )

    value_names = NODE_VALUES

    def __init__(self, environment: Environment | None = None, once: bool = True) -> None:
        """Compiles every template once, here, rather than per render."""
        super().__init__(once)
        env = environment or build_environment()
        self._templates: dict[str, Template] = {
            name: env.get_template(f"{name}.j2") for name in TEMPLATE_NAMES
        }
        self._parts = functools.lru_cache(maxsize=PARTS_CACHE_SIZE)(self._site_parts)

    def site_files(self, site: SiteSpec, values: Mapping[str, str | None]) -> dict[str, str]:
        return _site_files(site, str(values["base"]), values, self._templates)

    def shared_files(self, sites: list[SiteSpec],
                     values: Mapping[str, str | None]) -> dict[str, str]:
        context = {**values, "node": _PlaceholderNode(str(values["geoip_db_path"]))}
        parts = functools.partial(self._parts, base=str(values["base"]),
                                  cache_root=str(values["cache_root"]))
        return _shared_files(sites, context, self._templates, parts)

    def _site_parts(self, site: SiteSpec, base: str, cache_root: str) -> dict[str, str]:
        """What the site adds to each shared file (cached: a pool's shared files are
        joined from the parts of its sites, so a change renders only its site's)."""
        templates = self._templates
        parts = {name: templates[template].render(site=site, cache_root=cache_root)
                 for name, template in PART_TEMPLATES.items()
                 if not site.blocked and SHARED_USES[name](site)}
        parts[ENTRY_FILE] = templates["site_include.part"].render(
            base=base, conf=f"sites/{file_stem(site.domain)}.conf")
        return parts

    def include_line(self, node: NodeSpec) -> str:
        return f"include {nginx_bare(node.config_dir.rstrip('/') + '/' + ENTRY_FILE)};"

    def probe(self, node: NodeSpec, token: str) -> dict[str, str]:
        """nginx answers ``nginx -s reload`` before its new workers run."""
        return {PROBE_FILE: self._templates["probe.conf"].render(
            header=file_header("#", None, "probe"), token=token, probe_host=PROBE_HOST,
            probe_path=PROBE_PATH, listen_http=listen_address(node, node.http_port))}

    def status_endpoint(self, node: NodeSpec) -> StatusEndpoint:
        """The status listener every render opens (``status.conf``).

        :raises ValueError: see :func:`status_port`.
        """
        return StatusEndpoint(host=STATUS_ADDRESS, port=status_port(node), path=STATUS_PATH,
                              parse=parse_stub_status, missing=STATUS_MISSING)

    def node_values(self, node: NodeSpec) -> dict[str, str | None]:
        """:raises ValueError: for a status port that is a site port, or a value the
            quoting filters refuse."""
        base = node.config_dir.rstrip("/")
        https_suffix = "" if node.https_port == 443 else f":{node.https_port}"
        node_context: dict[str, str | None] = {
            "base": base,
            "log_root": node.log_dir.rstrip("/"),
            "cache_root": node.cache_dir.rstrip("/"),
            "acme_root": acme_webroot(node),
            "listen_http": listen_address(node, node.http_port),
            "listen_https": listen_address(node, node.https_port),
            "https_redirect": f"https://$host{https_suffix}$request_uri",
            "geoip_db_path": node.geoip_db_path,
            "status_listen": f"{STATUS_ADDRESS}:{status_port(node)}",
        }
        # What the templates would have refused as the node's values, refused here.
        for name, value in node_context.items():
            if name != "https_redirect":
                nginx_bare(value)
        return node_context


def _site_files(site: SiteSpec, base: str, node_context: Mapping[str, Any],
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
    stem = file_stem(nginx_bare(site.domain))
    conf = f"sites/{stem}.conf"
    own_dir = f"sites/{stem}"
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
        paranoia=PARANOIA_LEVELS.get(site.waf_level), site_dir=f"{base}/{own_dir}", stem=stem,
        **node_context,
    )
    return files


@dataclasses.dataclass(frozen=True)
class _PlaceholderNode:
    """The one value of the node that shared templates read from ``node``."""

    geoip_db_path: str


def _shared_files(sites: list[SiteSpec], node_context: Mapping[str, Any],
                  templates: dict[str, Template],
                  parts: Callable[[SiteSpec], dict[str, str]]) -> dict[str, str]:
    """Files every site relies on; each exists only when some site needs it.  Those
    with a part per site are their first lines and the sites' parts (``parts``)."""
    header = HEADER_SLOT
    proxied = [s for s in sites if not s.blocked]
    uses = {name: [s for s in proxied if takes_part(s)] for name, takes_part in SHARED_USES.items()}
    context = {"header": header, **node_context}
    site_parts = {site.id: parts(site) for site in sites}
    files = {name: templates[name].render(**context)
             + ("".join(site_parts[s.id][name] for s in used) if name in PART_TEMPLATES else "")
             for name, used in uses.items() if used}
    levels = sorted({PARANOIA_LEVELS[s.waf_level] for s in proxied if s.waf_level != "off"})
    if levels:
        files["modsecurity/main.conf"] = templates["modsecurity/main.conf"].render(
            crs_files=CRS_FILES, unicode_mapping=UNICODE_MAPPING, **context)
        for level in levels:
            files[f"modsecurity/paranoia-{level}.conf"] = templates[
                "modsecurity/paranoia.conf"].render(level=level, **context)
    # The deployment probe's server (probe.conf) shares the HTTP port's name hash.
    names = [name for site in sites for name in site.server_names] + [PROBE_HOST]
    names_max_size = _hash_size(len(names), 512)
    # The variables geoip2.conf and websocket.conf define, one map per country-rule site.
    variables = [f"rpcc_geo_denied_{s.id}" for s in uses["geoip2.conf"]]
    if variables:
        variables.append("rpcc_country")
    if uses["websocket.conf"]:
        variables.append("rpcc_connection_upgrade")
    # Room for nginx's own variables too.
    variables_max_size = _hash_size(len(uses["geoip2.conf"]) + 512, 1024)
    files[STATUS_FILE] = templates["status.conf"].render(status_path=STATUS_PATH, **context)
    files[ENTRY_FILE] = templates["rpcc.conf"].render(
        includes=[name for name in uses if name in files],
        waf=bool(levels),
        site_includes="".join(site_parts[s.id][ENTRY_FILE] for s in sites),
        server_names_hash_max_size=names_max_size,
        server_names_hash_bucket_size=_bucket_for(_server_name_hashes(names),
                                                  names_max_size, 64),
        variables_hash_max_size=variables_max_size,
        variables_hash_bucket_size=_bucket_for([variables], variables_max_size,
                                               VARIABLES_BUCKET_FLOOR),
        **context,
    )
    return files


ENGINE = NginxEngine()
