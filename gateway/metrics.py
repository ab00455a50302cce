"""Prometheus metrics of the serving side (streams, authentication, delivery), and the build's versions.

``_created`` series are off (``disable_created_metrics``): they doubled every counter's exposition with
a start time that no alert or dashboard of ours reads. Reference: docs/operations.md, "Metrics".
"""

import platform
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import Counter, Gauge, Histogram, Info, disable_created_metrics

disable_created_metrics()  # type: ignore[no-untyped-call]


def _version(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


BUILD_INFO = Info("gateway_build", "Versions of the gateway and of the libraries that serve it (value 1).")
BUILD_INFO.info(
    {
        "version": _version("session-events-gateway"),
        "python": platform.python_version(),
        "aiokafka": _version("aiokafka"),
        "uvicorn": _version("uvicorn"),
    }
)

OPEN_STREAMS = Gauge("gateway_open_streams", "SSE streams currently open.")
TENANT_STREAMS_OPEN = Gauge("gateway_open_tenant_streams", "Tenant streams (GET /tenant/events) currently open.")
STREAMS_OPENED = Counter("gateway_streams_opened_total", "SSE streams started (status 200).")
STREAMS_CLOSED = Counter("gateway_streams_closed_total", "SSE streams ended, by reason.", ["reason"])
EVENTS_DELIVERED = Counter("gateway_events_delivered_total", "Session events written to clients.")
REQUESTS_REFUSED = Counter(
    "gateway_stream_requests_refused_total", "Stream requests answered with an error, by HTTP status.", ["status"]
)
STREAM_REQUESTS_ENDED = Counter(
    "gateway_stream_requests_ended_total",
    "Stream requests answered 204 No Content because their session has ended: a normal end, not a refusal.",
)
REQUEST_LOG_SUPPRESSED = Counter(
    "gateway_request_log_lines_suppressed_total",
    "Log lines of refused requests folded into one summary line per reason and minute, by reason.",
    ["reason"],
)
AUTH_FAILURES = Counter("gateway_auth_failures_total", "Token verification failures, by reason.", ["reason"])
JWKS_FETCHES = Counter("gateway_jwks_fetches_total", "JWKS (and OIDC discovery) fetches attempted.")
JWKS_FAILURES = Counter("gateway_jwks_fetch_failures_total", "JWKS fetches that failed.")
JWKS_LOG_SUPPRESSED = Counter(
    "gateway_jwks_log_lines_suppressed_total",
    "Log lines of failed JWKS fetches folded into one summary line per kind and minute, by kind.",
    ["reason"],
)
JWKS_KEY_WAITS = Counter(
    "gateway_jwks_unknown_kid_waits_total",
    "Unknown kids inside GATEWAY_JWKS_MIN_REFRESH: deferred refetches run, and requests refused at once "
    "(GATEWAY_JWKS_MAX_WAITING reached, or the endpoint failing twice in a row).",
    ["outcome"],
)
SLOW_CLIENT_DISCONNECTS = Counter(
    "gateway_slow_client_disconnects_total", "Streams cut because the client did not read fast enough."
)
LIMIT_REFUSALS = Counter("gateway_limit_refusals_total", "Streams refused by a connection limit.", ["limit"])
DELIVERY_DELAY = Histogram(
    "gateway_delivery_delay_seconds",
    "Delay from the Kafka record timestamp to the write of the event to the client.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
JWKS_WAITING = Gauge(
    "gateway_jwks_waiting_requests",
    "Requests whose token names a key the cached JWKS lacks, waiting for the deferred refetch "
    "(at most GATEWAY_JWKS_MAX_WAITING).",
)
JWKS_LAST_REFRESH_AGE = Gauge(
    "gateway_jwks_last_refresh_age_seconds", "Seconds since the signing keys were last fetched successfully."
)
CLOCK_ERRORS = Counter("gateway_stream_clock_errors_total", "Streams closed because the shared clock failed on them.")
WAITING_REQUESTS = Gauge(
    "gateway_waiting_requests", "Admitted stream requests waiting for their session or a resume position."
)
OPEN_SOCKETS = Gauge("gateway_open_sockets", "Open connections on the public port (streams and everything else).")
EDGE_REFUSALS = Counter(
    "gateway_edge_refusals_total",
    "Connections the HTTP edge refused or closed before a request was served, by reason.",
    ["reason"],
)
STATUS_READS = Counter(
    "gateway_status_reads_total", "Status reads (GET /session/{id}) answered, by status.", ["status"]
)

# Per issuer (GATEWAY_JWT_ISSUERS, or the one issuer): the totals above stay as they were, summed over issuers.
JWKS_ISSUER_FETCHES = Counter(
    "gateway_jwks_issuer_fetches_total", "JWKS (and OIDC discovery) fetches attempted, by issuer.", ["issuer"]
)
JWKS_ISSUER_FAILURES = Counter(
    "gateway_jwks_issuer_fetch_failures_total", "JWKS fetches that failed, by issuer.", ["issuer"]
)
JWKS_ISSUER_KEY_WAITS = Counter(
    "gateway_jwks_issuer_unknown_kid_waits_total",
    "gateway_jwks_unknown_kid_waits_total by issuer: each issuer has its own refetch limit and waiting cap.",
    ["issuer", "outcome"],
)
JWKS_ISSUER_WAITING = Gauge(
    "gateway_jwks_issuer_waiting_requests", "Requests waiting for an issuer's deferred JWKS refetch.", ["issuer"]
)
JWKS_ISSUER_LAST_REFRESH_AGE = Gauge(
    "gateway_jwks_issuer_last_refresh_age_seconds",
    "Seconds since an issuer's signing keys were last fetched successfully (-1: never).",
    ["issuer"],
)


class IssuerKeyMetrics:
    """The per-issuer children of one issuer's key cache, bound once."""

    def __init__(self, issuer: str) -> None:
        self.fetches = JWKS_ISSUER_FETCHES.labels(issuer)
        self.failures = JWKS_ISSUER_FAILURES.labels(issuer)
        self.waits_refetched = JWKS_ISSUER_KEY_WAITS.labels(issuer, "refetched")
        self.waits_refused = JWKS_ISSUER_KEY_WAITS.labels(issuer, "refused")
        self.waiting = JWKS_ISSUER_WAITING.labels(issuer)
        self.last_refresh_age = JWKS_ISSUER_LAST_REFRESH_AGE.labels(issuer)
