"""The wire contract producers write to the session-status topic. Imports nothing of ours."""

from schemas.session_status import (
    STATUS_RANK,
    TERMINAL_STATUSES,
    SessionStatus,
    SessionStatusEvent,
    SessionType,
    json_schema,
)

__all__ = [
    "STATUS_RANK",
    "TERMINAL_STATUSES",
    "SessionStatus",
    "SessionStatusEvent",
    "SessionType",
    "json_schema",
]
