#!/usr/bin/env bash
# Run the product on this machine: SQLite, in-memory rate limits, gunicorn.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-system.sh run

mkdir -p instance
env_file=instance/rpcc.env
if [ ! -f "$env_file" ]; then
  umask 077
  {
    echo "SECRET_KEY=$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(48))')"
    echo "ENCRYPTION_KEYS=$(.venv/bin/python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')"
    echo "DATABASE_URL=sqlite:///$(pwd)/instance/rpcc.db"
  } > "$env_file"
fi
set -a; . "$env_file"; set +a
export APP_ENV=${APP_ENV:-development}
export SESSION_COOKIE_SECURE=${SESSION_COOKIE_SECURE:-false}
# A local trial runs its backends on this machine: let loopback through.
export BACKEND_ALLOWED_NETWORKS=${BACKEND_ALLOWED_NETWORKS:-127.0.0.0/8,::1/128}

.venv/bin/flask --app wsgi db upgrade 2>&1 | grep -v "^INFO" || true
if ! .venv/bin/flask --app wsgi users list --role admin 2>/dev/null | grep -q .; then
  echo "creating the first administrator:"
  .venv/bin/flask --app wsgi users create --username admin --email admin@example.com --role admin
fi
bind=${BIND:-127.0.0.1:8000}
echo "Reverse Proxy Control Center: http://${bind}/  (user: admin)"
exec .venv/bin/gunicorn -c gunicorn.conf.py --bind "$bind" wsgi:app
