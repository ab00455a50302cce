"""What every edge connection of one process shares: its limits, the stream endpoint, the app, the socket counts.

The counts are plain integers (one event loop per process): all open public sockets against
``GATEWAY_MAX_SOCKETS``, and each client address's against its share (``ClientAddresses``); see
docs/security.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.types import ASGIApp

from gateway import metrics
from gateway.admission.endpoint import EventsEndpoint
from gateway.reads.status import StatusReads


@dataclass
class EdgeLimits:
    idle_timeout: float
    head_timeout: float
    max_header_bytes: int
    max_sockets: int
    internal_port: int
    root_path: str = ""
    access_log: bool = True


@dataclass
class EdgeState:
    """Shared by every connection of one process."""

    limits: EdgeLimits
    events: EventsEndpoint
    app: ASGIApp  # every request that is not a stream or its preflight
    sockets: int = 0
    # Open public sockets per client address (``ClientAddresses``): at most ``per_address_share`` each.
    per_address: dict[str, int] = field(default_factory=dict)
    per_address_share: int = 0
    reads: StatusReads = field(init=False)  # ``GET /session/{id}``, answered from the same endpoint's store

    def __post_init__(self) -> None:
        self.reads = StatusReads(self.events)
        if not self.per_address_share:
            self.per_address_share = self.events.settings.sockets_per_address

    def count_address(self, address: str) -> bool:
        """Counts one more socket of ``address``; False (nothing counted) when it holds its share already."""
        held = self.per_address.get(address, 0)
        if held >= self.per_address_share:
            metrics.LIMIT_REFUSALS.labels("sockets_per_address").inc()
            return False
        self.per_address[address] = held + 1
        return True

    def uncount_address(self, address: str) -> None:
        held = self.per_address.get(address, 0) - 1
        if held > 0:
            self.per_address[address] = held
        else:
            self.per_address.pop(address, None)
