"""The registry is the one list of engines: the nodes' column, the forms, the API
document and the previews all read it."""

import pytest

from app.engines import ENGINES, engine_names, get_engine
from app.engines.base import Engine
from app.models import ProxyType


def test_every_node_type_has_exactly_one_registered_engine():
    assert sorted(ProxyType) == sorted(ENGINES)
    for name, engine in ENGINES.items():
        assert isinstance(engine, Engine)
        assert engine.name == name
        assert get_engine(name) is engine


def test_every_engine_says_how_a_node_of_it_is_set_up():
    for engine in ENGINES.values():
        defaults = engine.defaults
        assert defaults.config_dir.startswith("/")
        assert defaults.binary and defaults.package
        assert defaults.test_command.split()[0] in (defaults.binary, "true")
        assert defaults.main_config == "" or defaults.main_config.startswith("/")
        assert set(defaults.node_fields()) == {"config_dir", "test_command", "reload_command",
                                               "log_dir"}


def test_only_engines_that_render_from_templates_name_a_template_folder():
    assert get_engine("nginx").templates is not None
    assert get_engine("nginx").templates.is_dir()
    assert (get_engine("nginx").templates / "site.conf.j2").is_file()


def test_an_unknown_engine_is_refused():
    with pytest.raises(KeyError):
        get_engine("haproxy")
    assert "haproxy" not in engine_names()
