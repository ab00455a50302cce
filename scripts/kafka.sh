#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft broker+controller) for development and tests.
#
#   scripts/kafka.sh start|stop|status|fetch|cached
#
# The broker jars come from Maven Central (org.apache.kafka:kafka_2.13 plus the log4j2 core and
# SLF4J binding its POM leaves out) and are cached under $KAFKA_CACHE_DIR, outside the repository.
# Environment: KAFKA_VERSION (default below), KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (KAFKA_PORT+1),
# KAFKA_CACHE_DIR (~/.cache/session-events-gateway), KAFKA_STATE_DIR (per port, under the cache),
# KAFKA_HEAP (512m).
#
# Optional second listener, SASL_SSL (SCRAM-SHA-512), enabled by KAFKA_SASL_SSL_PORT; the PLAINTEXT listener
# stays as it is. KAFKA_SSL_KEYSTORE (PKCS12 with the broker's key and certificate chain),
# KAFKA_SSL_KEYSTORE_PASSWORD, KAFKA_SASL_SSL_HOST (advertised host, 127.0.0.1; the certificate must name it),
# KAFKA_SCRAM_USERS ("user:password" pairs separated by spaces: SCRAM-SHA-512 credentials, written at
# storage format time, or with kafka-configs when the state dir was formatted before).
set -euo pipefail

KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
LOG4J_VERSION="${LOG4J_VERSION:-2.25.3}"
SLF4J_VERSION="${SLF4J_VERSION:-2.0.17}"
PORT="${KAFKA_PORT:-9092}"
CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
CACHE="${KAFKA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/session-events-gateway}"
DIST="$CACHE/kafka-$KAFKA_VERSION"
STATE="${KAFKA_STATE_DIR:-$CACHE/state-$PORT}"
PIDFILE="$STATE/kafka.pid"
LOG="$STATE/server.log"
HEAP="${KAFKA_HEAP:-512m}"
SASL_SSL_PORT="${KAFKA_SASL_SSL_PORT:-}"
SASL_SSL_HOST="${KAFKA_SASL_SSL_HOST:-127.0.0.1}"
SCRAM_USERS="${KAFKA_SCRAM_USERS:-}"

# shellcheck source=scripts/install-hints.sh
source "$(dirname "${BASH_SOURCE[0]}")/install-hints.sh"

say() { printf '[kafka] %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

find_java() {
  if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then echo "$JAVA_HOME/bin/java"; return; fi
  command -v java >/dev/null 2>&1 \
    || die "java not found (nor JAVA_HOME): Kafka $KAFKA_VERSION needs Java 17 or newer; $(install_hint java17)"
  command -v java
}

fetch() {
  if [ -f "$DIST/.complete" ]; then return 0; fi
  rm -rf "$DIST/lib"
  command -v mvn >/dev/null 2>&1 \
    || die "mvn (Maven) not found: it is needed once to download the Kafka broker jars; $(install_hint maven)"
  mkdir -p "$DIST"
  cat > "$DIST/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.session-events-gateway</groupId>
  <artifactId>kafka-broker-fetch</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>$SLF4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
  </dependencies>
</project>
POM
  say "downloading Apache Kafka $KAFKA_VERSION broker jars with Maven (first run only) ..."
  local n=0
  # Print one progress line per downloaded artifact instead of Maven's full chatter.
  if ! mvn -B -f "$DIST/pom.xml" dependency:copy-dependencies -DoutputDirectory="$DIST/lib" -DincludeScope=runtime \
      2>&1 | tee "$DIST/fetch.log" | while IFS= read -r line; do
        case "$line" in
          *Downloaded\ from*.jar\ *) n=$((n + 1)); f="${line%% (*}"; printf '[kafka]   jar %3d %s\n' "$n" "${f##*/}" >&2 ;;
        esac
      done; then
    die "Maven could not fetch the Kafka jars; see $DIST/fetch.log"
  fi
  grep -q "BUILD SUCCESS" "$DIST/fetch.log" || die "Maven could not fetch the Kafka jars; see $DIST/fetch.log"
  touch "$DIST/.complete"
  say "cached $(ls "$DIST/lib" | wc -l) jars in $DIST/lib"
}

is_running() {
  [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

write_config() {
  mkdir -p "$STATE/data"
  local listeners="PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT"
  local advertised="PLAINTEXT://127.0.0.1:$PORT"
  local protocols="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
  if [ -n "$SASL_SSL_PORT" ]; then
    [ -n "${KAFKA_SSL_KEYSTORE:-}" ] && [ -f "$KAFKA_SSL_KEYSTORE" ] \
      || die "KAFKA_SASL_SSL_PORT is set: KAFKA_SSL_KEYSTORE must name the broker's PKCS12 keystore"
    [ -n "${KAFKA_SSL_KEYSTORE_PASSWORD:-}" ] || die "KAFKA_SASL_SSL_PORT is set: KAFKA_SSL_KEYSTORE_PASSWORD is needed"
    listeners="$listeners,SASL_SSL://127.0.0.1:$SASL_SSL_PORT"
    advertised="$advertised,SASL_SSL://$SASL_SSL_HOST:$SASL_SSL_PORT"
    protocols="$protocols,SASL_SSL:SASL_SSL"
  fi
  cat > "$STATE/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=$listeners
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protocols
log.dirs=$STATE/data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.cleaner.backoff.ms=1000
PROPS
  if [ -n "$SASL_SSL_PORT" ]; then
    cat >> "$STATE/server.properties" <<PROPS
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PKCS12
listener.name.sasl_ssl.ssl.keystore.location=$KAFKA_SSL_KEYSTORE
listener.name.sasl_ssl.ssl.keystore.password=$KAFKA_SSL_KEYSTORE_PASSWORD
listener.name.sasl_ssl.ssl.key.password=$KAFKA_SSL_KEYSTORE_PASSWORD
listener.name.sasl_ssl.ssl.client.auth=none
PROPS
  fi
  cat > "$STATE/log4j2.properties" <<'L4J'
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/broker.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.kafka.request.name = kafka.request.logger
logger.kafka.request.level = WARN
L4J
}

start() {
  if is_running; then say "already running (pid $(cat "$PIDFILE")) on 127.0.0.1:$PORT"; return 0; fi
  if port_open "$PORT"; then die "port $PORT is taken by another process; set KAFKA_PORT"; fi
  local java; java="$(find_java)"  # before a download that would be of no use without it
  fetch
  write_config
  local cp="$DIST/lib/*"
  if [ ! -f "$STATE/data/meta.properties" ]; then
    local cluster_id
    cluster_id="$("$java" -cp "$cp" -Dlog4j2.configurationFile="$STATE/log4j2.properties" -Dkafka.logs.dir="$STATE" kafka.tools.StorageTool random-uuid 2>>"$STATE/format.log" | tail -n1)"
    say "formatting KRaft storage (cluster $cluster_id)"
    local scram_args=() pair
    for pair in $SCRAM_USERS; do
      scram_args+=(--add-scram "SCRAM-SHA-512=[name=${pair%%:*},password=${pair#*:}]")
    done
    "$java" -cp "$cp" -Dlog4j2.configurationFile="$STATE/log4j2.properties" -Dkafka.logs.dir="$STATE" \
      kafka.tools.StorageTool format -t "$cluster_id" -c "$STATE/server.properties" ${scram_args[@]+"${scram_args[@]}"} \
      >>"$STATE/format.log" 2>&1 || die "formatting storage failed; see $STATE/format.log"
    touch "$STATE/.scram-at-format"
  fi
  say "starting broker on 127.0.0.1:$PORT (logs: $STATE)"
  nohup "$java" -Xms128m -Xmx"$HEAP" -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$STATE/log4j2.properties" -Dkafka.logs.dir="$STATE" \
    -cp "$cp" kafka.Kafka "$STATE/server.properties" >"$LOG" 2>&1 &
  echo $! > "$PIDFILE"
  local deadline=$((SECONDS + ${KAFKA_START_TIMEOUT:-90}))
  until port_open "$PORT" && grep -q "Kafka Server started" "$STATE/broker.log" 2>/dev/null; do
    if ! is_running; then tail -n 30 "$LOG" "$STATE/broker.log" 2>/dev/null >&2; die "broker exited during start-up"; fi
    [ $SECONDS -lt $deadline ] || { tail -n 30 "$STATE/broker.log" >&2 2>/dev/null; die "broker did not start within ${KAFKA_START_TIMEOUT:-90}s"; }
    sleep 0.3
  done
  if [ -n "$SCRAM_USERS" ] && [ ! -f "$STATE/.scram-at-format" ]; then
    for pair in $SCRAM_USERS; do
      say "adding SCRAM-SHA-512 user ${pair%%:*}"
      "$java" -cp "$cp" -Dlog4j2.configurationFile="$STATE/log4j2.properties" -Dkafka.logs.dir="$STATE" \
        kafka.admin.ConfigCommand --bootstrap-server "127.0.0.1:$PORT" --alter --entity-type users \
        --entity-name "${pair%%:*}" --add-config "SCRAM-SHA-512=[password=${pair#*:}]" >>"$STATE/format.log" 2>&1 \
        || die "adding SCRAM user ${pair%%:*} failed; see $STATE/format.log"
    done
  fi
  rm -f "$STATE/.scram-at-format"
  say "ready: bootstrap servers 127.0.0.1:$PORT (pid $(cat "$PIDFILE"))"
  if [ -n "$SASL_SSL_PORT" ]; then say "ready: SASL_SSL (SCRAM-SHA-512) listener on $SASL_SSL_HOST:$SASL_SSL_PORT"; fi
}

stop() {
  if ! is_running; then say "not running"; rm -f "$PIDFILE"; return 0; fi
  local pid; pid="$(cat "$PIDFILE")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then say "broker did not stop in 20s; killing"; kill -9 "$pid" 2>/dev/null || true; fi
  rm -f "$PIDFILE"
  say "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) if is_running; then echo "running pid $(cat "$PIDFILE") on 127.0.0.1:$PORT"; else echo "stopped"; exit 1; fi ;;
  fetch) fetch ;;
  cached) [ -f "$DIST/.complete" ] ;;  # exit 0 when the broker jars are cached (no download on start)
  reset) stop; rm -rf "$STATE"; say "state removed" ;;
  *) echo "usage: $0 start|stop|restart|status|fetch|cached|reset" >&2; exit 2 ;;
esac
