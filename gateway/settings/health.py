"""Health and readiness on the internal port (docs/configuration.md)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from consumers.durations import seconds_fields
from consumers.settings import SettingsGroup


class HealthSettings(SettingsGroup):
    """What `/readyz` and `/livez` require."""

    section: ClassVar[str] = "Health"

    readiness_strict: bool = Field(
        False,
        description=(
            "also require a reachable broker and freshly refreshed keys for `/readyz` (an outage then empties"
            " the fleet: see [Readiness](operations.md#readiness-means-can-serve))"
        ),
    )
    task_crash_limit: int = Field(
        5, ge=1, description="`/livez` answers 503 when one supervised task crashed more often than this ..."
    )
    task_crash_window: float = Field(
        300.0, gt=0, description="... within this many seconds (Kubernetes then restarts the replica)"
    )

    _health_seconds = seconds_fields("task_crash_window")
