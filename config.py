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
    LOGIN_RATE_LIMIT = os.environ.get("LOGIN_RATE_LIMIT", "5 per minute")

    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = os.environ.get("SESSION_COOKIE_SAMESITE", "Lax")
    SESSION_COOKIE_SECURE = _bool("SESSION_COOKIE_SECURE", False)
    REMEMBER_COOKIE_HTTPONLY = True
    REMEMBER_COOKIE_SAMESITE = "Lax"
    REMEMBER_COOKIE_SECURE = _bool("SESSION_COOKIE_SECURE", False)
    # Number of reverse proxies in front of the app whose X-Forwarded-* we trust.
    PROXY_FIX_COUNT = _int("PROXY_FIX_COUNT", 0)

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

    BOOTSTRAP_SERVE_LOCAL = True
    LOG_JSON = _bool("LOG_JSON", False)


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
