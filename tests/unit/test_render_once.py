"""Every engine renders a site's own files once per site version, and the pool's
shared files once per pool state, and gives every node its copy with the node's own
values: the output is exactly what rendering every site for that node alone gives
(``once=False``), and a pool of many nodes costs one rendering per changed site."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import pytest

from app.engines.base import HEADER_SLOT, BackendSpec, FormEngine, NodeSpec, SiteSpec
from app.engines.caddy import CaddyEngine
from app.engines.nginx import NginxEngine
from app.engines.traefik import TraefikEngine
from tests.render_checks import FAKE_CERTIFICATE, HASH_1, SETTING_SITES

ENGINES = [NginxEngine, CaddyEngine, TraefikEngine]
CONFIG_DIRS = {"nginx": "/etc/nginx/rpcc", "caddy": "/etc/caddy/rpcc",
               "traefik": "/etc/traefik/dynamic"}
# Text shaped like the placeholders (their visible prefix and suffixes, with a made-up
# random part) and like str.format fields.
LOOKALIKES = ["rpcc", "rpccn0x", "rpcc" + "0" * 24 + "n0x", "rpcc" + "f" * 24 + "n1x{0}",
              "rpcc{0}n2x", "rpcc" + "a" * 24 + "header", "{}", "{0}", "{1}", "{base}",
              "{{0}}", "}{", "%s", "x {0!r:>9} y"]
# The same, where only host names are allowed.
LOOKALIKE_NAMES = ["rpcc" + "0" * 24 + "n0x.example.com", "rpccn1x.example.com",
                   "rpcc" + "b" * 24 + "header.example.com"]
HOSTILE_FIELDS = {
    "header value": lambda v: {"headers": (("X-Test", v),)},
    "basic auth user": lambda v: {"basic_auth": ((v, HASH_1),)},
    "block reason": lambda v: {"blocked": True, "blocked_reason": v},
    "alias": lambda v: {"aliases": (v,)},
    "domain": lambda v: {"domain": v},
}


def node(engine: type[FormEngine], index: int, **extra: Any) -> NodeSpec:
    spec = NodeSpec(name=f"edge-{index}", proxy_type=engine.name,
                    config_dir=f"{CONFIG_DIRS[engine.name]}-{index}",
                    test_command=engine.defaults.test_command,
                    reload_command=engine.defaults.reload_command,
                    listen_address=f"192.0.2.{index}",
                    http_port=8000 + index, https_port=8400 + index,
                    log_dir=f"/var/log/edge-{index}", cache_dir=f"/var/cache/rpcc-{index}")
    return replace(spec, **extra)


def pool(engine: type[FormEngine]) -> list[SiteSpec]:
    """One site per setting the engine honours, one with all of them (TLS with a
    forced redirect and HSTS among them) and one with a wildcard alias."""
    supported = {name: fields for name, fields in SETTING_SITES.items()
                 if name in engine.capabilities}
    base = {"owner_id": 7, "backends": (BackendSpec("10.0.0.1", 80),)}
    sites = [SiteSpec(id=index, domain=f"{name.replace('_', '-').replace('.', '-')}.example.com",
                      **{**base, **fields})
             for index, (name, fields) in enumerate(sorted(supported.items()), 1)]
    everything = {key: value for fields in supported.values() for key, value in fields.items()
                  if key not in ("blocked", "blocked_reason")}
    sites.append(SiteSpec(id=90, domain="everything.example.com",
                          **{**base, **everything, "config_version": 4}))
    sites.append(SiteSpec(id=91, domain="wild.example.org", aliases=("*.apps.example.org",),
                          ssl_mode="custom", certificate=FAKE_CERTIFICATE, force_https=True,
                          **base))
    return sites


@pytest.fixture(params=ENGINES, ids=lambda engine: engine.name)
def engine_class(request: pytest.FixtureRequest) -> type[FormEngine]:
    return request.param


@pytest.fixture()
def renders(engine_class: type[FormEngine], monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The ids of the sites the engine rendered (rather than filled in), in order."""
    seen: list[int] = []
    real = engine_class.site_files

    def counting(self, site, values):  # type: ignore[no-untyped-def]
        seen.append(site.id)
        return real(self, site, values)

    monkeypatch.setattr(engine_class, "site_files", counting)
    return seen


def test_every_node_gets_what_rendering_for_it_alone_gives(engine_class):
    """Nodes differ in every value, and some lack one (no listen address, the
    default HTTPS port), in an order that switches between the two."""
    shared = engine_class()
    sites = pool(engine_class)
    fleet = [node(engine_class, 1), node(engine_class, 2, listen_address=None, https_port=443),
             node(engine_class, 3, listen_address="2001:db8::3"),
             node(engine_class, 4, listen_address=None), node(engine_class, 5, https_port=443)]
    for spec in [*fleet, *reversed(fleet)]:
        rendered = shared.render(spec, sites)
        assert rendered == engine_class(once=False).render(spec, sites)
        # The digests the engine keeps name each file's content, for every node.
        assert rendered.digests == {path: hashlib.sha256(text.encode()).hexdigest()
                                    for path, text in rendered.files.items()}


def test_a_pool_renders_each_site_once_for_all_its_nodes(engine_class, renders):
    engine = engine_class()
    sites = pool(engine_class)
    for index in range(1, 6):
        engine.render(node(engine_class, index), sites)
    assert sorted(renders) == sorted(site.id for site in sites)


def test_a_changed_site_alone_is_rendered_again(engine_class, renders):
    engine = engine_class()
    sites = pool(engine_class)
    engine.render(node(engine_class, 1), sites)
    renders.clear()
    changed = [replace(sites[0], config_version=sites[0].config_version + 1,
                       headers=(("X-Changed", "yes"),)), *sites[1:]]
    for index in (1, 2):
        rendered = engine.render(node(engine_class, index), changed)
        assert any("X-Changed" in text for text in rendered.files.values())
        assert rendered.digests == {path: hashlib.sha256(text.encode()).hexdigest()
                                    for path, text in rendered.files.items()}
    assert renders == [sites[0].id]


def test_no_placeholder_is_left_and_no_node_leaks_into_another(engine_class):
    engine = engine_class()
    sites = pool(engine_class)
    first = engine.render(node(engine_class, 1), sites).files
    second = engine.render(node(engine_class, 2), sites).files
    nonce = HEADER_SLOT.removesuffix("header")  # what every placeholder starts with
    assert all(p.startswith(nonce) for p in engine.placeholders.values())
    for text in [*first.values(), *second.values()]:
        assert nonce not in text
    assert any(f"{CONFIG_DIRS[engine_class.name]}-1/" in text for text in first.values())
    assert not any(f"{CONFIG_DIRS[engine_class.name]}-1/" in text or "192.0.2.1" in text
                   or "8401" in text for text in second.values())


@pytest.mark.parametrize("node_field,value", [("config_dir", "/etc/rpcc-{0}"),
                                              ("config_dir", '/etc/a"b'),
                                              ("log_dir", "/var/log/{base}")])
def test_a_node_value_the_engine_would_refuse_is_still_refused(engine_class, node_field, value):
    sites = pool(engine_class)
    hostile = node(engine_class, 1, **{node_field: value})
    if node_field == "log_dir" and engine_class is TraefikEngine:
        hostile = replace(hostile, config_dir="/etc/{base}")  # Traefik writes no log paths
    for once in (True, False):
        with pytest.raises(ValueError):
            engine_class(once=once).render(hostile, sites)


@pytest.mark.parametrize("value", ["/var/log/rpcc" + "0" * 24 + "n1x", "/var/log/rpccn0x"])
def test_node_values_shaped_like_placeholders_stay_literal(engine_class, value):
    engine = engine_class()
    sites = pool(engine_class)
    engine.render(node(engine_class, 2), sites)
    odd = node(engine_class, 1, log_dir=value, config_dir=value + "/rpcc")
    assert engine.render(odd, sites) == engine_class(once=False).render(odd, sites)


def test_shared_files_keep_their_bytes_when_no_site_changes_them(engine_class):
    """A header change touches its site's own files only: the shared files (entry
    file, imports, upstreams, zones) name their own content, not the pool's versions."""
    engine = engine_class()
    sites = pool(engine_class)
    before = engine.render(node(engine_class, 1), sites).files
    changed = [replace(sites[0], config_version=sites[0].config_version + 1,
                       headers=(("X-Changed", "yes"),)), *sites[1:]]
    after = engine.render(node(engine_class, 1), changed)
    differing = {path for path in after.files if after.files[path] != before.get(path)}
    assert differing and differing <= set(after.site_files[sites[0].id])
    assert set(after.files) == set(before)


def _hostile_site(field: str, value: str) -> SiteSpec:
    fields = {"id": 77, "owner_id": 9, "domain": "victim.example.com",
              "backends": (BackendSpec("10.0.0.9", 80),), "ssl_mode": "custom",
              "certificate": FAKE_CERTIFICATE, **HOSTILE_FIELDS[field](value)}
    return SiteSpec(**fields)


@pytest.mark.parametrize("field", sorted(HOSTILE_FIELDS))
@pytest.mark.parametrize("value", LOOKALIKES + LOOKALIKE_NAMES)
def test_site_values_shaped_like_placeholders_render_as_for_the_node_alone(
        engine_class, field, value):
    """Braces, the placeholders' visible prefix and look-alikes of whole placeholders
    in a tenant's values: the node gets byte for byte what rendering for it alone
    gives, or both refuse the value."""
    engine = engine_class()
    sites = pool(engine_class)
    engine.render(node(engine_class, 2), sites)  # the forms exist before the node's turn
    with_hostile = [*sites, _hostile_site(field, value)]
    try:
        alone = engine_class(once=False).render(node(engine_class, 1), with_hostile)
    except ValueError:
        with pytest.raises(ValueError):
            engine.render(node(engine_class, 1), with_hostile)
        return
    assert engine.render(node(engine_class, 1), with_hostile) == alone


@pytest.mark.parametrize("field,value", [("header value", LOOKALIKES[2]),
                                         ("basic auth user", LOOKALIKES[5]),
                                         ("domain", LOOKALIKE_NAMES[0])])
def test_every_engine_writes_placeholder_look_alikes_literally(engine_class, field, value):
    """Not refused: the comparisons above compare written files for these."""
    engine = engine_class()
    engine.render(node(engine_class, 2), pool(engine_class))
    files = engine.render(node(engine_class, 1), [_hostile_site(field, value)]).files
    assert any(value in text for text in files.values())


@pytest.fixture()
def part_renders(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The ids of the sites whose parts of nginx's shared files were rendered."""
    seen: list[int] = []
    real = NginxEngine._site_parts

    def counting(self, site, base, cache_root):  # type: ignore[no-untyped-def]
        seen.append(site.id)
        return real(self, site, base, cache_root)

    monkeypatch.setattr(NginxEngine, "_site_parts", counting)
    return seen


def test_nginx_joins_its_shared_files_from_the_parts_of_changed_sites_alone(part_renders):
    """A one-site change renders that site's upstream (and zone, map, include line)
    and none of the others', for every node of the pool."""
    engine = NginxEngine()
    sites = pool(NginxEngine)
    engine.render(node(NginxEngine, 1), sites)
    assert sorted(part_renders) == sorted(site.id for site in sites)
    part_renders.clear()
    changed = [replace(sites[0], config_version=sites[0].config_version + 1,
                       backends=(BackendSpec("10.9.9.9", 8081),)), *sites[1:]]
    for index in (1, 2, 3):
        files = engine.render(node(NginxEngine, index), changed).files
        assert "server 10.9.9.9:8081 max_fails=3" in files["upstreams.conf"]
        assert "10.0.0.1:80" in files["upstreams.conf"]  # the other sites' parts
    assert part_renders == [sites[0].id]


def test_nginx_shared_files_from_kept_parts_equal_a_fresh_rendering():
    """Parts kept across pool states never outlive their site: after changes,
    removals and a site blocked, the shared files are what a fresh engine renders."""
    engine = NginxEngine()
    sites = pool(NginxEngine)
    spec = node(NginxEngine, 1)
    engine.render(spec, sites)
    states = [
        [replace(site, backends=(BackendSpec("10.1.1.1", 81),), config_version=2)
         if site.id == sites[1].id else site for site in sites],
        sites[2:],
        [replace(site, blocked=True, config_version=3) if site.id == 90 else site
         for site in sites[2:]],
        [replace(site, rate_limit_rps=None, cache_enabled=False, geo_mode="off",
                 config_version=4) if site.id == 90 else site for site in sites],
    ]
    for state in states:
        kept = engine.render(spec, state).files
        fresh = NginxEngine().render(spec, state).files
        assert kept == fresh
