"""nginx renders a site's own files once per site version and gives every node its
copy with the node's own values: the output is exactly what rendering for that node
alone gives, and a pool of many nodes costs one rendering per changed site."""

from __future__ import annotations

from dataclasses import replace

import pytest

from app.engines import nginx
from app.engines.base import NodeSpec
from app.engines.nginx import NginxEngine
from tests.nginx_node import golden_sites, self_signed

CERTIFICATE = self_signed(["everything.example.com", "secure.example.com"])
SITES = list(golden_sites(CERTIFICATE).values())


def node(index: int, **extra: object) -> NodeSpec:
    spec = NodeSpec(name=f"edge-{index}", proxy_type="nginx",
                    config_dir=f"/etc/nginx/rpcc-{index}", test_command="nginx -t",
                    reload_command="nginx -s reload", listen_address=f"192.0.2.{index}",
                    http_port=8000 + index, https_port=8400 + index,
                    log_dir=f"/var/log/nginx-{index}", cache_dir=f"/var/cache/rpcc-{index}")
    return replace(spec, **extra)


@pytest.fixture()
def renders(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The ids of the sites rendered from their templates, in order."""
    seen: list[int] = []
    real = nginx._site_files

    def counting(site, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(site.id)
        return real(site, *args, **kwargs)

    monkeypatch.setattr(nginx, "_site_files", counting)
    return seen


def test_every_node_gets_what_rendering_for_it_alone_gives(renders):
    shared = NginxEngine()
    fleet = [node(1), node(2), node(3, listen_address=None, https_port=443),
             node(4, listen_address="2001:db8::4")]
    for spec in fleet:
        alone = NginxEngine().render(spec, SITES)
        assert shared.render(spec, SITES).files == alone.files


def test_a_pool_renders_each_site_once_for_all_its_nodes(renders):
    engine = NginxEngine()
    for index in range(1, 6):
        engine.render(node(index), SITES)
    assert sorted(renders) == sorted(site.id for site in SITES)


def test_a_changed_site_alone_is_rendered_again(renders):
    engine = NginxEngine()
    engine.render(node(1), SITES)
    renders.clear()
    changed = [replace(SITES[0], config_version=SITES[0].config_version + 1,
                       headers=(("X-Changed", "yes"),)), *SITES[1:]]
    for index in (1, 2):
        files = engine.render(node(index), changed).files
        assert any("X-Changed" in text for text in files.values())
    assert renders == [SITES[0].id]


def test_no_placeholder_is_left_and_no_node_leaks_into_another(renders):
    engine = NginxEngine()
    first = engine.render(node(1), SITES).files
    second = engine.render(node(2), SITES).files
    for text in [*first.values(), *second.values()]:
        assert not nginx._PLACEHOLDER.search(text)
    assert not any("192.0.2.1:" in text or "rpcc-1" in text for text in second.values())


def test_a_node_value_the_templates_would_refuse_is_still_refused():
    with pytest.raises(ValueError, match="refusing to place"):
        NginxEngine().render(node(1, log_dir="/var/log/with space"), SITES)


def test_shared_files_keep_their_bytes_when_no_site_changes_them():
    """A header change touches its site's own file only: the upstreams, the entry
    file and the zones name their own content, not the pool's versions."""
    engine = NginxEngine()
    before = engine.render(node(1), SITES).files
    changed = [replace(SITES[0], config_version=SITES[0].config_version + 1,
                       headers=(("X-Changed", "yes"),)), *SITES[1:]]
    after = engine.render(node(1), changed).files
    differing = {path for path in after if after[path] != before.get(path)}
    own = set(engine.render(node(1), changed).site_files[SITES[0].id])
    assert differing and differing <= own
