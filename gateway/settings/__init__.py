"""Gateway settings (environment prefix ``GATEWAY_``), one class per concern.

Each component takes only its own group (``AuthSettings`` for the verifier, ``AdmissionSettings`` for
the limits, ...); ``GatewaySettings`` is all of them, read from the environment once. Kafka and store
settings live in ``consumers.settings``. Meaning and defaults: docs/configuration.md (generated from these
classes by ``make docs``).
"""

from __future__ import annotations

from consumers.settings import SettingsGroup
from gateway.settings.admission import AdmissionSettings
from gateway.settings.auth import ALLOWED_ALGORITHMS, AuthSettings, TrustedIssuer
from gateway.settings.edge import EdgeSettings
from gateway.settings.health import HealthSettings
from gateway.settings.process import ProcessSettings
from gateway.settings.stream import StreamSettings

__all__ = [
    "ALLOWED_ALGORITHMS",
    "GROUPS",
    "AdmissionSettings",
    "AuthSettings",
    "EdgeSettings",
    "GatewaySettings",
    "HealthSettings",
    "ProcessSettings",
    "StreamSettings",
    "TrustedIssuer",
]


class GatewaySettings(EdgeSettings, AuthSettings, AdmissionSettings, StreamSettings, HealthSettings, ProcessSettings):
    """Every gateway group, read from the environment once (``serve``); components take their own group."""


GROUPS: tuple[type[SettingsGroup], ...] = (
    EdgeSettings,
    AuthSettings,
    AdmissionSettings,
    StreamSettings,
    HealthSettings,
    ProcessSettings,
)
