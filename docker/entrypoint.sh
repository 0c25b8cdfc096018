#!/bin/sh
# The image's entrypoint.  Before the container's command runs (gunicorn by default;
# a task worker or a one-off `flask --app wsgi ...` is the same image with another
# command), the instance is made ready: the database answers (DB_WAIT_ATTEMPTS tries,
# DB_WAIT_INTERVAL seconds apart), its migrations are applied once however many
# replicas start together, and the first administrator is created when
# FIRST_ADMIN_USERNAME and FIRST_ADMIN_EMAIL ask for one.  A configuration the app
# refuses (production without SECRET_KEY or ENCRYPTION_KEYS) stops it here, saying why.
set -eu
cd "$(dirname "$0")/.."

if [ "$#" -eq 0 ]; then
  echo "entrypoint: no command to run (the image's default is gunicorn)" >&2
  exit 64
fi

python -m app.cli_startup
exec "$@"
