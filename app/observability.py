"""What the app tells the people who run it: an id for every request, log lines
that carry it, and Prometheus metrics.

Request ids.  A request keeps the ``X-Request-ID`` it arrives with (set by the load
balancer in front, or by a client's script) when that is a short token of safe
characters, and gets a new one otherwise: a malformed id is replaced, never
trimmed, so no newline, quote or ten-kilobyte value reaches a log line or a column.
The answer echoes it; the log lines of the request, and of the background work it
starts, carry it; the audit rows and rollouts it writes record it.

Metrics.  What is counted as it happens (requests per endpoint, rollouts per
outcome) lives in this process, or under gunicorn in the files of
``PROMETHEUS_MULTIPROC_DIR`` (gunicorn.conf.py makes one per instance and empties
it at start), which a scrape adds up over every worker, the exited ones too.  The
state of the fleet (nodes, certificates, alerts, jobs) is read from the database at
scrape time (:mod:`app.services.fleet_gauges`), so whichever worker answers a scrape
gives the same figures.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import hmac
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from flask import Flask, Response, request
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from app.models import DeploymentStatus, RolloutKind
from app.models.base import as_utc

if TYPE_CHECKING:
    from app.models import Rollout
    from app.services.fleet_gauges import FleetGauges

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

# --------------------------------------------------------------------------- #
# Request ids                                                                 #
# --------------------------------------------------------------------------- #

REQUEST_ID_HEADER = "X-Request-ID"
# What proxies and tracers send (UUIDs, hex digests, W3C trace ids, dotted or
# dashed tokens), within what a log line and the audit column should hold.
_WELL_FORMED_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

#: The id of the request (or of the request that started the background work)
#: this thread is serving; empty outside either.
request_id: ContextVar[str] = ContextVar("request_id", default="")


def accepted_request_id(offered: str | None) -> str:
    """``offered`` if it is a well-formed id, else a new random one."""
    if offered is not None and _WELL_FORMED_ID.fullmatch(offered):
        return offered
    return uuid.uuid4().hex


def carry_request_id(work: Callable[P, R]) -> Callable[P, R]:
    """``work`` as another thread should run it: under the id of the request that
    hands it over now, since threads do not inherit context variables."""
    origin = request_id.get()

    @functools.wraps(work)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        token = request_id.set(origin)
        try:
            return work(*args, **kwargs)
        finally:
            request_id.reset(token)

    return run


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line, with the request id when there is one and the
    traceback of a logged exception."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"at": self.formatTime(record), "level": record.levelname,
                "logger": record.name, "message": record.getMessage()}
        if current := request_id.get():
            line["request_id"] = current
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


# --------------------------------------------------------------------------- #
# What is counted as it happens                                               #
# --------------------------------------------------------------------------- #

def multiprocess_directory() -> str | None:
    """Where the worker processes keep their counts, when several serve the app."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


# Any process with the variable set counts into that directory (the CLI's too, when
# it shares the instance's environment): it must exist before the first count.
if _directory := multiprocess_directory():
    os.makedirs(_directory, exist_ok=True)
# A "_created" series per counter says when this process first counted: noise beside
# the totals, and absent anyway from what worker processes add up.
disable_created_metrics()
_COUNTED = CollectorRegistry()
# A method a route does not know (any word a client sends) is counted as "other".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

REQUEST_SECONDS = Histogram(
    "rpcc_http_request_duration_seconds",
    "Time to answer a request, per Flask endpoint (never the path: a client cannot add "
    "series with made-up URLs; 'unmatched' for paths no route serves), method and "
    "status class.",
    ["endpoint", "method", "status_class"], registry=_COUNTED)
ROLLOUTS = Counter(
    "rpcc_rollouts", "Rollouts concluded, per kind and outcome.", ["kind", "outcome"],
    registry=_COUNTED)
ROLLOUT_SECONDS = Histogram(
    "rpcc_rollout_duration_seconds", "Time from a rollout's start to its conclusion, per "
    "kind and outcome.", ["kind", "outcome"],
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600), registry=_COUNTED)
_OUTCOMES = (DeploymentStatus.SUCCEEDED, DeploymentStatus.FAILED)
# Every kind and outcome from the start, so that a rate over them is defined (and
# each worker's file names them) before the first rollout concludes.
for _kind in RolloutKind:
    for _outcome in _OUTCOMES:
        ROLLOUTS.labels(_kind.value, _outcome.value)
        ROLLOUT_SECONDS.labels(_kind.value, _outcome.value)

_STARTED = "rpcc.request_started"


def init_app(app: Flask) -> None:
    """Give every request its id and time it.  Called before other hooks are
    registered: the id is set before any of them logs, and the time covers them."""
    app.before_request(_begin_request)
    app.after_request(_end_request)
    app.teardown_request(_forget_request_id)


def _begin_request() -> None:
    request.environ[_STARTED] = time.perf_counter()
    request_id.set(accepted_request_id(request.headers.get(REQUEST_ID_HEADER)))


def _end_request(response: Response) -> Response:
    started = request.environ.get(_STARTED)
    if started is not None:
        method = request.method if request.method in _METHODS else "other"
        REQUEST_SECONDS.labels(request.endpoint or "unmatched", method,
                               f"{response.status_code // 100}xx").observe(
            time.perf_counter() - started)
    if current := request_id.get():
        response.headers[REQUEST_ID_HEADER] = current
    return response


def _forget_request_id(_error: BaseException | None) -> None:
    """The thread serves other requests next (and logs between them)."""
    request_id.set("")


def count_rollout(rollout: Rollout) -> None:
    """Count a rollout that has just concluded, and say so in the log (under the id
    of the request that started it: this runs in the rollout's thread)."""
    kind, outcome = str(rollout.kind), str(rollout.status)
    began = rollout.started_at or rollout.created_at
    seconds = 0.0
    if rollout.finished_at is not None and began is not None:
        seconds = max(0.0, (as_utc(rollout.finished_at) - as_utc(began)).total_seconds())
    ROLLOUTS.labels(kind, outcome).inc()
    ROLLOUT_SECONDS.labels(kind, outcome).observe(seconds)
    logger.info("rollout %s (%s) %s after %.1fs", rollout.id, kind, outcome, seconds)


# --------------------------------------------------------------------------- #
# The scrape                                                                  #
# --------------------------------------------------------------------------- #


class _ThisProcess(Collector):
    """What this process counted, when no multiprocess directory is in use."""

    def collect(self) -> Iterable[Metric]:
        return _COUNTED.collect()


class _Workers(Collector):
    """What every worker of this instance counted, from the files of the multiprocess
    directory, those of exited workers included.  A file that a starting worker is
    creating at this very moment is still empty and cannot be read: it holds no
    count yet, and the next scrape reads it."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def collect(self) -> Iterable[Metric]:
        files = [path for path in glob.glob(os.path.join(self.directory, "*.db"))
                 if _size(path) >= _FILE_HEADER_BYTES]
        return MultiProcessCollector.merge(files, accumulate=True)


# Each file starts with how many of its bytes are used (4 bytes, then 4 of padding).
_FILE_HEADER_BYTES = 8


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


class FleetCollector(Collector):
    """The fleet's state as gauges, from one reading of the database.

    Node names are operators' data (a name often tells a provider or a place): the
    per-node series is only exposed when the scrape needs a token, and counts per
    pool and status always are.  Certificates are counted per pool in windows of
    days, with the soonest end per pool: enough to alert on, and no client's
    domain leaves the control plane."""

    def __init__(self, gauges: FleetGauges, *, node_names: bool) -> None:
        self.gauges = gauges
        self.node_names = node_names

    def collect(self) -> Iterable[Metric]:
        yield from self._nodes()
        yield from self._certificates()
        alerts = GaugeMetricFamily("rpcc_alerts_firing", "Alerts firing, per severity.",
                                   labels=["severity"])
        for severity, count in sorted(self.gauges.alerts_firing.items()):
            alerts.add_metric([severity], count)
        yield alerts
        yield from self._jobs()

    def _nodes(self) -> Iterable[Metric]:
        counts: dict[tuple[str, str], int] = {}
        for node in self.gauges.nodes:
            counts[(node.pool, node.status)] = counts.get((node.pool, node.status), 0) + 1
        nodes = GaugeMetricFamily(
            "rpcc_nodes", "Nodes per pool and status (online, offline, unknown, draining, "
            "or disabled when taken out of service).", labels=["pool", "status"])
        for (pool, status), count in sorted(counts.items()):
            nodes.add_metric([pool, status], count)
        yield nodes
        if self.node_names:
            up = GaugeMetricFamily("rpcc_node_up", "1 when the node's last check found it "
                                   "online, else 0.", labels=["pool", "node"])
            for node in self.gauges.nodes:
                up.add_metric([node.pool, node.name], 1 if node.status == "online" else 0)
            yield up

    def _certificates(self) -> Iterable[Metric]:
        within = GaugeMetricFamily(
            "rpcc_certificates_ending_within_days", "Certificates the pool's sites serve "
            "that end within this many days ('0': already ended; '+Inf': all of them).",
            labels=["pool", "days"])
        soonest = GaugeMetricFamily(
            "rpcc_certificate_soonest_end_days", "Days until the soonest certificate of "
            "the pool's sites ends (negative once it has).", labels=["pool"])
        for pool, certs in sorted(self.gauges.certificates.items()):
            for days, count in certs.ending_within.items():
                within.add_metric([pool, str(days)], count)
            within.add_metric([pool, "+Inf"], certs.total)
            soonest.add_metric([pool], certs.soonest_days)
        yield within
        yield soonest

    def _jobs(self) -> Iterable[Metric]:
        age = GaugeMetricFamily("rpcc_job_last_run_age_seconds",
                                "Seconds since the job's last run started.", labels=["job"])
        interval = GaugeMetricFamily(
            "rpcc_job_interval_seconds", "Seconds between the job's runs as configured "
            "(a job is late when its last run is older than that).", labels=["job"])
        runs = GaugeMetricFamily(
            "rpcc_job_runs_last_day", "Runs of the job started in the last 24 hours, per "
            "status.", labels=["job", "status"])
        for name, job in self.gauges.jobs.items():
            if job.last_start_age_seconds is not None:
                age.add_metric([name], job.last_start_age_seconds)
            if job.interval_seconds is not None:
                interval.add_metric([name], job.interval_seconds)
            for status, count in sorted(job.recent_runs.items()):
                runs.add_metric([name, status], count)
        yield age
        yield interval
        yield runs


def bearer_matches(authorization: str, expected: str) -> bool:
    """Whether an ``Authorization`` header carries the bearer token ``expected``,
    compared in constant time (digests of equal length: not even the token's length
    shows in the time taken)."""
    scheme, _, offered = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        hashlib.sha256(offered.strip().encode()).digest(),
        hashlib.sha256(expected.encode()).digest())


#: The text format every Prometheus server reads (every name here is a classic one).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


def exposition(gauges: FleetGauges, *, node_names: bool) -> bytes:
    """The scrape's answer in the Prometheus text format, from a registry built for
    it: the counts of every process of this instance, then the fleet's gauges."""
    registry = CollectorRegistry()
    directory = multiprocess_directory()
    registry.register(_Workers(directory) if directory else _ThisProcess())
    registry.register(FleetCollector(gauges, node_names=node_names))
    return generate_latest(registry)
