#!/usr/bin/env bash
# `make run`: the whole stack on this machine, for a first look at the gateway.
#
#   1. a virtualenv in .venv with the project installed (created when missing);
#   2. a local Kafka broker (scripts/kafka.sh; the first start downloads the broker jars);
#   3. the compacted session-status topic (6 partitions; kept if it exists);
#   4. the DEV token issuer on 127.0.0.1:$RUN_ISSUER_PORT (default 8090);
#   5. the gateway in dev mode on 127.0.0.1:$RUN_GATEWAY_PORT (default 8080),
# then prints the demo page's URL. Ctrl-C stops everything this script started (a broker that was
# already running is left running). Logs: .run/gateway.log and .run/dev-issuer.log.
#
# Environment: RUN_GATEWAY_PORT, RUN_INTERNAL_PORT (default 9090), RUN_ISSUER_PORT, KAFKA_PORT (local broker, default 9092),
# GATEWAY_KAFKA_BOOTSTRAP_SERVERS (use this broker instead of starting one), GATEWAY_KAFKA_TOPIC,
# PYTHON (interpreter for the virtualenv, default python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

GATEWAY_PORT="${RUN_GATEWAY_PORT:-8080}"
INTERNAL_PORT="${RUN_INTERNAL_PORT:-9090}"
ISSUER_PORT="${RUN_ISSUER_PORT:-8090}"
KAFKA_LOCAL_PORT="${KAFKA_PORT:-9092}"
PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
RUN_DIR="$ROOT/.run"

say() { printf '[run] %s\n' "$*" >&2; }
die() { printf '[run] ERROR: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

require_free_port() { # port, what, variable to change it
  if port_open "$1"; then
    die "port $1 (the $2) is already in use; stop whatever listens there (another 'make run'?) or choose another port: $3=<port> make run"
  fi
}

# --- processes we start, and stopping them ---------------------------------------------------------

GATEWAY_PID=""
ISSUER_PID=""
STARTED_BROKER=0
CLEANED=0

stop_pid() { # pid, signal, name
  local pid="$1" sig="$2" name="$3"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill "-$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then say "$name did not stop in 10s; killing it"; kill -KILL "$pid" 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  [ "$CLEANED" = 1 ] && return
  CLEANED=1
  trap - INT TERM
  if [ -n "$GATEWAY_PID$ISSUER_PID" ] || [ "$STARTED_BROKER" = 1 ]; then say "stopping ..."; fi
  stop_pid "$GATEWAY_PID" INT "the gateway"   # SIGINT: closes open streams at once, then exits
  stop_pid "$ISSUER_PID" TERM "the dev issuer"
  if [ "$STARTED_BROKER" = 1 ]; then bash "$ROOT/scripts/kafka.sh" stop || true; fi
  if [ -n "$GATEWAY_PID$ISSUER_PID" ] || [ "$STARTED_BROKER" = 1 ]; then say "stopped"; fi
}
trap cleanup EXIT
trap 'exit 0' INT  # Ctrl-C is how one stops it: not a failure
trap 'exit 143' TERM

# Runs a command in the background in its own session, so a Ctrl-C in the terminal reaches only this
# script, which then stops each process once, in order.
background() { # log file, command...
  local log="$1"; shift
  if command -v setsid >/dev/null 2>&1; then
    setsid "$@" >"$log" 2>&1 </dev/null &
  else
    "$@" >"$log" 2>&1 </dev/null &
  fi
  LAST_PID=$!
}

# --- 1. virtualenv ---------------------------------------------------------------------------------

if [ ! -x "$VENV/bin/python" ]; then
  command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found: install Python 3.11 or newer (or set PYTHON=/path/to/python3.11)"
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$("$PYTHON" -V 2>&1) is too old: Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)"
  say "creating the virtualenv in .venv ($("$PYTHON" -V 2>&1))"
  "$PYTHON" -m venv "$VENV" || die "could not create .venv (on Debian/Ubuntu: apt-get install python3-venv)"
fi
if [ ! -x "$VENV/bin/session-gateway" ]; then
  say "installing the project into .venv (pip install -e .) ..."
  "$VENV/bin/python" -m pip install --quiet -e "$ROOT" || die "pip install -e . failed"
fi
CLI="$VENV/bin/session-gateway"
PY="$VENV/bin/python"

# --- ports -------------------------------------------------------------------------------------------

require_free_port "$GATEWAY_PORT" "gateway" RUN_GATEWAY_PORT
require_free_port "$INTERNAL_PORT" "gateway's internal port (health, metrics, docs)" RUN_INTERNAL_PORT
require_free_port "$ISSUER_PORT" "dev token issuer" RUN_ISSUER_PORT
[ "$GATEWAY_PORT" != "$ISSUER_PORT" ] || die "RUN_GATEWAY_PORT and RUN_ISSUER_PORT are both $GATEWAY_PORT"

# --- 2. Kafka ----------------------------------------------------------------------------------------

if [ -n "${GATEWAY_KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  BOOTSTRAP="$GATEWAY_KAFKA_BOOTSTRAP_SERVERS"
  say "using the Kafka broker at $BOOTSTRAP (GATEWAY_KAFKA_BOOTSTRAP_SERVERS); not starting one"
else
  BOOTSTRAP="127.0.0.1:$KAFKA_LOCAL_PORT"
  if bash "$ROOT/scripts/kafka.sh" status >/dev/null 2>&1; then
    say "using the local Kafka broker already running on $BOOTSTRAP (it is left running on exit)"
  else
    if port_open "$KAFKA_LOCAL_PORT"; then
      die "port $KAFKA_LOCAL_PORT (Kafka) is in use by another process; to use a broker that listens there, run GATEWAY_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_LOCAL_PORT make run; otherwise choose another port: KAFKA_PORT=<port> make run"
    fi
    require_free_port "${KAFKA_CONTROLLER_PORT:-$((KAFKA_LOCAL_PORT + 1))}" "Kafka controller" KAFKA_PORT
    STARTED_BROKER=1
    if bash "$ROOT/scripts/kafka.sh" cached; then
      say "starting a local Kafka broker on $BOOTSTRAP"
    else
      say "starting a local Kafka broker on $BOOTSTRAP (its jars are not cached yet: this first start downloads them)"
    fi
    bash "$ROOT/scripts/kafka.sh" start || die "the Kafka broker did not start (see the messages above)"
  fi
fi
export GATEWAY_KAFKA_BOOTSTRAP_SERVERS="$BOOTSTRAP"

# --- 3. topic ----------------------------------------------------------------------------------------

GATEWAY_KAFKA_REQUEST_TIMEOUT_MS="${GATEWAY_KAFKA_REQUEST_TIMEOUT_MS:-15000}" \
  "$CLI" create-topic --partitions 6 >&2 || die "could not create the topic on $BOOTSTRAP"

# --- 4. dev issuer, 5. gateway -----------------------------------------------------------------------

mkdir -p "$RUN_DIR"
ISSUER_URL="http://127.0.0.1:$ISSUER_PORT"
say "starting the DEV token issuer on $ISSUER_URL (log: .run/dev-issuer.log)"
background "$RUN_DIR/dev-issuer.log" "$CLI" dev-issuer --host 127.0.0.1 --port "$ISSUER_PORT"
ISSUER_PID=$LAST_PID

say "starting the gateway in dev mode on http://127.0.0.1:$GATEWAY_PORT (log: .run/gateway.log)"
background "$RUN_DIR/gateway.log" env \
  GATEWAY_DEV_MODE=true \
  GATEWAY_TENANT_STREAM_SCOPE="${GATEWAY_TENANT_STREAM_SCOPE:-sessions:watch}" \
  GATEWAY_JWKS_URL="$ISSUER_URL/jwks.json" \
  GATEWAY_JWT_ISSUER="$ISSUER_URL" \
  GATEWAY_DEV_ISSUER_URL="$ISSUER_URL" \
  GATEWAY_LOG_FORMAT=text \
  GATEWAY_HOST=127.0.0.1 \
  GATEWAY_PORT="$GATEWAY_PORT" \
  GATEWAY_INTERNAL_PORT="$INTERNAL_PORT" \
  GATEWAY_KAFKA_BOOTSTRAP_SERVERS="$BOOTSTRAP" \
  "$CLI" serve
GATEWAY_PID=$LAST_PID

# Waits until url answers 200; fails early when the process exits.
wait_ok() { # url, pid, name, log, seconds
  local url="$1" pid="$2" name="$3" log="$4" deadline=$((SECONDS + $5))
  until "$PY" -c 'import sys, urllib.request
try:
    sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).status == 200 else 1)
except Exception:
    sys.exit(1)' "$url"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$log" >&2 || true
      die "the $name exited during start-up (log: ${log#"$ROOT/"})"
    fi
    if [ $SECONDS -ge "$deadline" ]; then
      tail -n 20 "$log" >&2 || true
      die "the $name did not become ready within $5s ($url; log: ${log#"$ROOT/"})"
    fi
    sleep 0.3
  done
}
wait_ok "$ISSUER_URL/jwks.json" "$ISSUER_PID" "dev issuer" "$RUN_DIR/dev-issuer.log" 30
wait_ok "http://127.0.0.1:$INTERNAL_PORT/readyz" "$GATEWAY_PID" "gateway" "$RUN_DIR/gateway.log" 90

cat <<EOF

  Ready. Open the demo:

      http://127.0.0.1:$GATEWAY_PORT/demo

  A token for your own client (any tenant; &session=ID scopes it to one session):

      curl '$ISSUER_URL/token?tenant=demo-tenant'
      $CLI watch SESSION_ID --url http://127.0.0.1:$GATEWAY_PORT \\
          --token "\$($CLI dev-token --tenant demo-tenant --issuer $ISSUER_URL)"

  Health, metrics and API docs: http://127.0.0.1:$INTERNAL_PORT/readyz, /metrics, /docs

  (Kafka $BOOTSTRAP · logs in .run/ · Ctrl-C stops everything)

EOF

# Runs until Ctrl-C, or until the gateway or the issuer exits by itself.
while kill -0 "$GATEWAY_PID" 2>/dev/null && kill -0 "$ISSUER_PID" 2>/dev/null; do
  sleep 1 &
  wait $! || true
done
if ! kill -0 "$GATEWAY_PID" 2>/dev/null; then
  tail -n 20 "$RUN_DIR/gateway.log" >&2 || true
  die "the gateway exited (log: .run/gateway.log)"
fi
tail -n 20 "$RUN_DIR/dev-issuer.log" >&2 || true
die "the dev issuer exited (log: .run/dev-issuer.log)"
