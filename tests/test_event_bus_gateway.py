"""Every record format end to end: the real broker, a ``session-gateway serve`` process reading three
topics at once (native issuance, native presentation, a foreign topic through the mapping, with a type
filter and a dead-letter topic), and an SSE client. Resume works on each topic with its own ids."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.v1.event import CloudEvent

from tests.gateway_support import GatewayProcess, SigningKey, SseEvent, gateway_world, mint, rsa_key, sse
from tests.kafka_support import create_topic, event_bytes, rfc3339, unique_topic

pytestmark = pytest.mark.timeout(120)

TENANT = "tenant-bus"
TYPE = "eu.example.wallet.session.status.v1"
Headers = list[tuple[str, bytes | None]]

MAPPING: dict[str, Any] = {
    "id": "/session/ref",
    "tenantId": "/organisation/id",
    "status": "/lifecycle/state",
    "updatedAt": "/occurredAt",
    "statusValues": {"OFFER_CREATED": "active", "CREDENTIAL_FETCHED": "fetched", "DONE": "completed"},
}


@dataclass
class Bus:
    bootstrap: str
    issuance: str
    presentation: str
    foreign: str
    key: SigningKey
    gateway: GatewayProcess
    client: httpx.AsyncClient

    async def send(self, topic: str, key: str | None, value: bytes, headers: Headers | None = None) -> int:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await producer.start()
        try:
            meta = await producer.send_and_wait(
                topic, key=None if key is None else key.encode(), value=value, headers=headers or [], partition=0
            )
        finally:
            await producer.stop()
        return int(meta.offset)

    def url(self, session_id: str) -> str:
        return f"{self.gateway.url}/session/{session_id}/events"

    async def events(self, session_id: str, count: int, last_event_id: str | None = None) -> list[SseEvent]:
        """The first ``count`` events of a stream (which may end earlier, after a terminal status)."""
        headers = {"last-event-id": last_event_id} if last_event_id else None
        params = {"token": mint(self.key, tenant=TENANT)}
        async with sse(self.client, self.url(session_id), params=params, headers=headers) as stream:
            assert stream.status == 200, stream.status
            events: list[SseEvent] = []
            while len(events) < count and (event := await stream.next_event(15)) is not None:
                events.append(event)
            return events


@pytest_asyncio.fixture(scope="module")
async def bus(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, client: httpx.AsyncClient
) -> AsyncIterator[Bus]:
    issuance, presentation, foreign = unique_topic("e2e-iss"), unique_topic("e2e-pres"), unique_topic("e2e-foreign")
    dlq = unique_topic("e2e-dlq")
    await asyncio.gather(
        *(create_topic(kafka_bootstrap, topic, partitions=1) for topic in (issuance, presentation, foreign, dlq))
    )
    async with gateway_world(
        kafka_bootstrap,
        tmp_path_factory,
        "bus-gateway",
        topic=f"{issuance},{presentation},{foreign}",
        create=False,
        keys=[rsa_key("bus-rsa")],
        GATEWAY_CLOUDEVENTS_TYPES=TYPE,
        GATEWAY_RECORD_MAPPING=json.dumps({**MAPPING, "topics": [foreign]}),
        GATEWAY_DLQ_TOPIC=dlq,
        GATEWAY_UNKNOWN_SESSION_WAIT="5",
    ) as world:
        yield Bus(kafka_bootstrap, issuance, presentation, foreign, world.key, world.gateway, client)


def now() -> str:
    return rfc3339(datetime.now(UTC))


def session(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}"


def cloudevent(mode: str, data: dict[str, Any], **attributes: Any) -> tuple[bytes, Headers]:
    event = CloudEvent({"type": TYPE, "source": "/issuer/eudiplo", **attributes}, data=data)
    message = ce_kafka.to_structured_event(event) if mode == "structured" else ce_kafka.to_binary_event(event)
    return message.value, list(message.headers.items())


def statuses(events: list[SseEvent]) -> list[str]:
    return [event.json()["status"] for event in events]


async def test_a_plain_record_streams_with_the_single_topic_id(bus: Bus) -> None:
    sid = session("plain")
    offset = await bus.send(bus.issuance, sid, event_bytes(sid, TENANT, "active"))
    [event] = await bus.events(sid, 1)
    assert (event.id, event.json()["status"]) == (f"0-{offset}", "active")


@pytest.mark.parametrize("mode", ["structured", "binary"])
async def test_a_cloudevent_streams_to_the_client(bus: Bus, mode: str) -> None:
    sid = session(mode)
    value, headers = cloudevent(mode, {"tenantId": TENANT, "status": "fetched"}, subject=sid)
    offset = await bus.send(bus.presentation, sid, value, headers)
    [event] = await bus.events(sid, 1)
    assert event.id == f"t1.0-{offset}"
    data = event.json()
    assert (data["id"], data["status"]) == (sid, "fetched")
    assert data["updatedAt"].endswith("Z") and data["updatedAt"][:4] == str(datetime.now(UTC).year)


async def test_a_mapped_foreign_record_streams_to_the_client(bus: Bus) -> None:
    sid = session("foreign")

    def record(state: str) -> bytes:
        return json.dumps(
            {
                "eventId": uuid.uuid4().hex,
                "occurredAt": now(),
                "session": {"ref": sid},
                "organisation": {"id": TENANT},
                "lifecycle": {"state": state},
            }
        ).encode()

    first = await bus.send(bus.foreign, sid, record("OFFER_CREATED"))
    second = await bus.send(bus.foreign, sid, record("DONE"))
    events = await bus.events(sid, 5)
    seen = [(e.id, e.json()["status"]) for e in events]
    # The stream opens on whatever the store holds by then: the finished state alone, or the first state
    # and then the transition (the second record may still be on its way).
    finished = (f"t2.0-{second}-end", "completed")
    assert seen in ([finished], [(f"t2.0-{first}", "active"), finished])
    assert first < second


async def test_resume_by_last_event_id_on_each_topic(bus: Bus) -> None:
    on_first, on_second = session("resume-iss"), session("resume-pres")
    await bus.send(bus.issuance, on_first, event_bytes(on_first, TENANT, "active"))
    value, headers = cloudevent("binary", {"tenantId": TENANT, "status": "active"}, subject=on_second)
    await bus.send(bus.presentation, on_second, value, headers)
    [first_seen] = await bus.events(on_first, 1)
    [second_seen] = await bus.events(on_second, 1)
    assert first_seen.id is not None and second_seen.id is not None
    assert not first_seen.id.startswith("t") and second_seen.id.startswith("t1.0-")

    fetched = await bus.send(bus.issuance, on_first, event_bytes(on_first, TENANT, "fetched"))
    done = await bus.send(bus.issuance, on_first, event_bytes(on_first, TENANT, "completed"))
    value, headers = cloudevent("structured", {"tenantId": TENANT, "status": "fetched"}, subject=on_second)
    second_fetched = await bus.send(bus.presentation, on_second, value, headers)
    value, headers = cloudevent("binary", {"tenantId": TENANT, "status": "cancelled"}, subject=on_second)
    second_done = await bus.send(bus.presentation, on_second, value, headers)

    missed = await bus.events(on_first, 5, last_event_id=first_seen.id)
    assert [(e.id, e.json()["status"]) for e in missed] == [(f"0-{fetched}", "fetched"), (f"0-{done}-end", "completed")]
    missed = await bus.events(on_second, 5, last_event_id=second_seen.id)
    assert [(e.id, e.json()["status"]) for e in missed] == [
        (f"t1.0-{second_fetched}", "fetched"),
        (f"t1.0-{second_done}-end", "cancelled"),
    ]
    # A finished session's last id answers 204 on either topic.
    token = mint(bus.key, tenant=TENANT)
    for sid, last in ((on_first, f"0-{done}-end"), (on_second, f"t1.0-{second_done}-end")):
        response = await bus.client.get(bus.url(sid), params={"token": token}, headers={"last-event-id": last})
        assert response.status_code == 204, (sid, response.status_code)


async def test_a_session_that_moves_between_topics_resumes_with_its_current_state(bus: Bus) -> None:
    """Positions of different topics are not comparable: an id from the other topic gets the current state."""
    sid = session("moves")
    await bus.send(bus.issuance, sid, event_bytes(sid, TENANT, "active"))
    [seen] = await bus.events(sid, 1)
    value, headers = cloudevent("binary", {"tenantId": TENANT, "status": "fetched"}, subject=sid)
    offset = await bus.send(bus.presentation, sid, value, headers)
    events = await bus.events(sid, 1, last_event_id=seen.id)
    assert [(e.id, e.json()["status"]) for e in events] == [(f"t1.0-{offset}", "fetched")]


async def test_other_cloudevent_types_and_rejected_records_do_not_reach_clients(bus: Bus) -> None:
    sid = session("filtered")
    value, headers = cloudevent("binary", {"tenantId": TENANT, "status": "active"}, subject=sid, type="other.type")
    await bus.send(bus.presentation, sid, value, headers)
    await bus.send(bus.presentation, sid, b"{broken", [("content-type", b"application/cloudevents+json")])
    await bus.send(bus.issuance, sid, event_bytes(sid, TENANT, "active"))
    events = await bus.events(sid, 1)
    assert statuses(events) == ["active"] and events[0].id is not None and not events[0].id.startswith("t")
