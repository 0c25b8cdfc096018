"""Finding the site a node's refusal is about, and telling its owner."""

from __future__ import annotations

import pytest

from app.engines.base import BackendSpec, CertificateSpec, NodeSpec, SiteSpec
from app.engines.caddy import ENGINE as CADDY
from app.engines.nginx import ENGINE as NGINX
from app.services import set_aside

NODE = NodeSpec(name="edge", proxy_type="nginx", config_dir="/etc/nginx/rpcc",
                test_command="nginx -t", reload_command="nginx -s reload")


def site(site_id: int, domain: str, host: str = "127.0.0.1") -> SiteSpec:
    return SiteSpec(id=site_id, owner_id=site_id, domain=domain,
                    backends=(BackendSpec(host, 8080),))


SITES = [site(1, "shop.example.com"), site(2, "bob.example.net", "bob-internal.invalid"),
         site(3, "blog.example.org")]


def rendered(engine=NGINX, node=NODE):
    config = engine.render(node, SITES)
    return config.files, config.site_files


DOMAINS = {s.id: s.domain for s in SITES}


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_an_upstream_line_in_the_shared_file_blames_the_site_whose_block_it_is():
    files, site_files = rendered()
    line = line_of(files["upstreams.conf"], "bob-internal.invalid")
    output = (f'nginx: [emerg] host not found in upstream "bob-internal.invalid:8080" in '
              f'/etc/nginx/rpcc/upstreams.conf:{line}\n'
              f'nginx: configuration file /etc/nginx/nginx.conf test failed')
    assert set(set_aside.blamed_sites(output, NODE.config_dir, files, site_files, DOMAINS,
                                  {1, 2, 3})) == {2}
    # Only suspects are blamed: a site the node already runs is not one.
    assert set(set_aside.blamed_sites(output, NODE.config_dir, files, site_files, DOMAINS,
                                  {1, 3})) == set()


def test_a_line_of_a_sites_own_file_blames_that_site():
    files, site_files = rendered()
    [conf] = [path for path in site_files[3] if path.endswith(".conf")]
    output = f"nginx: [emerg] unknown directive \"x\" in /etc/nginx/rpcc/{conf}:7"
    assert set(set_aside.blamed_sites(output, NODE.config_dir, files, site_files, DOMAINS,
                                  {1, 2, 3})) == {3}


def test_caddy_names_the_imported_file_and_line():
    node = NodeSpec(name="c", proxy_type="caddy", config_dir="/etc/caddy/rpcc",
                    test_command="caddy validate", reload_command="caddy reload")
    files, site_files = rendered(CADDY, node)
    [path] = site_files[1]
    output = (f"Error: adapting config using caddyfile: parsing caddyfile tokens for "
              f"'reverse_proxy': wrong argument count, at /etc/caddy/rpcc/{path}:4 import "
              f"chain ['/etc/caddy/Caddyfile:3 (import /etc/caddy/rpcc/rpcc.caddy)']")
    assert set(set_aside.blamed_sites(output, node.config_dir, files, site_files, DOMAINS,
                                  {1, 2})) == {1}


def test_paths_outside_the_managed_directory_and_no_location_blame_no_one():
    files, site_files = rendered()
    for output in ("nginx: [emerg] open() \"/etc/nginx/mime.types\" failed in "
                   "/etc/nginx/nginx.conf:12", "exit status 1", ""):
        assert set(set_aside.blamed_sites(output, NODE.config_dir, files, site_files, DOMAINS,
                                      {1, 2, 3})) == set()


@pytest.mark.parametrize(("bad", "suspects"), [
    ({4}, range(1, 9)),
    ({2, 7}, range(1, 9)),
    ({1, 2, 3}, range(1, 4)),
    ({5}, [5]),
])
def test_bisection_finds_exactly_the_sites_the_node_refuses(bad, suspects):
    asked = []

    def passes(aside: set[int]) -> bool:
        asked.append(frozenset(aside))
        return bad <= aside

    assert set_aside.isolate(suspects, passes) == bad
    assert len(asked) <= set_aside.MAX_BISECT_TESTS


def test_bisection_blames_no_one_when_setting_everyone_aside_does_not_help():
    assert set_aside.isolate([1, 2, 3], lambda aside: False) == set()
    assert set_aside.isolate([], lambda aside: True) == set()


def test_bisection_gives_up_when_its_budget_is_spent():
    assert set_aside.isolate(range(64), lambda aside: set(range(64)) <= aside, budget=5) == set()


def test_the_owner_reads_the_proxys_complaint_without_the_nodes_paths_or_address():
    output = ('nginx: [emerg] host not found in upstream "bob-internal.invalid:8080" in '
              '/srv/edge-3/rpcc/upstreams.conf:12\n'
              'nginx: configuration file /etc/nginx/nginx.conf test failed')
    reason = set_aside.owner_reason(
        "the node's test command refused the configuration: " + output, ["10.20.30.40"])
    assert reason.startswith('A proxy node refused this version of the site: host not found '
                             'in upstream "bob-internal.invalid:8080". ')
    assert "/srv" not in reason and "/etc" not in reason and "upstreams.conf" not in reason
    assert "previous version stays live" in reason
    caddy = ("Error: loading http app module: bind 10.20.30.40:80: address in use, at "
             "/etc/caddy/rpcc/sites/x.caddy:4 import chain ['/etc/caddy/Caddyfile:3']")
    reason = set_aside.owner_reason(caddy, ["10.20.30.40"])
    assert "10.20.30.40" not in reason and "/etc" not in reason and "import chain" not in reason


def test_accepted_settings_come_back_as_they_were_with_the_certificate_in_force():
    spec = SiteSpec(id=9, owner_id=2, domain="a.example.com", aliases=("www.a.example.com",),
                    backends=(BackendSpec("10.0.0.1", 80, 3),), headers=(("X-A", "1"),),
                    basic_auth=(("ann", "$2b$12$hash"),), ip_deny=("10.0.0.0/8",),
                    rate_limit_rps=5, config_version=4,
                    certificate=CertificateSpec("CHAIN", "KEY"))
    data = set_aside.spec_to_json(spec)
    assert "KEY" not in str(data)
    cert = CertificateSpec("NEW CHAIN", "NEW KEY")
    assert set_aside.spec_from_json(data, cert) == SiteSpec(**{
        **spec.__dict__, "certificate": cert})


def test_a_backend_named_like_a_neighbours_domain_does_not_blame_the_neighbour():
    hostile = [site(1, "shop.example.com"), site(2, "bob.example.net", "shop.example.com")]
    config = NGINX.render(NODE, hostile)
    text = config.files["upstreams.conf"]
    line = max(i for i, row in enumerate(text.splitlines(), 1)
               if "server shop.example.com" in row)
    output = (f'nginx: [emerg] host not found in upstream "shop.example.com:8080" in '
              f'/etc/nginx/rpcc/upstreams.conf:{line}')
    assert set(set_aside.blamed_sites(output, NODE.config_dir, config.files, config.site_files,
                                  {1: "shop.example.com", 2: "bob.example.net"},
                                  {1, 2})) == {2}


def test_each_blamed_site_gets_only_the_line_about_it():
    files, site_files = rendered()
    text = files["upstreams.conf"]
    output = "\n".join(
        f'nginx: [emerg] host not found in upstream "{host}:8080" in '
        f'/etc/nginx/rpcc/upstreams.conf:{line_of(text, host)}'
        for host in ("bob-internal.invalid", "127.0.0.1"))
    blamed = set_aside.blamed_sites(output, NODE.config_dir, files, site_files, DOMAINS,
                                    {1, 2, 3})
    assert set(blamed) == {2, 3}  # 127.0.0.1's first line is blog's block
    assert "bob-internal.invalid" in blamed[2] and "bob-internal" not in blamed[3]
