#!/usr/bin/env bash
# The whole test suite: installs what it needs, lints, then runs every test twice
# (SQLite and PostgreSQL, in parallel) inside a loopback-only network namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-system.sh test

echo "== lint"
.venv/bin/ruff check app tests bench config.py wsgi.py
.venv/bin/mypy app
.venv/bin/lint-imports --no-cache

echo "== tests (loopback-only network namespace)"
exec unshare -n bash scripts/test-inner.sh "$@"
