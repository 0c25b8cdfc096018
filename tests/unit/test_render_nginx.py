"""The nginx renderer, without a running nginx: golden files, structure, escaping,
and gixy-ng's static analysis of what it renders.

Regenerate the golden files with ``UPDATE_GOLDEN=1`` and review the diff like code.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from app.engines import get_engine
from app.engines.base import BackendSpec, Capability, NodeSpec, SiteSpec, file_header
from app.engines.nginx import ENGINE, NginxEngine, build_environment, nginx_bare, nginx_quoted
from tests.nginx_node import NginxPrefix, golden_sites, long_domain, self_signed

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden" / "nginx"
GOLDEN_NODE = NodeSpec(
    name="golden", proxy_type="nginx", config_dir="/etc/nginx/rpcc",
    test_command="nginx -t -q", reload_command="nginx -s reload",
    listen_address="192.0.2.1", http_port=80, https_port=443,
)
CERTIFICATE = self_signed(["everything.example.com", "secure.example.com"])
SITES = golden_sites(CERTIFICATE)


def server_blocks(text: str) -> list[str]:
    """The ``server { ... }`` blocks of a site file (they start at column 0)."""
    return re.findall(r"^server \{\n.*?^\}\n", text, flags=re.MULTILINE | re.DOTALL)


def site_conf(site: SiteSpec, node: NodeSpec = GOLDEN_NODE) -> str:
    return ENGINE.render(node, [site]).files[f"sites/{site.domain}.conf"]


# --------------------------------------------------------------------------- #
# Golden files                                                                #
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("case", sorted(SITES))
def test_rendering_matches_golden_files(case):
    files = {path: text for path, text in ENGINE.render(GOLDEN_NODE, [SITES[case]]).files.items()
             # Certificates and keys are generated per run; test_tls_files covers them.
             if not path.endswith(".pem")}
    case_dir = GOLDEN_DIR / case
    if os.environ.get("UPDATE_GOLDEN"):
        for old in case_dir.rglob("*"):
            if old.is_file():
                old.unlink()
        for path, text in files.items():
            (case_dir / path).parent.mkdir(parents=True, exist_ok=True)
            (case_dir / path).write_text(text)
    stored = {str(p.relative_to(case_dir)): p.read_text()
              for p in case_dir.rglob("*") if p.is_file()}
    assert sorted(files) == sorted(stored), "files differ: run with UPDATE_GOLDEN=1 and review"
    for path, text in files.items():
        assert text == stored[path], f"{case}/{path} differs from its golden file"


def test_inlined_partials_render_exactly_like_runtime_includes():
    runtime = NginxEngine(build_environment(inline_partials=False))
    sites = list(SITES.values())
    assert runtime.render(GOLDEN_NODE, sites).files == ENGINE.render(GOLDEN_NODE, sites).files


# --------------------------------------------------------------------------- #
# File set                                                                    #
# --------------------------------------------------------------------------- #

def test_engine_is_registered_and_honours_every_setting():
    assert get_engine("nginx") is ENGINE
    assert ENGINE.capabilities == Capability.ALL
    assert all(not ENGINE.missing_capabilities(site) for site in SITES.values())


def test_commands_and_include_line_come_from_the_node():
    node = replace(GOLDEN_NODE, test_command="/usr/sbin/nginx -t -c '/etc/nginx/my conf'")
    rendered = ENGINE.render(node, [])
    assert rendered.test_command == ["/usr/sbin/nginx", "-t", "-c", "/etc/nginx/my conf"]
    assert rendered.reload_command == shlex.split(node.reload_command)
    assert rendered.include_line == "include /etc/nginx/rpcc/rpcc.conf;"
    assert rendered.config_dir == node.config_dir
    assert set(rendered.files) == {"rpcc.conf", "status.conf"}


def test_every_file_starts_with_its_header():
    rendered = ENGINE.render(GOLDEN_NODE, list(SITES.values()))
    owner = {path: site for site in SITES.values() for path in rendered.site_files[site.id]}
    for path, text in rendered.files.items():
        site = owner.get(path)
        if path.endswith(".html"):
            assert text.startswith("<!--\n" + file_header("  ", site, "") + "-->\n")
        elif site is not None:
            assert text.startswith(file_header("#", site, "")), path
            assert f"config version {site.config_version}" in text.splitlines()[1]
        else:
            assert text.startswith("# Managed by Reverse Proxy Control Center; do not edit. "
                                   "Shared file, config content "), path


def test_site_files_list_each_sites_own_files():
    rendered = ENGINE.render(GOLDEN_NODE, list(SITES.values()))
    everything, blocked = SITES["everything"], SITES["blocked"]
    assert rendered.site_files[everything.id] == [
        "sites/everything.example.com.conf",
        "sites/everything.example.com/fullchain.pem",
        "sites/everything.example.com/htpasswd",
        "sites/everything.example.com/privkey.pem",
    ]
    assert rendered.site_files[blocked.id] == [
        "sites/blocked.example.com.conf", "sites/blocked.example.com/blocked.html"]
    owned = {path for paths in rendered.site_files.values() for path in paths}
    shared = set(rendered.files) - owned
    assert shared == {
        "rpcc.conf", "status.conf", "upstreams.conf", "limit_req_zones.conf",
        "cache_zones.conf", "geoip2.conf", "websocket.conf", "modsecurity/main.conf",
        "modsecurity/paranoia-2.conf", "modsecurity/paranoia-3.conf",
    }


def test_tls_files_carry_the_certificate_and_key():
    files = ENGINE.render(GOLDEN_NODE, [SITES["tls_hsts"]]).files
    site = SITES["tls_hsts"]
    assert files["sites/secure.example.com/fullchain.pem"] == (
        file_header("#", site, "") + CERTIFICATE.chain_pem.strip() + "\n")
    assert files["sites/secure.example.com/privkey.pem"] == (
        file_header("#", site, "") + CERTIFICATE.key_pem.strip() + "\n")


def test_entry_file_loads_shared_files_before_sites_and_everything_once():
    rendered = ENGINE.render(GOLDEN_NODE, list(SITES.values()))
    entry = rendered.files["rpcc.conf"]
    loaded = re.findall(r"^include /etc/nginx/rpcc/(\S+);$", entry, flags=re.MULTILINE)
    # The deployment's probe file comes last, and only when a deployment wrote it.
    assert loaded.pop() == "probe*.conf"
    nginx_files = [p for p in rendered.files
                   if p.endswith(".conf") and p != "rpcc.conf" and not p.startswith("modsecurity/")]
    assert sorted(loaded) == sorted(nginx_files)
    first_site = min(i for i, p in enumerate(loaded) if p.startswith("sites/"))
    assert all(not p.startswith("sites/") for p in loaded[:first_site])
    assert all(p.startswith("sites/") for p in loaded[first_site:])
    assert "modsecurity_rules_file /etc/nginx/rpcc/modsecurity/main.conf;" in entry
    assert entry.index("modsecurity_rules_file") < entry.index("include ")


def test_shared_files_exist_only_when_a_site_needs_them():
    files = ENGINE.render(GOLDEN_NODE, [SITES["minimal"]]).files
    assert set(files) == {"rpcc.conf", "status.conf", "upstreams.conf",
                          "sites/minimal.example.com.conf"}
    assert "modsecurity" not in files["rpcc.conf"]
    assert "geoip2" not in "".join(files.values())


def test_long_domains_keep_every_file_name_within_255_bytes():
    """Domains reach 253 characters; "<domain>.access.log" would not fit a file name."""
    kept = replace(SITES["minimal"], domain=long_domain(244))
    assert f"sites/{kept.domain}.conf" in ENGINE.render(GOLDEN_NODE, [kept]).files
    long = replace(SITES["everything"], domain=long_domain(253), certificate=CERTIFICATE)
    rendered = ENGINE.render(GOLDEN_NODE, [long, kept])
    (conf,) = [p for p in rendered.site_files[long.id] if p.endswith(".conf")]
    stem = conf.removeprefix("sites/").removesuffix(".conf")
    assert stem.startswith(long.domain[:200]) and stem != long.domain
    assert all(p.startswith(f"sites/{stem}") for p in rendered.site_files[long.id])
    text = rendered.files[conf]
    logs = re.findall(r"^    (?:access|error)_log (\S+);$", text, flags=re.MULTILINE)
    assert logs and all(log.startswith(f"/var/log/nginx/{stem}.") for log in logs)
    names = [part for path in [*rendered.files, *logs] for part in path.split("/")]
    assert max(map(len, names)) == 255
    assert f"include /etc/nginx/rpcc/{conf};" in rendered.files["rpcc.conf"]


def test_blocked_site_has_no_upstream_and_no_credentials_file():
    blocked = replace(SITES["blocked"], basic_auth=(("bob", "$2b$10$x"),))
    files = ENGINE.render(GOLDEN_NODE, [blocked]).files
    assert "upstreams.conf" not in files
    assert "sites/blocked.example.com/htpasswd" not in files


# --------------------------------------------------------------------------- #
# Server blocks                                                               #
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("case", sorted(SITES))
def test_every_server_answers_acme_before_anything_else(case):
    site = SITES[case]
    blocks = server_blocks(site_conf(site))
    assert len(blocks) == (2 if site.serves_tls else 1)
    for block in blocks:
        acme = block.index("    location ^~ /.well-known/acme-challenge/ {\n"
                           "        root /etc/nginx/rpcc-acme;\n")
        assert acme < block.index("    location / {")
        # Nothing restricting or redirecting sits at server level, where it would
        # also apply to the challenge location.
        server_level = "\n".join(line for line in block.splitlines()
                                 if re.match(r"    \S", line))
        for directive in ("allow", "deny", "auth_basic", "limit_req", "modsecurity", "if",
                          "return"):
            assert not re.search(rf"^    {directive}\b", server_level, flags=re.MULTILINE)


@pytest.mark.parametrize("case", sorted(SITES))
def test_server_names_are_exactly_the_sites_names(case):
    site = SITES[case]
    for block in server_blocks(site_conf(site)):
        assert re.findall(r"^    server_name (.*);$", block, flags=re.MULTILINE) == [
            " ".join(site.server_names)]


def test_hsts_only_over_tls_and_redirect_only_over_http():
    http, https = server_blocks(site_conf(SITES["tls_hsts"]))
    assert "    listen 192.0.2.1:80;\n" in http
    assert "    listen 192.0.2.1:443 ssl http2;\n" in https
    assert "Strict-Transport-Security" not in http
    assert '    add_header Strict-Transport-Security "max-age=31536000" always;\n' in https
    assert "return 301 https://$host$request_uri;" in http
    assert "proxy_pass" not in http and "proxy_pass http://rpcc_site_4;" in https
    assert "ssl_certificate /etc/nginx/rpcc/sites/secure.example.com/fullchain.pem;" in https


def test_redirect_names_a_non_default_https_port():
    node = replace(GOLDEN_NODE, https_port=8443)
    assert "return 301 https://$host:8443$request_uri;" in site_conf(SITES["tls_hsts"], node)


def test_tls_settings_wait_for_a_certificate():
    """A Let's Encrypt site without its certificate yet serves plain HTTP, without
    redirecting to an HTTPS server that does not exist."""
    pending = replace(SITES["tls_hsts"], certificate=None)
    (block,) = server_blocks(site_conf(pending))
    assert "ssl" not in block.split("\n")[1] and "return 301" not in block
    assert "Strict-Transport-Security" not in block


def test_listen_binds_the_node_address_or_only_the_port():
    assert "    listen 192.0.2.1:80;\n" in site_conf(SITES["minimal"])
    node = replace(GOLDEN_NODE, listen_address=None, http_port=8080)
    assert "    listen 8080;\n" in site_conf(SITES["minimal"], node)
    node = replace(GOLDEN_NODE, listen_address="2001:db8::1")
    assert "    listen [2001:db8::1]:80;\n" in site_conf(SITES["minimal"], node)


def test_access_rules_deny_first_then_allow_then_deny_all():
    text = site_conf(SITES["everything"])
    rules = re.findall(r"^        ((?:allow|deny) \S+);$", text, flags=re.MULTILINE)
    assert rules == ["deny 198.51.100.7/32", "deny 2001:db8:bad::/48",
                     "allow 198.51.100.0/24", "deny all"]
    only_deny = replace(SITES["minimal"], ip_deny=("203.0.113.0/24",))
    assert "deny all" not in site_conf(only_deny)


def test_rules_for_the_broadcast_address_are_left_out():
    """nginx cannot parse 255.255.255.255, and no client comes from it."""
    site = replace(SITES["minimal"], ip_deny=("255.255.255.255/32", "10.0.0.0/8"),
                   ip_allow=("::ffff:255.255.255.255/128",))
    rules = re.findall(r"^        ((?:allow|deny) \S+);$", site_conf(site), flags=re.MULTILINE)
    assert rules == ["deny 10.0.0.0/8", "deny all"]


def test_paranoia_levels_map_low_medium_high_to_one_two_three():
    for level, number in (("low", 1), ("medium", 2), ("high", 3)):
        files = ENGINE.render(GOLDEN_NODE, [replace(SITES["minimal"], waf_level=level)]).files
        assert (f"modsecurity_rules_file /etc/nginx/rpcc/modsecurity/paranoia-{number}.conf;"
                in files["sites/minimal.example.com.conf"])
        assert (f'setvar:tx.paranoia_level={number}"'
                in files[f"modsecurity/paranoia-{number}.conf"])
    assert "modsecurity" not in site_conf(SITES["minimal"])


def test_modsecurity_main_config_keeps_its_state_on_the_node():
    main = ENGINE.render(GOLDEN_NODE, [SITES["geo_waf_cache"]]).files["modsecurity/main.conf"]
    for line in ("SecRuleEngine On", "SecStatusEngine Off",
                 "SecAuditLog /var/log/nginx/modsec_audit.log", "SecTmpDir /var/cache/rpcc",
                 "SecDataDir /var/cache/rpcc",
                 "SecUnicodeMapFile /etc/nginx/unicode.mapping 20127",
                 "Include /etc/modsecurity/crs/crs-setup.conf",
                 "Include /usr/share/modsecurity-crs/rules/*.conf"):
        assert line + "\n" in main
    assert main.index("crs-setup.conf") < main.index("rules/*.conf")


def test_geo_rules_map_the_country_to_a_denial():
    files = ENGINE.render(GOLDEN_NODE, [SITES["everything"], SITES["geo_waf_cache"]]).files
    geo = files["geoip2.conf"]
    assert "geoip2 /usr/share/GeoIP/GeoLite2-Country.mmdb {" in geo
    allow = re.search(r"map \$rpcc_country \$rpcc_geo_denied_2 \{\n(.*?)\}", geo, re.DOTALL)
    deny = re.search(r"map \$rpcc_country \$rpcc_geo_denied_5 \{\n(.*?)\}", geo, re.DOTALL)
    assert allow and allow.group(1).split() == ["default", "1;", "US", "0;", "DE", "0;"]
    assert deny and deny.group(1).split() == ["default", "0;", "KP", "1;", "IR", "1;"]
    assert "if ($rpcc_geo_denied_5) {\n            return 403;" in files[
        "sites/shop.example.org.conf"]


def test_upstream_lists_backends_with_weights_and_passive_health():
    upstreams = ENGINE.render(GOLDEN_NODE, [SITES["backends"]]).files["upstreams.conf"]
    assert ("upstream rpcc_site_6 {\n"
            "    server 192.0.2.60:443 weight=5 max_fails=3 fail_timeout=10s;\n"
            "    server 192.0.2.61:443 max_fails=3 fail_timeout=10s;\n"
            "    server [2001:db8::60]:443 weight=2 max_fails=3 fail_timeout=10s;\n"
            "    keepalive 16;\n}") in upstreams
    conf = site_conf(SITES["backends"])
    assert "proxy_pass https://rpcc_site_6;" in conf
    assert "proxy_ssl_server_name on;\n        proxy_ssl_name $host;" in conf


def test_cache_and_rate_limit_zones_are_per_site():
    files = ENGINE.render(GOLDEN_NODE, [SITES["everything"]]).files
    assert ("limit_req_zone $binary_remote_addr zone=rpcc_rl_2:1m rate=20r/s;"
            in files["limit_req_zones.conf"])
    assert ("proxy_cache_path /var/cache/rpcc/site-2 levels=1:2 keys_zone=rpcc_cache_2:1m "
            "max_size=1g inactive=600s use_temp_path=off;" in files["cache_zones.conf"])
    conf = files["sites/everything.example.com.conf"]
    assert "limit_req zone=rpcc_rl_2 burst=40 nodelay;\n        limit_req_status 429;" in conf
    assert "proxy_cache_valid 200 301 302 120s;" in conf
    assert "proxy_no_cache $http_cookie $http_authorization;" in conf


def test_rate_limit_without_burst_leaves_the_parameter_out():
    """nginx refuses ``burst=0`` ("invalid burst value"); no burst is the same limit."""
    site = replace(SITES["minimal"], rate_limit_rps=5, rate_limit_burst=0)
    assert "        limit_req zone=rpcc_rl_1 nodelay;\n" in site_conf(site)


def test_blocked_page_escapes_the_reason():
    site = replace(SITES["blocked"], blocked_reason="<script>alert(1)</script> & more")
    page = ENGINE.render(GOLDEN_NODE, [site]).files["sites/blocked.example.com/blocked.html"]
    assert "<p>&lt;script&gt;alert(1)&lt;/script&gt; &amp; more</p>" in page
    assert "<script>" not in page


def test_htpasswd_holds_the_hashes():
    text = ENGINE.render(GOLDEN_NODE, [SITES["everything"]]).files[
        "sites/everything.example.com/htpasswd"]
    assert text.splitlines()[-1] == "alice:" + SITES["everything"].basic_auth[0][1]


def numbered_sites(count: int, geo_every: int = 0) -> list[SiteSpec]:
    """``s<i>.example.com`` with a www alias; every ``geo_every``-th has country rules."""
    geo: dict[str, Any] = {"geo_mode": "deny", "geo_countries": ("KP",)}
    return [SiteSpec(id=i, owner_id=1, domain=f"s{i}.example.com",
                     aliases=(f"www.s{i}.example.com",), backends=(BackendSpec("192.0.2.1", 80),),
                     **(geo if geo_every and i % geo_every == 0 else {}))
            for i in range(1, count + 1)]


def hash_settings(sites: list[SiteSpec]) -> dict[str, int]:
    entry = ENGINE.render(GOLDEN_NODE, sites).files["rpcc.conf"]
    return {name: int(value) for name, value in
            re.findall(r"^((?:server_names|variables)_hash_\w+) (\d+);$", entry, re.MULTILINE)}


def test_hash_sizes_grow_with_the_node():
    """nginx stores a name as pointer + 2-byte length + name (aligned to 8) and ends
    each bucket with a pointer: a 199-character name needs 224 bytes, which nginx
    rounds up to its 64-byte cache line; the real ``nginx -t`` accepts 256 and refuses
    128 (tests/integration/test_nginx_engine.py proves each size here)."""
    sites = numbered_sites(5000, geo_every=4)
    sites.append(SiteSpec(id=9999, owner_id=1, domain=long_domain(199),
                          backends=(BackendSpec("192.0.2.1", 80),)))
    assert hash_settings(sites) == {
        "server_names_hash_max_size": 32768,  # 10,001 names, twice over
        "server_names_hash_bucket_size": 256,
        "variables_hash_max_size": 4096,  # 1,250 country maps and nginx's own
        "variables_hash_bucket_size": 128,
    }
    assert hash_settings([SITES["minimal"]]) == {
        "server_names_hash_max_size": 512, "server_names_hash_bucket_size": 64,
        "variables_hash_max_size": 1024, "variables_hash_bucket_size": 128,
    }


def test_a_hundred_ordinary_names_need_more_than_64_byte_buckets():
    """A 64-byte bucket holds one name like ``www.s12.example.com``: nginx then needs
    a table size where no two names collide, and warns when it finds none."""
    assert hash_settings(numbered_sites(1000, geo_every=1)) == {
        "server_names_hash_max_size": 4096, "server_names_hash_bucket_size": 128,
        "variables_hash_max_size": 4096, "variables_hash_bucket_size": 128,
    }


@pytest.mark.parametrize("length,bucket", [(46, 64), (47, 128), (110, 128), (111, 256),
                                           (238, 256), (239, 512), (253, 512)])
def test_bucket_size_is_the_smallest_power_of_two_nginx_accepts(length, bucket):
    site = replace(SITES["minimal"], domain=long_domain(length))
    assert hash_settings([site])["server_names_hash_bucket_size"] == bucket


def test_wildcard_aliases_are_sized_too():
    """nginx keeps ``*.<label>.example.net`` as labels in nested hashes: a thousand
    long labels under one parent need 256-byte buckets."""
    sites = [replace(site, aliases=(f"*.{'w' * 56}{site.id}.example.net",))
             for site in numbered_sites(1000)]
    assert hash_settings(sites)["server_names_hash_bucket_size"] == 256


# --------------------------------------------------------------------------- #
# Defence in depth                                                            #
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("value", ['a"b', "a\\b", "$host", "a{b", "a}b", "a;b", "a\nb",
                                   "a\rb", "a\x00b", "a\x7fb", "a\u2028b"])
def test_quoting_filters_refuse_what_nginx_would_interpret(value):
    with pytest.raises(ValueError):
        nginx_quoted(value)
    with pytest.raises(ValueError):
        nginx_bare(value)


@pytest.mark.parametrize("value", ["a b", "a'b", "a#b", "", "a\tb"])
def test_bare_tokens_refuse_what_would_split_them(value):
    with pytest.raises(ValueError):
        nginx_bare(value)


def test_quoting_keeps_safe_text_intact():
    text = "max-age=3600, private (x) | y ~ z @ [a] ^ ! # % & * + / : = ?"
    assert nginx_quoted(text) == f'"{text}"'
    assert nginx_bare("/var/log/nginx") == "/var/log/nginx"


@pytest.mark.parametrize("site", [
    replace(SITES["minimal"], headers=(("X-Test", 'a" always; add_header X-Evil "1'),)),
    replace(SITES["minimal"], domain="evil.example.com;"),
    replace(SITES["minimal"], aliases=("a.example.com\nserver {",)),
    replace(SITES["minimal"], backends=(BackendSpec("127.0.0.1;", 80),)),
    replace(SITES["minimal"], ip_deny=("all; allow all",)),
    replace(SITES["minimal"], basic_auth=(("eve:x", "$2b$10$y"),)),
    replace(SITES["minimal"], waf_level="paranoid"),
])
def test_values_that_escaped_validation_never_reach_a_file(site):
    with pytest.raises(ValueError):
        ENGINE.render(GOLDEN_NODE, [site])


def test_sites_sharing_an_id_or_a_domain_or_lacking_backends_are_refused():
    minimal = SITES["minimal"]
    with pytest.raises(ValueError):
        ENGINE.render(GOLDEN_NODE, [minimal, replace(minimal, domain="other.example.com")])
    with pytest.raises(ValueError):
        ENGINE.render(GOLDEN_NODE, [minimal, replace(minimal, id=99)])
    with pytest.raises(ValueError):
        ENGINE.render(GOLDEN_NODE, [replace(minimal, backends=())])


# --------------------------------------------------------------------------- #
# gixy-ng                                                                     #
# --------------------------------------------------------------------------- #

@pytest.fixture()
def prefix() -> Iterator[NginxPrefix]:
    scratch = NginxPrefix()
    yield scratch
    scratch.remove()


def _only_denies(finding: dict[str, str]) -> bool:
    """gixy's return_bypasses_allow_deny flags any ``return`` beside allow/deny.  Ours
    is the country rule's ``if (...) { return 403; }``: a return that only refuses
    cannot let through anyone allow/deny would have stopped, so that finding is a
    false positive; any other return beside allow/deny is still reported."""
    returns = re.findall(r"return ([^;]*);", finding["config"])
    return finding["plugin"] == "return_bypasses_allow_deny" and returns == ["403"] * len(returns)


def test_gixy_finds_nothing_of_medium_or_high_severity(prefix):
    node = replace(prefix.spec, geoip_db_path="/usr/share/GeoIP/GeoLite2-Country.mmdb")
    prefix.write(ENGINE.render(node, list(SITES.values())))
    gixy = Path(sys.executable).with_name("gixy")
    result = subprocess.run([str(gixy), "-f", "json", str(prefix.main_conf)],
                            capture_output=True, text=True, timeout=120)
    findings = json.loads(result.stdout)
    serious = [f for f in findings
               if f["severity"] in ("MEDIUM", "HIGH") and not _only_denies(f)]
    assert not serious, json.dumps(serious, indent=2)
    # The analysis did read the sites (their low-severity notes prove it).
    assert any("everything.example.com" in f["config"] for f in findings)
