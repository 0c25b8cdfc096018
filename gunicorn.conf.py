"""gunicorn settings, overridable from the environment."""

import os
import shutil
import tempfile

bind = os.environ.get("BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Live deployment progress holds a thread per open page (Server-Sent Events), for at
# most half of them by default (PROGRESS_STREAMS_PER_PROCESS); other pages poll.
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
worker_class = "gthread"
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
graceful_timeout = 30
accesslog = "-"
errorlog = "-"
# gunicorn's access line, ending with the worker that served the request and the
# request's id (app/observability.py), which the app's log lines carry.
access_log_format = ('%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" '
                     '%(p)s %({x-request-id}o)s')
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")


def _prepare_metrics_directory():
    """Where the workers keep their Prometheus counts for /metrics to add up: the
    directory PROMETHEUS_MULTIPROC_DIR names (this instance's alone), emptied of
    the previous run's counts, else a new one, removed when the instance stops.
    Set here, in the master, before any worker imports prometheus_client."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        path = tempfile.mkdtemp(prefix="rpcc-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ["RPCC_METRICS_TEMPORARY_DIR"] = path
        return
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.remove(os.path.join(path, name))


_prepare_metrics_directory()


def when_ready(server):
    """Memory storage counts sign-in attempts per worker: say so where operators look."""
    storage = os.environ.get("RATELIMIT_STORAGE_URI", "memory://")
    if workers > 1 and storage.startswith("memory://"):
        server.log.warning(
            "sign-in limits are counted per worker (%d workers, memory storage): set "
            "RATELIMIT_STORAGE_URI=memcached://host:port to count them once", workers)


def post_worker_init(worker):
    """Each worker runs a scheduler thread (one of them, deployment-wide, leads);
    started here, after the fork, because threads do not survive one."""
    from app.scheduler import start_scheduler

    # Progress streams each hold a thread: the app keeps some threads free of them.
    worker.wsgi.config["WORKER_THREADS"] = worker.cfg.threads
    start_scheduler(worker.wsgi)


def worker_exit(server, worker):
    """Let the running job finish and give the lease back before the worker goes."""
    from app.scheduler import stop_scheduler

    if getattr(worker, "wsgi", None) is not None:
        stop_scheduler(worker.wsgi)


def child_exit(server, worker):
    """A worker that exited keeps its counts in the totals; what it held live goes."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    temporary = os.environ.get("RPCC_METRICS_TEMPORARY_DIR")
    if temporary:
        shutil.rmtree(temporary, ignore_errors=True)
