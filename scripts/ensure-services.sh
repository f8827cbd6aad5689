#!/usr/bin/env bash
# The tests talk to a real PostgreSQL (127.0.0.1:5432, user postgres) and Redis (127.0.0.1:6379).
# On this project's machines both run before a session starts; start whichever has stopped.
set -euo pipefail
pg_host=${VIDQ_TEST_PG_HOST:-127.0.0.1}
if ! pg_isready -q -h "$pg_host" -p 5432; then
  echo "starting PostgreSQL" >&2
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
fi
if ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
  echo "starting Redis" >&2
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
for _ in $(seq 1 30); do
  pg_isready -q -h "$pg_host" -p 5432 && redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && exit 0
  sleep 1
done
echo "PostgreSQL or Redis did not come up" >&2
exit 1
