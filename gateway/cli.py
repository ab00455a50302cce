"""``session-gateway``: serve, publish, watch, dev-issuer, create-topic.

User mistakes end with one readable line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Sequence
from typing import TypeVar

from pydantic import ValidationError

from consumers.settings import ConsumerSettings
from schemas import SessionStatus, SessionType

T = TypeVar("T")


class UserError(Exception):
    """A mistake the user can fix; printed as one line."""


def _kafka_settings(args: argparse.Namespace) -> ConsumerSettings:
    overrides = {}
    if getattr(args, "bootstrap_servers", None):
        overrides["kafka_bootstrap_servers"] = args.bootstrap_servers
    if getattr(args, "topic", None):
        overrides["kafka_topic"] = args.topic
    return ConsumerSettings(**overrides)


def _cmd_serve(args: argparse.Namespace) -> int:
    from gateway.server import serve
    from gateway.settings import GatewaySettings

    overrides: dict[str, object] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.dev:
        overrides["dev_mode"] = True
    settings = GatewaySettings(**overrides)  # type: ignore[arg-type]
    if not (settings.jwks_url or settings.oidc_issuer):
        raise UserError("set GATEWAY_JWKS_URL or GATEWAY_OIDC_ISSUER: tokens cannot be verified without keys")
    serve(settings, ConsumerSettings())
    return 0


def _cmd_publish(args: argparse.Namespace) -> int:
    from gateway.publish import StatusPublisher, build_event

    settings = _kafka_settings(args)
    event = build_event(
        args.session_id, SessionStatus(args.status), args.tenant, SessionType(args.type) if args.type else None
    )

    async def run() -> tuple[int, int]:
        async with StatusPublisher(settings) as publisher:
            await publisher.check_topic()
            return await publisher.publish(event)

    partition, offset = asyncio.run(_kafka_call(run(), settings))
    topic = settings.primary_topic
    print(f"published {event.id} {event.status.value} to {topic} partition {partition} offset {offset}")
    return 0


def _cmd_create_topic(args: argparse.Namespace) -> int:
    from gateway.topic import create_topic

    settings = _kafka_settings(args)
    created = asyncio.run(_kafka_call(create_topic(settings, args.partitions, args.replication_factor), settings))
    print(f"topic {settings.primary_topic} {'created' if created else 'already exists'}")
    return 0


def _cmd_watch(args: argparse.Namespace) -> int:
    from gateway.watch import watch

    return asyncio.run(watch(args.url, args.session_id, args.token, args.last_event_id))


def _cmd_dev_issuer(args: argparse.Namespace) -> int:
    from gateway.dev_issuer import serve_dev_issuer

    try:
        serve_dev_issuer(args.host, args.port, args.audience)
    except ValueError as error:
        raise UserError(str(error)) from None
    return 0


async def _kafka_call(call: Awaitable[T], settings: ConsumerSettings) -> T:
    from aiokafka.errors import KafkaError, UnknownTopicOrPartitionError

    try:
        return await call
    except UnknownTopicOrPartitionError:
        raise UserError(
            f"topic {settings.kafka_topic!r} does not exist at {settings.kafka_bootstrap_servers}; "
            "create it with `session-gateway create-topic`"
        ) from None
    except KafkaError as error:
        raise UserError(f"Kafka at {settings.kafka_bootstrap_servers}: {error}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="session-gateway",
        description="Streams wallet-session status from Kafka to browsers over Server-Sent Events. "
        "Every setting is also read from GATEWAY_* environment variables (see the README).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gateway", description="Run the gateway (uvicorn, uvloop).")
    serve.add_argument("--host", help="address to bind (GATEWAY_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (GATEWAY_PORT, default 8080)")
    serve.add_argument(
        "--dev", action="store_true", help="dev mode: demo page and publishing endpoints (never in production)"
    )
    serve.set_defaults(func=_cmd_serve)

    def kafka_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (GATEWAY_KAFKA_BOOTSTRAP_SERVERS)")
        sub.add_argument("--topic", help="session-status topic (GATEWAY_KAFKA_TOPIC)")

    publish = commands.add_parser(
        "publish",
        help="write a session-status record to Kafka",
        description="Write one session-status record to Kafka.",
    )
    publish.add_argument("session_id", metavar="SESSION_ID")
    publish.add_argument(
        "status", metavar="STATUS", choices=[s.value for s in SessionStatus], help="one of %(choices)s"
    )
    publish.add_argument("--tenant", required=True, help="tenant that owns the session")
    publish.add_argument("--type", choices=[t.value for t in SessionType], help="issuance or presentation")
    kafka_options(publish)
    publish.set_defaults(func=_cmd_publish)

    create = commands.add_parser(
        "create-topic",
        help="create the compacted session-status topic",
        description="Create the session-status topic (compacted).",
    )
    create.add_argument("--partitions", type=int, default=6)
    create.add_argument("--replication-factor", type=int, default=1)
    kafka_options(create)
    create.set_defaults(func=_cmd_create_topic)

    watch = commands.add_parser(
        "watch",
        help="print a session's transitions from a gateway",
        description="Terminal SSE client: prints each transition and exits on a terminal status.",
    )
    watch.add_argument("session_id", metavar="SESSION_ID")
    watch.add_argument("--token", required=True, help="JWT for the session's tenant")
    watch.add_argument("--url", default="http://127.0.0.1:8080", help="gateway base URL (default %(default)s)")
    watch.add_argument("--last-event-id", help="resume after this event id")
    watch.set_defaults(func=_cmd_watch)

    issuer = commands.add_parser(
        "dev-issuer",
        help="local token issuer for development ONLY",
        description="Serves a JWKS and mints tokens for any tenant. Development only: binds loopback addresses only.",
    )
    issuer.add_argument("--host", default="127.0.0.1")
    issuer.add_argument("--port", type=int, default=8090)
    issuer.add_argument("--audience", help="aud claim of minted tokens")
    issuer.set_defaults(func=_cmd_dev_issuer)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("publish", "create-topic"):
        # The one error line below says it all; aiokafka's own retry chatter would bury it.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        code: int = args.func(args)
    except UserError as error:
        print(f"session-gateway: error: {error}", file=sys.stderr)
        return 1
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in error.errors())
        print(f"session-gateway: error: invalid setting: {problems}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code
