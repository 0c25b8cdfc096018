#!/usr/bin/env bash
# Runs inside `unshare -n`: only loopback exists, so nothing can leave the machine.
# Starts a private PostgreSQL, then three pytest runs in parallel, each spread over
# the cores by pytest-xdist: the tests that never use the app's database (pure, real
# servers, browser) once, and those that do on SQLite and again on PostgreSQL.
# Prints each run's log, stops PostgreSQL by PID, and fails if any run failed.
# Extra arguments go to every run (-k, a path, -n 0 ...).
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
  -c full_page_writes=off -c max_connections=300 >"$work/pg.log" 2>&1 &
pg_pid=$!
for _ in $(seq 100); do
  "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port" && break
  sleep 0.1
done
"$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port" || { cat "$work/pg.log"; exit 1; }
runuser -u postgres -- "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" rpcc_test

export PYTHONDONTWRITEBYTECODE=1
# Tests that need a PostgreSQL of their own (several app processes on one database)
# create and drop their databases here, whichever run they are in.
export TEST_POSTGRES_ADMIN_URL="postgresql+psycopg://postgres@127.0.0.1:$pg_port/postgres"

# Two workers per run: many tests wait on servers more than they compute. The browser
# journeys stay on one worker, and so does each module of real servers (tests/conftest.py
# groups them); on PostgreSQL each worker has a database of its own.
pytest=(.venv/bin/pytest -p no:cacheprovider -n 2 --dist loadgroup)
runs=()
pids=()
run() {  # run NAME TITLE [VARIABLE=value ...] -- pytest arguments: in the background
  local name=$1 title=$2 variables=()
  shift 2
  while [ "$1" != "--" ]; do variables+=("$1"); shift; done
  shift
  runs+=("$name")
  echo "$title" >"$work/$name.title"
  (
    started=$SECONDS
    env "${variables[@]}" "${pytest[@]}" "$@" >"$work/$name.log" 2>&1
    echo "$? $((SECONDS - started))" >"$work/$name.status"
  ) &
  pids+=($!)
}

run once "tests without the app's database (unit, property, integration, e2e), once" \
  -- -m "not app_database" "$@"
run sqlite "tests with the app's database (db, integration, api_fuzz) on SQLite" \
  -- -m "app_database" "$@"
# The API fuzzing spends its two minutes of generated requests once, on SQLite.
run postgresql "tests with the app's database (db, integration) on PostgreSQL" \
  TEST_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:$pg_port/rpcc_test" \
  -- -m "app_database and not api_fuzz" "$@"
wait "${pids[@]}"  # the runs, not PostgreSQL

failed=0 empty=0
for name in "${runs[@]}"; do
  read -r rc seconds <"$work/$name.status"
  echo "== $(cat "$work/$name.title"): exit $rc after ${seconds}s"
  cat "$work/$name.log"
  # 5 is pytest's "no tests selected": extra arguments may leave a run without any,
  # but not every run.
  case "$rc" in 0) ;; 5) empty=$((empty + 1)) ;; *) failed=1 ;; esac
done
[ "$empty" -lt "${#runs[@]}" ] || failed=1
echo "== summary"
for name in "${runs[@]}"; do
  read -r rc seconds <"$work/$name.status"
  printf '%-12s exit %s after %ss: %s\n' "$name" "$rc" "$seconds" \
    "$(grep -E '(passed|failed|error|errors|no tests ran).* in [0-9.]+s' "$work/$name.log" \
       | tail -n 1 | tr -d '=' | sed 's/^ *//;s/ *$//')"
done
exit "$failed"
