"""The status read's entity tag: opaque, strong, the same on every replica, one per state a tenant may see.

Derived from the session's current Kafka position and what the body says (status, ``updatedAt``), so it
changes exactly when the body does and any replica that read as far computes the same tag (a poller may
land on another one). A keyed hash would need a secret shared by the replicas; the tag only has to be
unguessable from outside the session's tenant, and it is: it hashes the tenant's id and the session's id
with the position, and a tag is only ever compared with the state of a session its caller may see (another
tenant's session is answered 404 before any comparison), so it reveals nothing a stream of the same
session would not (the stream's event ids carry the position in clear). See docs/http-api.md (Status reads).
"""

from __future__ import annotations

import base64
import hashlib

from consumers.store import SessionSnapshot

_PERSON = b"sseg-etag-v1"  # bump when the derivation changes: old tags then simply stop matching


def entity_tag(snapshot: SessionSnapshot | None) -> bytes | None:
    """The quoted strong entity tag of the snapshot's current state; None for no (visible) session."""
    if snapshot is None:
        return None
    current = snapshot.current
    material = "\x00".join(
        (
            snapshot.tenant_id,
            current.session_id,
            str(current.partition),
            str(current.offset),
            current.status.value,
            str(current.updated_ms),
        )
    ).encode("utf-8", errors="surrogatepass")
    digest = hashlib.blake2b(material, digest_size=12, person=_PERSON).digest()
    return b'"' + base64.urlsafe_b64encode(digest) + b'"'


def none_match(header: bytes, tag: bytes | None) -> bool:
    """Whether ``If-None-Match`` (all its values, joined by commas) names ``tag`` (weak comparison, RFC 9110
    13.1.2), or is ``*`` for an existing session. Linear in the header, which the head limit bounds."""
    if tag is None or not header:
        return False
    for raw in header.split(b","):
        value = raw.strip().removeprefix(b"W/")
        if value in (b"*", tag):
            return True
    return False
