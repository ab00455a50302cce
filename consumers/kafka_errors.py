"""Kafka client errors by kind, for one clear log line and the ``gateway_kafka_client_errors_total{kind}`` metric.

Kinds: ``auth`` (SASL authentication or authorization refused), ``ssl`` (TLS handshake failed, e.g. an untrusted
or mismatching broker certificate), ``connection`` (refused, unreachable, timed out, other Kafka errors) and
``other`` (anything else, e.g. the topic does not exist yet).

aiokafka's error for a failed bootstrap does not carry its real cause (``SaslAuthenticationFailed``,
``SSLCertVerificationError``, ``ConnectionRefusedError``); ``consumers.aiokafka_seam`` finds it
(``bootstrap_cause``), and drops aiokafka's own line about it, because ``ConnectErrorLog`` reports the same
failure itself: once, naming the cause and the settings to check, instead of once per retry.

Batches the client cannot read at all (a record it cannot parse, a batch that would decompress beyond its
cap; see ``consumers.aiokafka_seam``) are skipped whole by the consumer and counted in
``gateway_unreadable_batches_total{reason}``.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable

from aiokafka.errors import (
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    ClusterAuthorizationFailedError,
    IllegalSaslStateError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    UnsupportedSaslMechanismError,
)
from prometheus_client import Counter

from consumers import aiokafka_seam
from consumers.settings import KafkaSettings

log = logging.getLogger("gateway.consumer")

KAFKA_CLIENT_ERRORS = Counter(
    "gateway_kafka_client_errors_total",
    "Kafka client errors while connecting, by kind (auth, ssl, connection, other).",
    ["kind"],
)

UNREADABLE_BATCHES = Counter(
    "gateway_unreadable_batches_total",
    "Record batches skipped whole because the Kafka client cannot read them, by reason (too_large: it would "
    "decompress beyond its cap; unreadable: a record cannot be parsed). Their records are counted in "
    "gateway_records_rejected_total by offset range.",
    ["reason"],
)

_AUTH_ERRORS = (
    SaslAuthenticationFailed,
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    UnsupportedSaslMechanismError,
    IllegalSaslStateError,
    TopicAuthorizationFailedError,
    ClusterAuthorizationFailedError,
)


def root_cause(exc: BaseException) -> BaseException:
    """The most specific exception behind ``exc``: aiokafka's logged bootstrap error, else the end of the chain."""
    logged = aiokafka_seam.bootstrap_cause(exc)
    if logged is not None:
        return logged
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (ssl.SSLError, *_AUTH_ERRORS)):
            return exc
        nxt = exc.__cause__ or exc.__context__
        if nxt is None:
            break
        exc = nxt
    return exc


def classify_kafka_error(exc: BaseException) -> str:
    """``auth``, ``ssl``, ``connection`` or ``other``: what kind of failure ``exc`` is, looking through aiokafka's
    wrapping (see the module docstring)."""
    cause = root_cause(exc)
    if isinstance(cause, _AUTH_ERRORS):
        return "auth"
    if isinstance(cause, ssl.SSLError):
        return "ssl"
    if isinstance(cause, (KafkaError, OSError, TimeoutError)):
        return "connection"
    return "other"


def _describe(cause: BaseException) -> str:
    return str(cause) or type(cause).__name__


class ConnectErrorLog:
    """Counts connect failures by kind and logs one line per kind, repeated at most once per ``interval``.

    A line names the broker, the cause and the settings to check. A change of kind (e.g. from ``connection`` while
    the broker starts to ``auth``) is logged at once; repeats of the same kind are counted in the metric and
    summarised in the next line of that kind.
    """

    def __init__(
        self, settings: KafkaSettings, interval: float = 300.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._interval = interval
        self._clock = clock
        self._last_kind: str | None = None
        self._last_logged = 0.0
        self._suppressed: dict[str, int] = {}
        aiokafka_seam.watch_bootstrap_failures()  # what root_cause() reads; one line when it cannot be

    def report(self, error: BaseException, retry_in: float) -> str:
        """Counts and (rate-limited) logs one failed connect attempt; returns its one-line description."""
        kind = classify_kafka_error(error)
        description = self._message(kind, root_cause(error))
        aiokafka_seam.forget_bootstrap_cause()  # a later failure must not be explained by this attempt's cause
        KAFKA_CLIENT_ERRORS.labels(kind).inc()
        now = self._clock()
        if kind == self._last_kind and now - self._last_logged < self._interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return description
        held = self._suppressed.pop(kind, 0)
        repeats = f" ({held} more failed attempts since the last line)" if held else ""
        level = logging.WARNING if kind in ("connection", "other") else logging.ERROR
        log.log(level, "%s; retrying in %.1fs%s", description, retry_in, repeats)
        self._last_kind, self._last_logged = kind, now
        return description

    def _message(self, kind: str, cause: BaseException) -> str:
        s = self._settings
        where = f"{s.kafka_bootstrap_servers} ({s.kafka_security_protocol})"
        detail = _describe(cause)
        if kind == "auth":
            return (
                f"Kafka authentication failed at {where} for user {s.kafka_sasl_username!r} with "
                f"{s.kafka_sasl_mechanism or 'PLAIN'}: {detail}. Check GATEWAY_KAFKA_SASL_USERNAME, "
                "GATEWAY_KAFKA_SASL_PASSWORD and GATEWAY_KAFKA_SASL_MECHANISM"
            )
        if kind == "ssl":
            cafile = str(s.kafka_ssl_cafile) if s.kafka_ssl_cafile else "the system CA store"
            return (
                f"Kafka TLS handshake failed at {where}: {detail}. The broker certificate must be signed by a CA in "
                f"GATEWAY_KAFKA_SSL_CAFILE ({cafile}) and name the broker host "
                f"(GATEWAY_KAFKA_SSL_CHECK_HOSTNAME={str(s.kafka_ssl_check_hostname).lower()})"
            )
        if kind == "connection":
            return f"cannot connect to Kafka at {where}: {detail}"
        return f"cannot start consuming from {where}: {detail}"
