#!/usr/bin/env bash
# Local Keycloak (start-dev, in-memory database) for the end-to-end tests and for trying the gateway with a real
# identity provider.
#
#   scripts/keycloak.sh start|stop|status|fetch|reset
#
# The server comes from Maven Central (org.keycloak:keycloak-quarkus-dist, a zip) and is unpacked once under
# $KEYCLOAK_CACHE_DIR, outside the repository. Each state dir gets its own Keycloak home (symlinks into the
# cached distribution, its own data/ and conf/), so several instances can run side by side. On start the realm
# file is imported (--import-realm) and the script returns once the realm's OpenID discovery document answers.
# Keycloak needs Java 21 or newer: KEYCLOAK_JAVA_HOME, else JAVA_HOME when it is new enough, else the newest
# JDK >= 21 under /usr/lib/jvm.
#
# Environment: KEYCLOAK_VERSION (default below), KEYCLOAK_PORT (8180), KEYCLOAK_MANAGEMENT_PORT (KEYCLOAK_PORT+1),
# KEYCLOAK_CACHE_DIR (~/.cache/session-events-gateway), KEYCLOAK_STATE_DIR (per port, under the cache),
# KEYCLOAK_REALM_FILE (deploy/keycloak/realm.json), KEYCLOAK_REALM (session-gateway),
# KEYCLOAK_ADMIN / KEYCLOAK_ADMIN_PASSWORD (admin/admin: the master realm's bootstrap admin),
# KEYCLOAK_HEAP (768m), KEYCLOAK_START_TIMEOUT (240 seconds).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KEYCLOAK_VERSION="${KEYCLOAK_VERSION:-26.7.3}"
PORT="${KEYCLOAK_PORT:-8180}"
MANAGEMENT_PORT="${KEYCLOAK_MANAGEMENT_PORT:-$((PORT + 1))}"
CACHE="${KEYCLOAK_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/session-events-gateway}"
DIST="$CACHE/keycloak-$KEYCLOAK_VERSION"
STATE="${KEYCLOAK_STATE_DIR:-$CACHE/keycloak-state-$PORT}"
REALM_FILE="${KEYCLOAK_REALM_FILE:-$ROOT/deploy/keycloak/realm.json}"
REALM="${KEYCLOAK_REALM:-session-gateway}"
HEAP="${KEYCLOAK_HEAP:-768m}"
PIDFILE="$STATE/keycloak.pid"
LOG="$STATE/keycloak.log"

# shellcheck source=scripts/install-hints.sh
source "$(dirname "${BASH_SOURCE[0]}")/install-hints.sh"

say() { printf '[keycloak] %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

java_major() {  # prints the major version of the java binary $1 (0 when it cannot tell)
  local line
  line="$("$1" -version 2>&1 | head -n1)" || { echo 0; return; }
  line="${line#*\"}"; line="${line%%\"*}"; line="${line#1.}"
  echo "${line%%[.+-]*}" | grep -E '^[0-9]+$' || echo 0
}

find_java_home() {
  local candidate
  for candidate in "${KEYCLOAK_JAVA_HOME:-}" "${JAVA_HOME:-}"; do
    if [ -n "$candidate" ] && [ -x "$candidate/bin/java" ] && [ "$(java_major "$candidate/bin/java")" -ge 21 ]; then
      echo "$candidate"; return
    fi
  done
  local best="" best_major=0 major
  for candidate in /usr/lib/jvm/*; do
    [ -x "$candidate/bin/java" ] || continue
    major="$(java_major "$candidate/bin/java")"
    if [ "$major" -ge 21 ] && [ "$major" -gt "$best_major" ]; then best="$candidate"; best_major="$major"; fi
  done
  [ -n "$best" ] || die "Keycloak $KEYCLOAK_VERSION needs Java 21 or newer; none found (set KEYCLOAK_JAVA_HOME); $(install_hint java21)"
  echo "$best"
}

fetch() {
  if [ -f "$DIST/.complete" ]; then return 0; fi
  command -v mvn >/dev/null 2>&1 || die "mvn (Maven) not found: it is needed once to download Keycloak; $(install_hint maven)"
  command -v unzip >/dev/null 2>&1 || command -v python3 >/dev/null 2>&1 || die "unzip or python3 is needed"
  mkdir -p "$CACHE"
  local download="$CACHE/keycloak-download-$KEYCLOAK_VERSION"
  rm -rf "$DIST" "$download"
  mkdir -p "$download"
  say "downloading Keycloak $KEYCLOAK_VERSION (org.keycloak:keycloak-quarkus-dist, ~180 MB) with Maven (first run only) ..."
  # Maven's console transfer listener rewrites one progress line with \r; print it every 10%.
  local status=0
  cat > "$download/pom.xml" <<'POM'
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.session-events-gateway</groupId>
  <artifactId>keycloak-fetch</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
</project>
POM
  mvn -f "$download/pom.xml" org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy \
      -Dartifact="org.keycloak:keycloak-quarkus-dist:$KEYCLOAK_VERSION:zip" -DoutputDirectory="$download" \
      -Dmdep.useBaseVersion=true 2>&1 \
    | tee "$download/fetch.log" | tr '\r' '\n' | awk -v tag='[keycloak]' '
      /keycloak-quarkus-dist.*zip/ && /Downloaded from/ { print tag "   " $0 > "/dev/stderr"; next }
      $1 == "Progress" && $2 == "(1):" && $4 == "MB" && NF == 4 {
        split($3, parts, "/"); done_ = parts[1] + 0; total = parts[2] + 0;
        if (total >= 50) { pct = int(done_ * 100 / total); step = int(pct / 10) * 10;
          if (step > last) { last = step; printf "%s   %3d%% of %s MB\n", tag, step, total > "/dev/stderr" } }
      }' || status=$?
  grep -q "BUILD SUCCESS" "$download/fetch.log" && [ "$status" = 0 ] \
    || die "Maven could not fetch Keycloak; see $download/fetch.log"
  local zip="$download/keycloak-quarkus-dist-$KEYCLOAK_VERSION.zip"
  [ -f "$zip" ] || die "Maven reported success but $zip is missing; see $download/fetch.log"
  say "unpacking $(du -h "$zip" | cut -f1) into $DIST"
  if command -v unzip >/dev/null 2>&1; then
    unzip -q "$zip" -d "$download/unpacked"
  else
    python3 -m zipfile -e "$zip" "$download/unpacked"
  fi
  mv "$download/unpacked/keycloak-$KEYCLOAK_VERSION" "$DIST"
  chmod +x "$DIST/bin/"*.sh
  rm -rf "$download"
  touch "$DIST/.complete"
  say "cached Keycloak $KEYCLOAK_VERSION in $DIST"
}

is_running() {
  [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# A Keycloak home of its own: kc.sh finds its home from its own path, so bin/ is a copy; lib/ (with the
# build-time augmentation start-dev writes once), themes/ and providers/ are the cached distribution's.
make_home() {
  local home="$STATE/home"
  rm -rf "$home/data"
  mkdir -p "$home/bin" "$home/conf" "$home/data/import"
  cp -a "$DIST/bin/." "$home/bin/"
  cp -a "$DIST/conf/." "$home/conf/"
  local entry
  for entry in lib themes providers version.txt; do
    [ -e "$DIST/$entry" ] && ln -sfn "$DIST/$entry" "$home/$entry"
  done
  if [ -f "$REALM_FILE" ]; then
    cp "$REALM_FILE" "$home/data/import/realm.json"
  else
    die "realm file $REALM_FILE not found (set KEYCLOAK_REALM_FILE)"
  fi
  echo "$home"
}

start() {
  if is_running; then say "already running (pid $(cat "$PIDFILE")) on http://127.0.0.1:$PORT"; return 0; fi
  if port_open "$PORT"; then die "port $PORT is taken by another process; set KEYCLOAK_PORT"; fi
  if port_open "$MANAGEMENT_PORT"; then die "port $MANAGEMENT_PORT is taken; set KEYCLOAK_MANAGEMENT_PORT"; fi
  fetch
  command -v curl >/dev/null 2>&1 || die "curl is needed to wait for Keycloak to serve the realm"
  local java_home; java_home="$(find_java_home)"
  mkdir -p "$STATE"
  local home; home="$(make_home)"
  say "starting Keycloak $KEYCLOAK_VERSION (start-dev, Java $(java_major "$java_home/bin/java")) on http://127.0.0.1:$PORT (logs: $LOG)"
  # setsid: the server gets its own process group, so `stop` ends kc.sh's java child with it.
  JAVA_HOME="$java_home" JAVA_OPTS_KC_HEAP="-Xms64m -Xmx$HEAP" \
    KC_BOOTSTRAP_ADMIN_USERNAME="${KEYCLOAK_ADMIN:-admin}" KC_BOOTSTRAP_ADMIN_PASSWORD="${KEYCLOAK_ADMIN_PASSWORD:-admin}" \
    nohup setsid "$home/bin/kc.sh" start-dev --import-realm --db=dev-mem \
      --http-host=127.0.0.1 --http-port="$PORT" --http-management-port="$MANAGEMENT_PORT" \
      --hostname-strict=false --cache=local --log-console-output=default \
      </dev/null >"$LOG" 2>&1 &
  echo $! > "$PIDFILE"
  local deadline=$((SECONDS + ${KEYCLOAK_START_TIMEOUT:-240})) next_note=$((SECONDS + 15))
  local discovery="http://127.0.0.1:$PORT/realms/$REALM/.well-known/openid-configuration"
  until curl -fsS -o /dev/null --max-time 5 "$discovery" 2>/dev/null; do
    if ! is_running; then tail -n 40 "$LOG" >&2; die "Keycloak exited during start-up (log: $LOG)"; fi
    if [ $SECONDS -ge $deadline ]; then
      tail -n 40 "$LOG" >&2; stop; die "Keycloak did not serve realm $REALM within ${KEYCLOAK_START_TIMEOUT:-240}s"
    fi
    if [ $SECONDS -ge $next_note ]; then say "still starting ($((SECONDS - deadline + ${KEYCLOAK_START_TIMEOUT:-240}))s)"; next_note=$((SECONDS + 15)); fi
    sleep 0.5
  done
  say "ready: realm $REALM at http://127.0.0.1:$PORT/realms/$REALM (pid $(cat "$PIDFILE"))"
}

stop() {
  if ! is_running; then say "not running"; rm -f "$PIDFILE"; return 0; fi
  local pid; pid="$(cat "$PIDFILE")"
  # The pid leads its own process group (setsid): signal the group, so the JVM goes too.
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    say "Keycloak did not stop in 30s; killing"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
  say "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) if is_running; then echo "running pid $(cat "$PIDFILE") on http://127.0.0.1:$PORT"; else echo "stopped"; exit 1; fi ;;
  fetch) fetch ;;
  reset) stop; rm -rf "$STATE"; say "state removed" ;;
  *) echo "usage: $0 start|stop|restart|status|fetch|reset" >&2; exit 2 ;;
esac
