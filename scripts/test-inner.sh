#!/usr/bin/env bash
# Runs inside `unshare -n`: only loopback exists, so nothing can leave the machine.
# Starts a private PostgreSQL, runs the suite on SQLite and on PostgreSQL in
# parallel, stops PostgreSQL by PID.
set -uo pipefail
cd "$(dirname "$0")/.."
ip link set lo up

work=$(mktemp -d /tmp/rpcc-test.XXXXXX)
chmod 755 "$work"
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
pg_pid=""
cleanup() {
  if [ -n "$pg_pid" ] && kill -0 "$pg_pid" 2>/dev/null; then  # the postmaster itself (setpriv execs)
    kill -INT "$pg_pid"; wait "$pg_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

pg_port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/pg"; chown postgres "$work/pg"
runuser -u postgres -- "$pg_bin/initdb" -D "$work/pg/data" -A trust -U postgres >/dev/null
setpriv --reuid=postgres --regid=postgres --init-groups "$pg_bin/postgres" -D "$work/pg/data" -k "$work/pg" -p "$pg_port" \
  -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
  -c full_page_writes=off -c max_connections=200 >"$work/pg.log" 2>&1 &
pg_pid=$!
for _ in $(seq 100); do
  "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port" && break
  sleep 0.1
done
"$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port" || { cat "$work/pg.log"; exit 1; }
runuser -u postgres -- "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" rpcc_test

export PYTHONDONTWRITEBYTECODE=1
# Tests that need a PostgreSQL of their own (several app processes on one database)
# create and drop their databases here, in both runs.
export TEST_POSTGRES_ADMIN_URL="postgresql+psycopg://postgres@127.0.0.1:$pg_port/postgres"
.venv/bin/pytest -p no:cacheprovider "$@" >"$work/sqlite.log" 2>&1 &
sqlite_pid=$!
# The browser journeys run the product as its own process on its own SQLite
# database: they run once, in the first run. So does the API fuzzing: two minutes
# of generated requests are spent once, and the other tests cover both databases.
TEST_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:$pg_port/rpcc_test" \
  .venv/bin/pytest -p no:cacheprovider --ignore=tests/e2e --ignore=tests/api_fuzz "$@" \
  >"$work/postgresql.log" 2>&1 &
postgres_pid=$!
wait "$sqlite_pid"; sqlite_rc=$?
wait "$postgres_pid"; postgres_rc=$?

echo "== suite on SQLite (exit $sqlite_rc)"; cat "$work/sqlite.log"
echo "== suite on PostgreSQL (exit $postgres_rc)"; cat "$work/postgresql.log"
[ "$sqlite_rc" -eq 0 ] && [ "$postgres_rc" -eq 0 ]
