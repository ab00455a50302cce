"""The tenant rule and the session claim: which sessions a verified principal may read.

A session of another tenant is answered exactly like an unknown one, so callers ask ``visible`` and
treat ``None`` as "unknown"; see docs/security.md.
"""

from __future__ import annotations

from consumers.store import SessionSnapshot
from gateway.auth.claims import Principal
from gateway.settings import AuthSettings


class AccessRule:
    """``GATEWAY_TENANT_CLAIM`` and ``GATEWAY_SESSION_CLAIM`` applied to one principal and session."""

    def __init__(self, settings: AuthSettings) -> None:
        self.tenants_enforced = settings.tenants_enforced
        self._session_claim = bool(settings.session_claim)

    def session_allowed(self, principal: Principal, session_id: str) -> bool:
        """False when the token names another session in its session claim."""
        return not (self._session_claim and principal.session is not None and principal.session != session_id)

    def visible(self, snapshot: SessionSnapshot | None, principal: Principal) -> SessionSnapshot | None:
        """The snapshot if the principal's tenant (and ticket) may see it, else None (as for an unknown session)."""
        if snapshot is not None and self.tenants_enforced and principal.tenant != snapshot.tenant_id:
            return None
        if (
            snapshot is not None
            and principal.ticket_session is not None
            and principal.ticket_session != snapshot.session_id
        ):
            return None  # a ticket reads its one session; another one is answered like an unknown one
        return snapshot
