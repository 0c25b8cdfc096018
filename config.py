"""Configuration classes.  Every value comes from the environment so that one image
serves development, tests and production without edits."""

from __future__ import annotations

import os


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw not in (None, "") else default


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw not in (None, "") else default


def _intervals(prefix: str) -> dict[str, float]:
    """``JOB_INTERVAL_NODE_HEALTH=60`` -> ``{"node_health": 60.0}``: any job's
    interval is set without a setting per job."""
    return {name[len(prefix):].lower(): float(value) for name, value in os.environ.items()
            if name.startswith(prefix) and value.strip()}


class Config:
    """Shared defaults: safe values, overridden per environment."""

    SECRET_KEY = os.environ.get("SECRET_KEY", "")
    SQLALCHEMY_DATABASE_URI = os.environ.get("DATABASE_URL", "sqlite:///rpcc.db")
    SQLALCHEMY_ENGINE_OPTIONS = {"pool_pre_ping": True}
    # Comma-separated Fernet keys: the first encrypts, all decrypt.
    ENCRYPTION_KEYS = os.environ.get("ENCRYPTION_KEYS", "")

    RATELIMIT_STORAGE_URI = os.environ.get("RATELIMIT_STORAGE_URI", "memory://")
    RATELIMIT_KEY_PREFIX = os.environ.get("RATELIMIT_KEY_PREFIX", "rpcc")
    RATELIMIT_HEADERS_ENABLED = True
    # Storage out of reach: limits count in each process's memory meanwhile (rather
    # than answer 500 to every limited request) until it answers again.
    RATELIMIT_IN_MEMORY_FALLBACK_ENABLED = True
    # Failed sign-ins (form and token API together), counted in the limiter's storage
    # for SIGN_IN_WINDOW seconds from the first: past a threshold, a username from one
    # address, a username from any address, or an address for any username is locked
    # for SIGN_IN_BACKOFF seconds, doubled by each further failure up to
    # SIGN_IN_BACKOFF_MAX.  A locked username still admits an address without recent
    # failures once SIGN_IN_FRESH_WAIT seconds of the lock have passed.
    SIGN_IN_WINDOW = _int("SIGN_IN_WINDOW", 3600)
    SIGN_IN_USER_ADDRESS_FAILURES = _int("SIGN_IN_USER_ADDRESS_FAILURES", 5)
    SIGN_IN_USER_FAILURES = _int("SIGN_IN_USER_FAILURES", 10)
    SIGN_IN_ADDRESS_FAILURES = _int("SIGN_IN_ADDRESS_FAILURES", 20)
    SIGN_IN_BACKOFF = _int("SIGN_IN_BACKOFF", 30)
    SIGN_IN_BACKOFF_MAX = _int("SIGN_IN_BACKOFF_MAX", 900)
    SIGN_IN_FRESH_WAIT = _int("SIGN_IN_FRESH_WAIT", 30)
    # Per user, counted in the shared limiter storage: requests that start a rollout
    # (deploy, node deploy, rollback, certificate upload) and certificate issue/renew
    # requests.  Administrators have their own (higher) limits.
    DEPLOY_REQUEST_LIMIT = os.environ.get("DEPLOY_REQUEST_LIMIT", "20 per minute")
    ADMIN_DEPLOY_REQUEST_LIMIT = os.environ.get("ADMIN_DEPLOY_REQUEST_LIMIT", "60 per minute")
    CERTIFICATE_REQUEST_LIMIT = os.environ.get("CERTIFICATE_REQUEST_LIMIT", "10 per hour")
    ADMIN_CERTIFICATE_REQUEST_LIMIT = os.environ.get("ADMIN_CERTIFICATE_REQUEST_LIMIT",
                                                     "30 per hour")

    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = os.environ.get("SESSION_COOKIE_SAMESITE", "Lax")
    SESSION_COOKIE_SECURE = _bool("SESSION_COOKIE_SECURE", False)
    REMEMBER_COOKIE_HTTPONLY = True
    REMEMBER_COOKIE_SAMESITE = "Lax"
    REMEMBER_COOKIE_SECURE = _bool("SESSION_COOKIE_SECURE", False)
    # Number of reverse proxies in front of the app whose X-Forwarded-* we trust.
    PROXY_FIX_COUNT = _int("PROXY_FIX_COUNT", 0)

    # Request bodies above this answer 413 (a certificate chain is the largest input).
    MAX_CONTENT_LENGTH = _int("MAX_REQUEST_BYTES", 1024 * 1024)

    WTF_CSRF_ENABLED = True
    PASSWORD_HASH_METHOD = "scrypt"
    WTF_CSRF_TIME_LIMIT = None
    DEFAULT_MAX_SITES = _int("DEFAULT_MAX_SITES", 10)
    API_PAGE_SIZE_MAX = 200

    API_TITLE = "Reverse Proxy Control Center"
    API_VERSION = "v1"
    OPENAPI_VERSION = "3.0.3"
    OPENAPI_URL_PREFIX = "/api/v1"
    OPENAPI_JSON_PATH = "openapi.json"

    # Node inventory read by `flask nodes discover` and, if enabled, at startup.
    NODES_FILE = os.environ.get("NODES_FILE", "nodes.yaml")
    DISCOVER_NODES_AT_STARTUP = _bool("DISCOVER_NODES_AT_STARTUP", False)

    # Outgoing mail (links that confirm a new e-mail address): off while SMTP_HOST is
    # empty.  SMTP_SECURITY is "starttls" (port 587 unless SMTP_PORT says otherwise),
    # "tls" (implicit TLS, 465) or "none" (25; only for a relay on the same host or a
    # trusted network).  SMTP_CA_BUNDLE: PEM roots of a private mail server's certificate.
    SMTP_HOST = os.environ.get("SMTP_HOST", "")
    SMTP_PORT = _int("SMTP_PORT", 0)
    SMTP_SECURITY = os.environ.get("SMTP_SECURITY", "starttls")
    SMTP_USERNAME = os.environ.get("SMTP_USERNAME", "")
    SMTP_PASSWORD = os.environ.get("SMTP_PASSWORD", "")
    SMTP_CA_BUNDLE = os.environ.get("SMTP_CA_BUNDLE", "")
    SMTP_TIMEOUT = _float("SMTP_TIMEOUT", 10.0)
    MAIL_FROM = os.environ.get("MAIL_FROM", "")
    # Notices to Telegram go through this Bot API server (a private one, or a test's).
    TELEGRAM_API_BASE_URL = os.environ.get("TELEGRAM_API_BASE_URL", "https://api.telegram.org")
    # Test messages each user may send through their channels (panels and API together).
    NOTIFICATION_TEST_LIMIT = os.environ.get("NOTIFICATION_TEST_LIMIT", "10 per hour")
    # Where people reach the product (scheme, host, port), for links sent by mail;
    # empty: the address of the request that asked for the mail.
    PUBLIC_URL = os.environ.get("PUBLIC_URL", "")
    # Requests to change one's e-mail address, per user: each sends a mail.
    EMAIL_CHANGE_LIMIT = os.environ.get("EMAIL_CHANGE_LIMIT", "5 per hour")

    BOOTSTRAP_SERVE_LOCAL = True
    LOG_JSON = _bool("LOG_JSON", False)
    # /metrics answers only requests bearing this token when set (and then also
    # names nodes); empty: anyone may scrape the counts, which name no node or tenant.
    METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")

    # Deployments: nodes deployed to at once, how long a node's lock lives (renewed
    # at each step) and how long to wait for it, and the HTTP verification.
    DEPLOY_PARALLELISM = _int("DEPLOY_PARALLELISM", 32)
    DEPLOY_LOCK_TTL = _float("DEPLOY_LOCK_TTL", 300.0)
    DEPLOY_LOCK_WAIT = _float("DEPLOY_LOCK_WAIT", 600.0)
    DEPLOY_VERIFY_TIMEOUT = _float("DEPLOY_VERIFY_TIMEOUT", 10.0)
    DEPLOY_VERIFY_MAX_SITES = _int("DEPLOY_VERIFY_MAX_SITES", 20)
    # Seconds a rollout may wait for its run before the job rollouts launches it
    # again (a run lost with its process or queue; one whose run died is launched
    # again as soon as its lease expires).
    ROLLOUT_RESUME_AFTER = _float("ROLLOUT_RESUME_AFTER", 300.0)
    # Live progress streams (each holds a worker thread while open): per user and per
    # process (0: half the worker's threads; never all of them), how long one lasts
    # at most (the page then opens another), and seconds between keep-alive comments.
    PROGRESS_STREAMS_PER_USER = _int("PROGRESS_STREAMS_PER_USER", 2)
    PROGRESS_STREAMS_PER_PROCESS = _int("PROGRESS_STREAMS_PER_PROCESS", 0)
    PROGRESS_STREAM_SECONDS = _float("PROGRESS_STREAM_SECONDS", 600.0)
    PROGRESS_STREAM_HEARTBEAT = _float("PROGRESS_STREAM_HEARTBEAT", 15.0)
    SSH_CONNECT_TIMEOUT = _float("SSH_CONNECT_TIMEOUT", 10.0)
    SSH_OPERATION_TIMEOUT = _float("SSH_OPERATION_TIMEOUT", 60.0)
    SSH_IDLE_TIMEOUT = _float("SSH_IDLE_TIMEOUT", 300.0)
    SSH_RETRIES = _int("SSH_RETRIES", 2)
    # Node test and reload commands are chosen from the forms each engine knows; on,
    # an administrator may write their own (still run as an argument list, no shell).
    ALLOW_CUSTOM_NODE_COMMANDS = _bool("ALLOW_CUSTOM_NODE_COMMANDS", False)

    # Background jobs: a scheduler thread in each gunicorn worker; the one holding the
    # database lease runs the jobs.  Seconds: how often the leader renews its lease
    # and writes its heartbeat (followers try to take over as often), how long a lease
    # outlives its last renewal (SQLite), and how long shutdown waits for a running job.
    SCHEDULER_ENABLED = _bool("SCHEDULER_ENABLED", True)
    SCHEDULER_HEARTBEAT = _float("SCHEDULER_HEARTBEAT", 10.0)
    SCHEDULER_LEASE_TTL = _float("SCHEDULER_LEASE_TTL", 30.0)
    SCHEDULER_STOP_TIMEOUT = _float("SCHEDULER_STOP_TIMEOUT", 20.0)
    # Seconds between runs of each job (JOB_INTERVAL_<JOB>); 0 turns a job off.
    JOB_INTERVALS = _intervals("JOB_INTERVAL_")
    JOB_RUN_RETENTION_DAYS = _float("JOB_RUN_RETENTION_DAYS", 30.0)
    # The daily `backups` job writes the whole state into BACKUP_DIR (off while it is
    # empty) and keeps the newest BACKUP_KEEP files.  Backups uploaded on the admin
    # Backups page may be this large (the app's other requests keep MAX_REQUEST_BYTES).
    BACKUP_DIR = os.environ.get("BACKUP_DIR", "")
    BACKUP_KEEP = _int("BACKUP_KEEP", 7)
    BACKUP_UPLOAD_MAX_BYTES = _int("BACKUP_UPLOAD_MAX_BYTES", 512 * 1024 * 1024)
    NODE_CHECK_PARALLELISM = _int("NODE_CHECK_PARALLELISM", 8)
    # The task engine: with a Redis broker (redis://HOST:PORT/DB, which also keeps
    # the tasks' results for a day), rollouts, certificate orders and the jobs run on
    # Celery workers (`flask --app wsgi worker`) sharing the database, instead of in
    # threads of the app's processes.  A task whose worker is lost whole runs again
    # after CELERY_VISIBILITY_TIMEOUT seconds, and Redis hands out again a task that
    # runs longer than that: keep it above the longest task.
    CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "")
    CELERY_VISIBILITY_TIMEOUT = _float("CELERY_VISIBILITY_TIMEOUT", 3600.0)
    # Node metrics (job node_metrics): Glances' port on a node's loopback, reached
    # through SSH unless the node's glances_url says otherwise; nodes read at once; the
    # seconds one node's read may take.  Retention (job metrics_retention) of node
    # metrics and site checks: raw samples, 5-minute and hourly averages.
    GLANCES_PORT = _int("GLANCES_PORT", 61208)
    METRICS_PARALLELISM = _int("METRICS_PARALLELISM", 16)
    METRICS_NODE_TIMEOUT = _float("METRICS_NODE_TIMEOUT", 15.0)
    METRICS_RAW_RETENTION_HOURS = _float("METRICS_RAW_RETENTION_HOURS", 24.0)
    METRICS_5MIN_RETENTION_DAYS = _float("METRICS_5MIN_RETENTION_DAYS", 30.0)
    METRICS_HOURLY_RETENTION_DAYS = _float("METRICS_HOURLY_RETENTION_DAYS", 365.0)
    # Site checks (job site_checks): seconds one check through a node may take from
    # the channel's opening to the status line, and checks run at once.
    SITE_CHECK_TIMEOUT = _float("SITE_CHECK_TIMEOUT", 10.0)
    SITE_CHECK_PARALLELISM = _int("SITE_CHECK_PARALLELISM", 32)

    # Certificates: the ACME CA (an admin may override these in the settings page),
    # when to renew, and how long one issuance may take.
    ACME_DIRECTORY_URL = os.environ.get(
        "ACME_DIRECTORY_URL", "https://acme-v02.api.letsencrypt.org/directory")
    ACME_CA_BUNDLE = os.environ.get("ACME_CA_BUNDLE", "")
    ACME_EMAIL = os.environ.get("ACME_EMAIL", "")
    # DNS servers that check an HTTP-01 site's names point at its pool before ordering
    # (addr[:port], comma-separated); empty: DNS_RESOLVERS.
    ACME_PRECHECK_RESOLVERS = os.environ.get("ACME_PRECHECK_RESOLVERS", "")
    CERT_RENEW_BEFORE_DAYS = _int("CERT_RENEW_BEFORE_DAYS", 30)

    # The DNS servers the control plane asks about names (addr[:port], comma-separated),
    # until an administrator changes them in Settings: nameserver checks and the ACME
    # pre-check run only when some are set. Seconds one lookup may take, and how many
    # names a nameserver check looks up at once.
    DNS_RESOLVERS = os.environ.get("DNS_RESOLVERS", "")
    DNS_TIMEOUT = _float("DNS_TIMEOUT", 5.0)
    NAMESERVER_CHECK_PARALLELISM = _int("NAMESERVER_CHECK_PARALLELISM", 8)
    NAMESERVER_CHECK_LIMIT = os.environ.get("NAMESERVER_CHECK_LIMIT", "30 per hour")

    # Where backends may point (comma-separated CIDRs), until an administrator changes
    # the lists in Settings. Link-local, loopback, "this host", cloud metadata addresses
    # and the nodes' own addresses are always denied, with the networks listed here.
    # Allowed networks are exceptions (127.0.0.0/8 for local trials). Backend names
    # are resolved with BACKEND_RESOLVERS (host[:port], comma-separated; empty: the
    # system's; "off": names are not checked).
    BACKEND_DENIED_NETWORKS = os.environ.get("BACKEND_DENIED_NETWORKS", "")
    BACKEND_ALLOWED_NETWORKS = os.environ.get("BACKEND_ALLOWED_NETWORKS", "")
    BACKEND_RESOLVERS = os.environ.get("BACKEND_RESOLVERS", "")
    # Seconds one save may spend resolving its backend names; names left then are
    # refused with "try again" rather than let a silent DNS server hold the worker.
    BACKEND_RESOLVE_SECONDS = _float("BACKEND_RESOLVE_SECONDS", 5.0)
    CERT_SELF_SIGNED_DAYS = _int("CERT_SELF_SIGNED_DAYS", 365)


class DevelopmentConfig(Config):
    """Embedded defaults for one machine: SQLite and in-memory rate limits."""

    DEBUG = False


class TestingConfig(Config):
    """Isolated database per run; CSRF stays on unless a test turns it off."""

    TESTING = True
    SQLALCHEMY_DATABASE_URI = os.environ.get("TEST_DATABASE_URL", "sqlite://")
    SECRET_KEY = "testing-secret-key"
    PASSWORD_HASH_METHOD = "pbkdf2:sha256:1000"
    RATELIMIT_STORAGE_URI = os.environ.get("TEST_RATELIMIT_STORAGE_URI", "memory://")
    # Tests run their backends on loopback and never ask the system's DNS.
    BACKEND_ALLOWED_NETWORKS = os.environ.get("BACKEND_ALLOWED_NETWORKS", "127.0.0.0/8,::1/128")
    BACKEND_RESOLVERS = os.environ.get("BACKEND_RESOLVERS", "off")
    # Mail stays off unless a test points the app at its own loopback mail server.
    SMTP_HOST = ""
    # Background work runs in threads unless a test starts the task engine.
    CELERY_BROKER_URL = ""
    # The tests' DNS servers are on loopback: an answer later than this is a machine
    # busy with other work, not a timeout under test (those tests set their own).
    DNS_TIMEOUT = _float("DNS_TIMEOUT", 30.0)


class ProductionConfig(Config):
    """Refuses to start without real secrets (checked in create_app)."""

    SESSION_COOKIE_SECURE = _bool("SESSION_COOKIE_SECURE", True)
    REMEMBER_COOKIE_SECURE = _bool("SESSION_COOKIE_SECURE", True)
    LOG_JSON = _bool("LOG_JSON", True)


CONFIGS: dict[str, type[Config]] = {
    "development": DevelopmentConfig,
    "testing": TestingConfig,
    "production": ProductionConfig,
}
