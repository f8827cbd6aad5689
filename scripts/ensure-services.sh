#!/usr/bin/env bash
# The tests talk to a real PostgreSQL (127.0.0.1:5432, user postgres, trust) and Redis (127.0.0.1:6379).
# Already up: nothing to do. Otherwise start them with Debian's cluster tools where those exist (this
# project's machines), else with Docker (`compose.test.yaml`), else say how.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

up() {  # both ports accept connections (no client tools needed)
  "$PY" - <<'PYEOF'
import socket, sys
for port in (5432, 6379):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        sys.exit(1)
PYEOF
}

wait_up() {
  for _ in $(seq 1 60); do up && return 0; sleep 1; done
  echo "PostgreSQL or Redis did not come up" >&2
  return 1
}

up && exit 0

if command -v pg_ctlcluster >/dev/null && command -v redis-server >/dev/null; then
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    echo "starting PostgreSQL" >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
  fi
  if ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
    echo "starting Redis" >&2
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log
  fi
  wait_up
elif docker compose version >/dev/null 2>&1; then
  echo "starting PostgreSQL and Redis with docker compose -f compose.test.yaml" >&2
  docker compose -f compose.test.yaml up -d --wait
  wait_up
else
  echo "PostgreSQL (127.0.0.1:5432, user postgres, trust) and Redis (127.0.0.1:6379) are not running." >&2
  echo "Start them yourself, or install Docker and run: docker compose -f compose.test.yaml up -d --wait" >&2
  exit 1
fi
