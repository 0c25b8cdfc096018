"""gunicorn settings, overridable from the environment."""

import os

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
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")


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
