"""6. What CreateTopics did per topic: the broker's answer, read from aiokafka's response struct.

``AIOKafkaAdminClient.create_topics`` returns the protocol response as it decoded it (a
``CreateTopicsResponse_v0``..``v3`` struct); the error code per topic is in its ``topic_errors`` entries
(``topic``, ``error_code``), read by name through ``to_object()``.

Checked (``check_create_topics``): the aiokafka version, and that a response of every version
``CreateTopicsRequest`` may negotiate is read so. Fallback: the public ``list_topics()`` before creating says
which topics exist already (they are not sent); the others are sent, and reported created (so is a topic
created a moment before, while the cluster's metadata does not show it yet).
"""

from __future__ import annotations

from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from consumers.aiokafka_seam._common import check, import_or_none, warn_once

_CHECK_TOPIC = "seam-check"


def error_codes(response: Any) -> dict[str, int] | None:
    """The error code per topic of a CreateTopics response (0: created); None when it is not read so."""
    try:
        entries = response.to_object()["topic_errors"]
        return {str(entry["topic"]): int(entry["error_code"]) for entry in entries}
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def _sample(response_type: Any) -> Any:
    """A response of ``response_type`` saying that ``_CHECK_TOPIC`` exists already."""
    known = {"topic": _CHECK_TOPIC, "error_code": TopicAlreadyExistsError.errno}
    values: dict[str, Any] = {}
    for name, field in zip(response_type.SCHEMA.names, response_type.SCHEMA.fields, strict=True):
        values[name] = [tuple(known.get(entry) for entry in field.array_of.names)] if name == "topic_errors" else None
    return response_type(**values)


def check_create_topics() -> str | None:
    """None when ``create_topics`` reads the broker's answer with the installed aiokafka, else why not."""
    problem = check()
    if problem is not None:
        return problem
    request = getattr(import_or_none("aiokafka.protocol.admin"), "CreateTopicsRequest", None)
    versions = getattr(request, "_CLASSES", ())
    if not versions:
        return "aiokafka.protocol.admin.CreateTopicsRequest has no response versions"
    for version in versions:
        response_type = getattr(version, "RESPONSE_TYPE", None)
        try:
            codes = error_codes(_sample(response_type))
        except Exception:
            codes = None
        if codes != {_CHECK_TOPIC: TopicAlreadyExistsError.errno}:
            return f"{getattr(response_type, '__name__', version)} is not read as the seam reads it"
    return None


async def create_topics(admin: AIOKafkaAdminClient, topics: list[NewTopic]) -> dict[str, int]:
    """Sends CreateTopics for ``topics``: the broker's error code per topic name (0: created;
    ``TopicAlreadyExistsError.errno``: it existed). A topic the answer does not name is left out, and so is
    every topic when the answer cannot be read after all (one line says so)."""
    problem = check_create_topics()
    if problem is None:
        response = await admin.create_topics(topics)
        codes = error_codes(response)
        if codes is None:  # sent already: what it did is unknown, as for a topic the answer does not name
            warn_once("create-topics-answer", "cannot read aiokafka's CreateTopics answer %r", response)
        return codes or {}
    warn_once(
        "create-topics",
        "cannot read aiokafka's CreateTopics answer (%s): which topics exist is asked before creating",
        problem,
    )
    existing = set(await admin.list_topics())
    missing = [topic for topic in topics if topic.name not in existing]
    if missing:
        await admin.create_topics(missing)
    codes = {topic.name: TopicAlreadyExistsError.errno for topic in topics if topic.name in existing}
    return codes | {topic.name: 0 for topic in missing}
