"""Where each engine serves the proxy's own counters, and how they are read: nginx
opens a status listener on the node's loopback in its shared files, Caddy turns on
its metrics, Traefik's are not read.  The real proxies answer in
tests/integration/test_proxy_status.py."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from app.engines import get_engine
from app.engines.base import STATUS_PATH, BackendSpec, NodeSpec, ProxyCounters, SiteSpec
from app.engines.caddy import ENGINE as CADDY
from app.engines.caddy import parse_metrics
from app.engines.nginx import ENGINE as NGINX
from app.engines.nginx import NginxEngine, parse_stub_status
from app.services.monitoring.proxy_status import ProxyStatus, requests_per_second
from tests.nginx_node import golden_sites, self_signed

SITES = list(golden_sites(self_signed(["everything.example.com", "secure.example.com"]))
             .values())


def nginx_node(index: int, **extra: object) -> NodeSpec:
    spec = NodeSpec(name=f"edge-{index}", proxy_type="nginx",
                    config_dir=f"/etc/nginx/rpcc-{index}", test_command="nginx -t",
                    reload_command="nginx -s reload", listen_address=f"192.0.2.{index}",
                    http_port=8000 + index, https_port=8400 + index)
    return replace(spec, **extra)


def caddy_node(reload_command: str = "caddy reload --config /etc/caddy/Caddyfile",
               **extra: object) -> NodeSpec:
    spec = NodeSpec(name="edge-caddy", proxy_type="caddy", config_dir="/etc/caddy/rpcc.d",
                    test_command="caddy validate --config /etc/caddy/Caddyfile",
                    reload_command=reload_command, listen_address="203.0.113.10")
    return replace(spec, **extra)


def listens(text: str) -> list[str]:
    return re.findall(r"^\s*listen ([^\s;]+)", text, flags=re.MULTILINE)


# --- nginx: the status listener ------------------------------------------------------

@pytest.mark.parametrize("listen_address", ["192.0.2.1", None, "2001:db8::1", "127.0.0.1"])
def test_the_status_listener_binds_the_nodes_loopback_whatever_its_listen_address(
        listen_address):
    node = nginx_node(1, listen_address=listen_address)
    files = NGINX.render(node, SITES).files
    assert listens(files["status.conf"]) == ["127.0.0.1:8899"]
    assert "include /etc/nginx/rpcc-1/status.conf;" in files["rpcc.conf"]
    endpoint = NGINX.status_endpoint(node)
    assert (endpoint.host, endpoint.port, endpoint.path) == ("127.0.0.1", 8899, STATUS_PATH)
    assert f"location = {STATUS_PATH} {{" in files["status.conf"]


def test_no_site_listens_where_the_status_listener_does():
    files = NGINX.render(nginx_node(1, status_port=9100), SITES).files
    status = set(listens(files["status.conf"]))
    sites = {address for path, text in files.items() if path.startswith("sites/")
             for address in listens(text)}
    assert status == {"127.0.0.1:9100"} and sites
    assert not any(address.endswith(":9100") or address.startswith("127.0.0.1")
                   for address in sites)


@pytest.mark.parametrize("port", ["http_port", "https_port"])
def test_a_status_port_that_is_a_site_port_is_refused(port):
    node = nginx_node(1)
    clashing = replace(node, status_port=getattr(node, port))
    with pytest.raises(ValueError, match="status port"):
        NGINX.render(clashing, SITES)
    with pytest.raises(ValueError, match="status port"):
        NGINX.status_endpoint(clashing)


def test_each_node_of_a_pool_gets_its_own_status_port_from_one_rendering():
    """The shared files are rendered once per pool state with the node's values as
    placeholders: the status port is one of them."""
    shared = NginxEngine()
    for index, port in ((1, 9101), (2, 9102), (3, None)):
        node = nginx_node(index, status_port=port)
        files = shared.render(node, SITES).files
        assert files == NginxEngine().render(node, SITES).files
        assert listens(files["status.conf"]) == [f"127.0.0.1:{port or 8899}"]


def test_a_site_named_like_the_status_file_or_path_stays_in_its_own_files():
    """Site files live under sites/: a site called "status.conf" or after the status
    path changes neither the status server nor where it listens."""
    alone = NGINX.render(nginx_node(1), []).files["status.conf"]
    lookalikes = [SiteSpec(id=70 + i, owner_id=7, domain=domain,
                           backends=(BackendSpec("192.0.2.70", 80),))
                  for i, domain in enumerate(("status.conf", "rpcc-status.example.com",
                                              "rpcc.conf"))]
    rendered = NGINX.render(nginx_node(1), lookalikes)
    assert rendered.files["status.conf"] == alone
    owned = [path for paths in rendered.site_files.values() for path in paths]
    assert owned and all(path.startswith("sites/") for path in owned)
    for path in owned:
        assert "stub_status" not in rendered.files[path]
        assert listens(rendered.files[path]) == ["192.0.2.1:8001"]


STUB_STATUS = ("Active connections: 3 \nserver accepts handled requests\n 120 120 4711 \n"
               "Reading: 0 Writing: 2 Waiting: 1 \n")


def test_stub_status_counts_every_connection_but_the_one_that_asks():
    assert parse_stub_status(STUB_STATUS) == ProxyCounters(active_connections=2,
                                                           requests_total=4711)
    idle = STUB_STATUS.replace("Active connections: 3", "Active connections: 1")
    assert parse_stub_status(idle).active_connections == 0


@pytest.mark.parametrize("text", [
    "", "<html><body>404 Not Found</body></html>\n", STUB_STATUS.replace("4711", "x"),
    STUB_STATUS + "Active connections: 9 \n",
])
def test_anything_but_a_stub_status_answer_is_refused(text):
    with pytest.raises(ValueError):
        parse_stub_status(text)


# --- Caddy: its metrics on the admin endpoint ----------------------------------------

def test_caddy_turns_its_server_metrics_on_in_the_managed_global_options():
    options = CADDY.render(caddy_node(), []).files["options.caddy"]
    assert "servers {\n\tmetrics\n}\n" in options
    assert options.splitlines()[-1] == "auto_https off"


@pytest.mark.parametrize("address,host,port", [
    ("127.0.0.1:20190", "127.0.0.1", 20190),
    ("localhost:2020", "127.0.0.1", 2020),
    ("[::1]:2021", "::1", 2021),
    (":2022", "127.0.0.1", 2022),
])
def test_caddys_admin_endpoint_is_the_one_its_reload_command_names(address, host, port):
    node = caddy_node(f"caddy reload --config /etc/caddy/Caddyfile --address {address}",
                      status_port=3000)
    endpoint = CADDY.status_endpoint(node)
    assert (endpoint.host, endpoint.port, endpoint.path) == (host, port, "/metrics")


def test_without_an_address_caddys_admin_endpoint_is_the_status_port_or_2019():
    assert CADDY.status_endpoint(caddy_node()).host_header == "127.0.0.1:2019"
    assert CADDY.status_endpoint(caddy_node(status_port=3000)).host_header == "127.0.0.1:3000"
    with pytest.raises(ValueError, match="--address"):
        CADDY.status_endpoint(caddy_node("caddy reload --address unix//run/caddy.sock"))


CADDY_METRICS = """\
# HELP caddy_admin_http_requests_total Counter of requests made to the Admin API's HTTP endpoints.
# TYPE caddy_admin_http_requests_total counter
caddy_admin_http_requests_total{code="200",handler="metrics",method="GET",path="/metrics"} 7
# HELP caddy_http_requests_in_flight Number of requests currently handled by this server.
# TYPE caddy_http_requests_in_flight gauge
caddy_http_requests_in_flight{handler="subroute",server="srv0"} 2
caddy_http_requests_in_flight{handler="subroute",server="srv1"} 1
# HELP caddy_http_requests_total Counter of HTTP(S) requests made.
# TYPE caddy_http_requests_total counter
caddy_http_requests_total{handler="subroute",server="srv0"} 40
caddy_http_requests_total{handler="subroute",server="srv1"} 2
# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 31
"""


def test_caddys_counters_add_up_its_servers_and_leave_the_admin_api_out():
    assert parse_metrics(CADDY_METRICS) == ProxyCounters(active_connections=3,
                                                         requests_total=42)
    before_any_request = "\n".join(line for line in CADDY_METRICS.splitlines()
                                   if "caddy_http_" not in line) + "\n"
    assert parse_metrics(before_any_request) == ProxyCounters(0, 0)


@pytest.mark.parametrize("text", ["", "<html>Not Found</html>\n", STUB_STATUS])
def test_anything_but_prometheus_metrics_is_refused(text):
    with pytest.raises(ValueError):
        parse_metrics(text)


# --- Traefik ---------------------------------------------------------------------------

def test_traefiks_counters_are_not_read():
    node = NodeSpec(name="edge-t", proxy_type="traefik", config_dir="/etc/traefik/rpcc.d",
                    test_command="true", reload_command="true")
    assert get_engine("traefik").status_endpoint(node) is None


# --- the rate between two reads ------------------------------------------------------

def test_requests_per_second_is_the_counters_growth_over_the_time_between_reads():
    first = ProxyStatus(active_connections=1, requests_total=1000, at=100.0)
    assert requests_per_second(None, first) is None
    later = ProxyStatus(active_connections=0, requests_total=1600, at=160.0)
    assert requests_per_second(first, later) == pytest.approx(10.0)
    assert requests_per_second(first, replace(later, requests_total=1000)) == 0.0


def test_a_restarted_proxy_or_a_clock_that_went_back_gives_no_rate():
    first = ProxyStatus(active_connections=1, requests_total=1000, at=100.0)
    assert requests_per_second(first, ProxyStatus(0, 12, at=160.0)) is None
    assert requests_per_second(first, ProxyStatus(0, 1200, at=100.0)) is None
    assert requests_per_second(first, ProxyStatus(0, 1200, at=90.0)) is None
