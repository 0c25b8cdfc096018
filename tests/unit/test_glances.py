"""Glances answers become samples: recorded answers of real Glances 3 and 4 servers
(tests/unit/data, see glances_sources.md), the API version found by asking, and
answers that are not Glances refused in words."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Sequence
from pathlib import Path

import pytest

from app.services import nodes
from app.services.monitoring import glances
from app.services.monitoring.glances import Answer, GlancesError

DATA = Path(__file__).resolve().parent / "data"


def recorded(name: str) -> dict:
    return json.loads((DATA / f"glances_{name}.json").read_text())


class Recorded:
    """An in-memory transport answering like a server of one API version."""

    where = "the recorded server"

    def __init__(self, version: str, answers: dict) -> None:
        self.version, self.answers, self.asked = version, answers, []

    def get(self, paths: Sequence[str], *, stop_early: bool) -> dict[str, Answer]:
        got = {}
        for path in paths:
            self.asked.append(path)
            prefix, _, plugin = path.rpartition("/")
            found = prefix == f"/api/{self.version}" and plugin in self.answers
            got[path] = Answer(200 if found else 404,
                               json.dumps(self.answers.get(plugin)).encode() if found else b"")
            if stop_early and not found:
                break
        return got


def test_a_glances_4_3_answer_whose_network_has_no_rates_yet():
    sample = glances.parse("4", recorded("v4_4.3.0.4"))
    assert (sample.cpu_percent, sample.mem_percent, sample.swap_percent) == (6.1, 61.1, 40.7)
    assert (sample.load1, sample.load5, sample.load15) == (1.02490234375, 0.953125,
                                                           0.857421875)
    assert sample.filesystems == [
        {"mount": "/", "percent": 11.4, "used": 108992712704, "size": 1003736440832},
        {"mount": "/zsfpool", "percent": 0.3, "used": 131072, "size": 41943040}]
    assert sample.disk_percent == 11.4
    assert (sample.net_rx_bps, sample.net_tx_bps) == (0.0, 0.0)
    assert sample.uptime_seconds == ((6 * 24 + 19) * 60 + 58) * 60 + 28


def test_a_glances_4_4_answer_with_network_rates():
    sample = glances.parse("4", recorded("v4_4.4.0_dev5"))
    assert (sample.cpu_percent, sample.swap_percent, sample.disk_percent) == (14.5, 16.2, 24.9)
    assert sample.mem_percent == pytest.approx(68.92246393073958)
    assert (sample.net_rx_bps, sample.net_tx_bps) == (0.0, 0.0)
    assert sample.uptime_seconds == ((6 * 24 + 22) * 60 + 22) * 60 + 5


def test_a_glances_3_answer_without_swap_or_uptime_days():
    sample = glances.parse("3", recorded("v3_3.3.1.1"))
    assert (sample.cpu_percent, sample.mem_percent) == (82.8, 3.9)
    assert sample.swap_percent is None  # 0 of 0 bytes: the node has no swap
    assert sample.filesystems == [{"mount": "/", "percent": 25.1, "used": 27388198912,
                                   "size": 270553174016}]
    assert (sample.net_rx_bps, sample.net_tx_bps) == (0.0, 0.0)  # only loopback
    assert sample.uptime_seconds == (8 * 60 + 48) * 60 + 26


def test_throughput_sums_every_interface_but_loopback_and_those_down():
    v4 = recorded("v4_4.4.0_dev5")
    eth = dict(v4["network"][0], interface_name="eth0", bytes_recv_rate_per_sec=1500,
               bytes_sent_rate_per_sec=250)
    v4["network"] = [eth, dict(eth, interface_name="eth1"),
                     dict(eth, interface_name="lo"), dict(eth, interface_name="eth2",
                                                          is_up=False)]
    sample = glances.parse("4", v4)
    assert (sample.net_rx_bps, sample.net_tx_bps) == (3000.0, 500.0)


def test_throughput_from_counts_when_glances_gives_no_rate():
    v3 = recorded("v3_3.3.1.1")
    v3["network"].append(dict(v3["network"][0], interface_name="ens3", rx=3000, tx=150,
                              time_since_update=1.5))
    assert glances.parse("3", v3).net_rx_bps == 2000.0
    v4 = recorded("v4_4.3.0.4")
    v4["network"][0].update(bytes_recv=770, bytes_sent=77)
    sample = glances.parse("4", v4)
    assert (sample.net_rx_bps, sample.net_tx_bps) == (1000.1, 100.0)


@pytest.mark.parametrize(("text", "seconds"), [
    ("3:04:05", 11045), ("1 day, 0:00:01", 86401), ("78 days, 2:44:21", 6749061),
    (12345, 12345), ("soon", None), (None, None), (True, None)])
def test_uptime_in_glances_words(text, seconds):
    assert glances.parse_uptime(text) == seconds


@pytest.mark.parametrize("broken", [
    {"cpu": []}, {"fs": {"mnt_point": "/"}}, {"network": "eth0"}])
def test_an_answer_of_the_wrong_shape_is_refused_in_words(broken):
    data = dict(recorded("v4_4.3.0.4"), **broken)
    with pytest.raises(GlancesError, match="unexpected shape"):
        glances.parse("4", data)


def test_the_remembered_version_is_asked_first_and_a_404_tries_the_other():
    server = Recorded("4", recorded("v4_4.3.0.4"))
    version, sample = glances.read(server, "3")
    assert version == "4" and sample.cpu_percent == 6.1
    assert server.asked[0] == "/api/3/cpu"
    assert server.asked[1:] == [f"/api/4/{p}" for p in glances.PLUGINS]
    server.asked.clear()
    assert glances.read(server, "4")[0] == "4"
    assert server.asked == [f"/api/4/{p}" for p in glances.PLUGINS]


def test_a_server_that_is_not_glances_is_absent():
    with pytest.raises(GlancesError, match="not the Glances REST API") as raised:
        glances.read(Recorded("5", {}), None)
    assert raised.value.absent


def test_a_plugin_missing_or_not_json_is_named():
    answers = recorded("v3_3.3.1.1")
    del answers["uptime"]
    with pytest.raises(GlancesError, match="HTTP 404 for uptime") as raised:
        glances.read(Recorded("3", answers), "3")
    assert not raised.value.absent

    class NotJson(Recorded):
        def get(self, paths, *, stop_early):
            got = super().get(paths, stop_early=stop_early)
            return {p: Answer(a.status, b"<html>" if p.endswith("/fs") else a.body)
                    for p, a in got.items()}

    with pytest.raises(GlancesError, match="other than JSON for fs"):
        glances.read(NotJson("3", recorded("v3_3.3.1.1")), "3")


def test_filesystems_are_bounded_and_ordered():
    data = recorded("v3_3.3.1.1")
    data["fs"] = [dict(copy.deepcopy(data["fs"][0]), mnt_point=f"/m{i:03d}", percent=float(i))
                  for i in range(100, 0, -1)]
    sample = glances.parse("3", data)
    assert len(sample.filesystems) == glances.MAX_FILESYSTEMS
    assert sample.filesystems[0]["mount"] == "/m001"
    assert sample.disk_percent == 100.0  # the fullest, kept or not


@pytest.mark.parametrize(("url", "expected"), [
    (None, glances.Endpoint("tunnel", "127.0.0.1", 61208)),
    ("ssh://127.0.0.7:61300", glances.Endpoint("tunnel", "127.0.0.7", 61300)),
    ("ssh://[::1]", glances.Endpoint("tunnel", "::1", 61208)),
    ("https://metrics.example.com/glances/", glances.Endpoint(
        "http", base_url="https://metrics.example.com/glances")),
])
def test_where_glances_is(url, expected):
    assert glances.endpoint(url, 61208) == expected


@pytest.mark.parametrize(("value", "stored"), [
    ("", None),
    ("ssh://127.0.0.1:61209", "ssh://127.0.0.1:61209"),
    ("ssh://127.0.0.9", "ssh://127.0.0.9"),
    ("ssh://[::1]:61208/", "ssh://[::1]:61208"),
    ("http://10.0.0.5:61208/", "http://10.0.0.5:61208"),
    ("https://metrics.example.com/glances", "https://metrics.example.com/glances"),
])
def test_a_glances_address_is_read_through_ssh_or_directly(value, stored):
    assert nodes.validate_glances_url(value) == stored


@pytest.mark.parametrize(("value", "message"), [
    ("ssh://10.0.0.5:61208", "the node's own loopback"),
    ("ssh://localhost:61208", "loopback IP address"),
    ("ssh://root@127.0.0.1:61208", "a loopback address and a port only"),
    ("ssh://127.0.0.1:61208/api", "a loopback address and a port only"),
    ("ssh://127.0.0.1:61208?x=1", "a loopback address and a port only"),
    ("ssh://127.0.0.1:0", "invalid port"),
    ("ssh://127.0.0.1:99999", "invalid port"),
    ("ftp://127.0.0.1", "http(s)://HOST"),
    ("http://user:secret@10.0.0.5:61208", "without credentials"),
    ("http://10.0.0.5:61208/\nx", "http(s)://HOST"),
])
def test_a_glances_address_elsewhere_or_malformed_is_refused(value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        nodes.validate_glances_url(value)


def test_figures_no_column_can_hold_are_dropped_not_stored():
    data = recorded("v3_3.3.1.1")
    data["cpu"]["total"] = float("nan")
    data["mem"]["percent"] = float("inf")
    data["load"]["min1"] = 10 ** 400
    data["fs"][0]["used"] = 2 ** 70
    data["uptime"] = 10 ** 30
    sample = glances.parse("3", json.loads(json.dumps(data)))
    assert (sample.cpu_percent, sample.mem_percent, sample.load1) == (None, None, None)
    assert sample.filesystems[0]["used"] is None and sample.uptime_seconds is None
    assert glances.parse_uptime("999999999999 days, 1:00:00") is None
