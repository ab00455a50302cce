"""Prometheus metrics of the ingestion side (records, store, lag)."""

from prometheus_client import Counter, Gauge

RECORDS_CONSUMED = Counter("gateway_records_consumed_total", "Kafka records read from the session-status topic.")
RECORDS_APPLIED = Counter("gateway_records_applied_total", "Records that changed a session's state.")
RECORDS_IGNORED = Counter(
    "gateway_records_ignored_total", "Valid records that did not change the store, by reason.", ["reason"]
)
RECORDS_REJECTED = Counter("gateway_records_rejected_total", "Malformed records skipped, by reason.", ["reason"])
SESSIONS_DELETED = Counter("gateway_sessions_deleted_total", "Sessions removed by a tombstone.")
SESSIONS_EVICTED = Counter("gateway_sessions_evicted_total", "Sessions evicted from the store, by reason.", ["reason"])
STORE_SESSIONS = Gauge("gateway_store_sessions", "Sessions held in the in-memory store.")
# ``partition`` is the partition number for the first topic of GATEWAY_KAFKA_TOPIC and ``t<index>.<partition>``
# for the others (as in event ids, see consumers.partitions), so single-topic series are unchanged.
CONSUMER_LAG = Gauge(
    "gateway_consumer_lag_records",
    "Records between the consumer position and the partition end.",
    ["partition"],
)
CONSUMER_POSITION = Gauge("gateway_consumer_position", "Next offset the consumer reads, by partition.", ["partition"])
BROKER_REACHABLE = Gauge("gateway_broker_reachable", "1 while the last broker probe succeeded.")
STORE_CAUGHT_UP = Gauge("gateway_store_caught_up", "1 once the replay reached the end offsets captured at start.")
TASK_RESTARTS = Counter(
    "gateway_task_restarts_total", "Crashes of a supervised long-running task (each followed by a restart).", ["task"]
)
KAFKA_LAST_FETCH_AGE = Gauge(
    "gateway_kafka_last_fetch_age_seconds", "Seconds since the last successful fetch from the broker."
)
KAFKA_LOG_SUPPRESSED = Counter(
    "gateway_kafka_log_lines_suppressed_total", "Repeated Kafka client log lines folded into periodic summaries."
)
SUBSCRIBER_ERRORS = Counter(
    "gateway_subscriber_errors_total", "Subscribers closed because they raised while receiving an event."
)
DLQ_WRITTEN = Counter("gateway_dlq_records_written_total", "Rejected records copied to the dead-letter topic.")
DLQ_DROPPED = Counter(
    "gateway_dlq_records_dropped_total",
    "Rejected records not copied to the dead-letter topic (queue_full, send_failed).",
    ["reason"],
)
DLQ_ERRORS = Counter("gateway_dlq_errors_total", "Failed attempts to write to the dead-letter topic.")
DLQ_QUEUED = Gauge("gateway_dlq_queued_records", "Rejected records waiting to be copied to the dead-letter topic.")
