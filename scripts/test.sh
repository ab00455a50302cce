#!/usr/bin/env bash
# The README's test command (`make test`): sets everything up, lints, type-checks, runs all tests.
# Tests find a Kafka broker via GATEWAY_KAFKA_BOOTSTRAP_SERVERS (KAFKA_BOOTSTRAP_SERVERS: deprecated), else
# testcontainers (Docker), else scripts/kafka.sh; its progress (jar download, start) is printed as it happens.
# Arguments go to pytest (`make test ARGS="-k browser"`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh test

source scripts/install-hints.sh
if ! command -v java >/dev/null; then
  echo "[test] Java 17+ is required for the local Kafka broker; $(install_hint java17)" >&2
  exit 1
fi
if ! command -v chromium >/dev/null 2>&1; then
  echo "[test] installing Debian's chromium for the browser test" >&2
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
  else
    echo "[test] chromium is missing and this user cannot apt-get install it: run 'sudo apt-get install chromium'" >&2
    exit 1
  fi
fi

echo "[test] ruff" >&2
ruff check .
ruff format --check .
echo "[test] mypy" >&2
mypy
echo "[test] pytest (the first run downloads the Kafka broker jars; progress below)" >&2
if [ "$#" -gt 0 ]; then
  exec pytest "$@"
fi
# Two workers (pytest-xdist), each with its own broker; a test file stays on one worker.
pytest -n 2 --dist loadfile
