"""5. Why a bootstrap failed: the cause aiokafka logs but does not raise (``consumers.kafka_errors``).

When no bootstrap server answers, aiokafka raises a bare ``KafkaConnectionError("Unable to bootstrap from
[...]")``; the real cause (``SaslAuthenticationFailed``, ``SSLCertVerificationError``,
``ConnectionRefusedError``) appears only as the last of the three arguments of the line its client logged
just before, on the ``aiokafka`` logger: ``'Unable connect to "%s:%s": %s'`` (host, port, exception). A
filter on that logger keeps the exception for ``bootstrap_cause()`` and drops the line, because
``ConnectErrorLog`` reports the same failure itself, once, naming the cause and the settings to check.

Checked (``check_bootstrap_log``): the aiokafka version, that ``aiokafka.client`` logs on the ``aiokafka``
logger, and that ``AIOKafkaClient.bootstrap`` holds both texts (in its compiled constants). Fallback: no
filter; the exception chain alone is classified, so a refused login or certificate at bootstrap counts as
a connection failure, and aiokafka's own lines stay (folded by ``consumers.log_aggregation``).
"""

from __future__ import annotations

import logging
import types

from aiokafka.errors import KafkaConnectionError

from consumers.aiokafka_seam._common import check, import_or_none, warn_once

LOGGER = "aiokafka"
LINE_TEMPLATE = 'Unable connect to "%s:%s": %s'  # host, port, the exception
FAILED_TEXT = "Unable to bootstrap from "  # what the KafkaConnectionError raised after every host failed says


def check_bootstrap_log() -> str | None:
    """None when the installed aiokafka logs a failed bootstrap's cause as the filter reads it, else why not."""
    problem = check()
    if problem is not None:
        return problem
    module = import_or_none("aiokafka.client")
    logger = getattr(module, "log", None)
    if not isinstance(logger, logging.Logger) or logger.name != LOGGER:
        return f"aiokafka.client does not log on the {LOGGER!r} logger"
    code = getattr(getattr(getattr(module, "AIOKafkaClient", None), "bootstrap", None), "__code__", None)
    if not isinstance(code, types.CodeType) or "log" not in code.co_names:
        return "AIOKafkaClient.bootstrap does not log"
    for text in (LINE_TEMPLATE, FAILED_TEXT):
        if text not in code.co_consts:
            return f"AIOKafkaClient.bootstrap has no {text!r}"
    return None


class _BootstrapCause(logging.Filter):
    """Keeps the exception of aiokafka's 'Unable connect to "host:port": error' line, and drops the line."""

    def __init__(self) -> None:
        super().__init__()
        self.last: BaseException | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.msg == LINE_TEMPLATE and isinstance(args, tuple) and len(args) == 3:
            cause = args[2]
            if isinstance(cause, BaseException):
                self.last = cause
                return False
        return True


_cause = _BootstrapCause()


def watch_bootstrap_failures() -> str | None:
    """Attaches the filter to aiokafka's logger (idempotent); None when it works, else why not (then the
    filter is removed, and one line says what is lost)."""
    problem = check_bootstrap_log()
    logger = logging.getLogger(LOGGER)
    if problem is None:
        if _cause not in logger.filters:
            logger.addFilter(_cause)
        return None
    logger.removeFilter(_cause)
    _cause.last = None
    warn_once(
        "bootstrap",
        "the cause of a failed Kafka bootstrap cannot be read (%s): a refused login or certificate there is "
        "reported as a connection failure",
        problem,
    )
    return problem


def bootstrap_cause(error: BaseException) -> BaseException | None:
    """What aiokafka logged as the cause of the failed bootstrap ``error`` reports; None if not that, or unknown."""
    if isinstance(error, KafkaConnectionError) and FAILED_TEXT in str(error):
        return _cause.last
    return None


def forget_bootstrap_cause() -> None:
    """A later failure must not be explained by this attempt's cause."""
    _cause.last = None
