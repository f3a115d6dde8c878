#!/usr/bin/env bash
# Lint (fail fast), then the test suite. Extra arguments go to pytest.
#
# Services: when PostgreSQL listens on 127.0.0.1:5432 and IMAGEPORT_TEST_DATABASE_URL is unset,
# it is pointed there; likewise IMAGEPORT_TEST_REDIS_URL when Redis answers PING on
# 127.0.0.1:6379, and IMAGEPORT_TEST_RABBITMQ_URL (guest/guest) when 127.0.0.1:5672 answers.
# Otherwise they stay unset and the test fixtures start throwaway servers.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

scripts/lint.sh

listens() {  # host port
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}
redis_pong() {  # host port
  timeout 2 bash -c '
    exec 3<>"/dev/tcp/$1/$2" || exit 1
    printf "PING\r\n" >&3
    IFS= read -r reply <&3 || exit 1
    [[ $reply == "+PONG"* ]]' _ "$1" "$2" 2>/dev/null
}

if [ -z "${IMAGEPORT_TEST_DATABASE_URL:-}" ] && listens 127.0.0.1 5432; then
  export IMAGEPORT_TEST_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test
fi
if [ -z "${IMAGEPORT_TEST_REDIS_URL:-}" ] && redis_pong 127.0.0.1 6379; then
  export IMAGEPORT_TEST_REDIS_URL=redis://127.0.0.1:6379/15
fi
if [ -z "${IMAGEPORT_TEST_RABBITMQ_URL:-}" ] && listens 127.0.0.1 5672; then
  export IMAGEPORT_TEST_RABBITMQ_URL=amqp://guest:guest@127.0.0.1:5672/
fi
echo "test: IMAGEPORT_TEST_DATABASE_URL=${IMAGEPORT_TEST_DATABASE_URL:-<unset: fixtures start PostgreSQL>}" >&2
echo "test: IMAGEPORT_TEST_REDIS_URL=${IMAGEPORT_TEST_REDIS_URL:-<unset: fixtures start Redis>}" >&2
echo "test: IMAGEPORT_TEST_RABBITMQ_URL=${IMAGEPORT_TEST_RABBITMQ_URL:-<unset: fixtures start rabbitmq-server>}" >&2

set +e
"$VENV/bin/pytest" -q -p no:cacheprovider tests "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "test: FAILED: pytest collected no tests (exit 5); an empty suite is not a pass" >&2
  exit 1
fi
exit "$rc"
