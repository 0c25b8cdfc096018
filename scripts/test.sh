#!/usr/bin/env bash
# The whole test suite: installs what it needs, lints, then runs the tests inside a
# loopback-only network namespace: those without the app's database once, those with
# it on SQLite and on PostgreSQL (scripts/test-inner.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-system.sh test

echo "== lint"
.venv/bin/ruff check app tests bench config.py wsgi.py
.venv/bin/mypy app
.venv/bin/lint-imports --no-cache

echo "== tests (loopback-only network namespace)"
exec unshare -n bash scripts/test-inner.sh "$@"
