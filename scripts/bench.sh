#!/usr/bin/env bash
# `make bench`: every benchmark against a real broker and server processes, side by side with a
# baseline; prints the figures and rewrites benchmarks/README.md's table and the latency CDF plot.
# Arguments pass through (e.g. --quick, --only 3); see `python -m benchmarks --help`.
# From make: `make bench ARGS=--quick` (or `make bench-quick`).
# An existing broker: GATEWAY_KAFKA_BOOTSTRAP_SERVERS (KAFKA_BOOTSTRAP_SERVERS still works, deprecated).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh bench
if [ -z "${GATEWAY_KAFKA_BOOTSTRAP_SERVERS:-}" ] && [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  echo "[bench] KAFKA_BOOTSTRAP_SERVERS is deprecated: set GATEWAY_KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS instead" >&2
  GATEWAY_KAFKA_BOOTSTRAP_SERVERS="$KAFKA_BOOTSTRAP_SERVERS"
fi
# benchmarks/run.py reads KAFKA_BOOTSTRAP_SERVERS until it reads GATEWAY_KAFKA_BOOTSTRAP_SERVERS itself.
export KAFKA_BOOTSTRAP_SERVERS="${GATEWAY_KAFKA_BOOTSTRAP_SERVERS:-}"
exec python -m benchmarks "$@"
