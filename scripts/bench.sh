#!/usr/bin/env bash
# `make bench`: every benchmark against a real broker and server processes, side by side with a
# baseline; prints the figures and rewrites benchmarks/README.md's table and the latency CDF plot.
# Arguments pass through (e.g. --quick, --only 3); see `python -m benchmarks --help`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh bench
exec python -m benchmarks "$@"
