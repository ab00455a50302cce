"""When a replica says it can serve (``/readyz``) and when it asks to be restarted (``/livez``).

Ready means "can serve", not "everything upstream is reachable": an unready fleet answers 503
everywhere, and a browser's EventSource never retries after an error status. The policy and its
trade-offs are in docs/operations.md ("Readiness means can serve", "Failure boundaries"); with
``--workers`` the pod's answer is the same whichever worker a probe reaches (``gateway.runtime.workers``).
"""

from __future__ import annotations

from typing import Any

from consumers.consumer import SessionStatusConsumer
from consumers.progress import PartitionProgress
from consumers.supervision import Supervisor
from gateway.admission.registry import ConnectionRegistry
from gateway.auth.issuers import TrustedIssuers
from gateway.runtime.workers import WorkerReadiness


class HealthPolicy:
    """Readiness and liveness of one gateway process, from the components it runs."""

    def __init__(
        self,
        *,
        strict: bool,
        consumer: SessionStatusConsumer,
        progress: PartitionProgress,
        jwks: TrustedIssuers,
        connections: ConnectionRegistry,
        supervisor: Supervisor,
        workers: WorkerReadiness | None = None,
    ) -> None:
        self.strict = strict  # GATEWAY_READINESS_STRICT: an unreachable broker or key server makes it unready
        self.consumer = consumer
        self.progress = progress
        self.jwks = jwks
        self.connections = connections
        self.supervisor = supervisor
        self.workers = workers  # with ``serve --workers N``: the pod is ready when all are

    def readiness(self) -> dict[str, Any]:
        """Ready = can serve: the initial replay is done, keys were loaded once, not draining.

        Losing the broker or the identity provider afterwards does not make a replica unready: the
        store is current up to the outage and the cached keys still verify tokens. Both show in the
        body and in metrics; ``GATEWAY_READINESS_STRICT`` makes them count.
        """
        checks, reasons, warnings = self.own_readiness()
        if self.workers is not None:
            # This worker's slot is written before it answers (see gateway.runtime.workers): its answer
            # and what its siblings answer for it never disagree, whichever worker a probe reaches.
            self.workers.publish(not reasons)
            waiting = self.workers.not_ready()
            checks["all_workers_ready"] = not waiting
            others = [index for index in waiting if index != self.workers.index]
            if others:
                reasons.append(f"worker {', '.join(map(str, others))} of this server not ready yet")
        report: dict[str, Any] = {"status": "ready" if not reasons else "not ready", "checks": checks}
        report["reasons"] = reasons
        if warnings:
            report["warnings"] = warnings
        report["seconds_since_broker_contact"] = round(self.consumer.seconds_since_contact(), 1)
        report["seconds_since_keys_refreshed"] = round(self.jwks.seconds_since_refresh(), 1)
        if self.jwks.several:
            report["issuers"] = self.jwks.report()
        report["tasks"] = self.supervisor.report()
        return report

    def own_readiness(self) -> tuple[dict[str, bool], list[str], list[str]]:
        """This process's checks, the reasons it cannot serve, and warnings (see ``readiness``)."""
        broker_reachable = self.progress.broker_reachable
        keys_fresh = self.jwks.loaded and self.jwks.last_error is None
        checks = {
            "store_caught_up": self.progress.caught_up.is_set(),
            "signing_keys_loaded": self.jwks.loaded,
            "accepting_streams": not self.connections.draining,
            "broker_reachable": broker_reachable,
            "signing_keys_fresh": keys_fresh,
        }
        reasons = []
        if not checks["store_caught_up"]:
            reasons.append("session store is still replaying the topic")
            if self.progress.last_error:
                reasons.append(f"Kafka: {self.progress.last_error}")
        if not checks["signing_keys_loaded"]:
            reasons.extend(self.jwks.not_loaded)
        if not checks["accepting_streams"]:
            reasons.append("shutting down")
        warnings = []
        if not broker_reachable and self.progress.caught_up.is_set():
            warnings.append("Kafka broker not reachable: serving from memory")
        if self.jwks.loaded and not keys_fresh:
            warnings.append("signing keys could not be refreshed: using the cached keys")
        if self.strict:
            reasons.extend(warnings)
            warnings = []
        return checks, reasons, warnings

    def share_readiness(self) -> None:
        """With ``--workers``: writes this worker's own readiness to its shared slot (see ``readiness``)."""
        if self.workers is not None:
            self.workers.publish(not self.own_readiness()[1])

    def liveness(self) -> dict[str, Any]:
        """Alive unless a supervised task keeps crashing (then the orchestrator should restart the process)."""
        failing = self.supervisor.failing()
        if failing:
            return {"status": "failed", "reason": f"tasks keep crashing: {', '.join(failing)}"}
        return {"status": "alive"}
