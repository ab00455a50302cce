"""What each ``session-gateway`` command does, once its arguments are parsed (``gateway.cli.parser``).

Every command that reads settings checks the environment first, and every mistake a user can fix
is a ``UserError``: one readable line and exit code 1, never a traceback (``gateway.cli.main``).
Libraries only one command needs (uvicorn, aiokafka, the dev issuer) are imported by that command,
so the others do not load them. The commands are described in docs/cli.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

from pydantic import SecretStr

from consumers.settings import ConsumerSettings
from consumers.tracing import configuration_problem
from gateway.cli.diagnostics import (
    PROG,
    UserError,
    check_environment,
    check_gateway_ports,
    check_port_free,
    open_files_problem,
    say,
)
from schemas import SessionStatus, SessionType

if TYPE_CHECKING:
    from gateway.dev.issuer import BackgroundIssuer
    from gateway.settings import GatewaySettings

T = TypeVar("T")


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.runtime.server import serve
    from gateway.settings import GatewaySettings

    check_environment(strict=True)
    tracing_problem = configuration_problem()
    if tracing_problem:
        raise UserError(tracing_problem)
    overrides: dict[str, object] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.dev:
        overrides["dev_mode"] = True
    if args.workers is not None:
        overrides["workers"] = args.workers
    settings = GatewaySettings(**overrides)  # type: ignore[arg-type]
    _check_dev_mode_host(settings)
    issuer = None
    if not settings.keys_configured:
        if not settings.dev_mode:
            raise UserError(
                "set GATEWAY_JWKS_URL, GATEWAY_OIDC_ISSUER or GATEWAY_JWT_ISSUERS: tokens cannot be verified "
                "without keys "
                "(for a local try-out: session-gateway serve --dev)"
            )
        check_gateway_ports(settings)
        issuer = _start_dev_issuer(settings)
        settings = settings.model_copy(
            update={"jwks_url": f"{issuer.url}/jwks.json", "jwt_issuer": issuer.url, "dev_issuer_url": issuer.url}
        )
    if settings.dev_mode and not settings.ticket_keys:
        settings = settings.model_copy(update={"ticket_keys": [_dev_ticket_key()]})
        say("note", "dev mode: stream tickets are on with a key generated for this run (GATEWAY_TICKET_KEYS unset)")
    check_gateway_ports(settings)
    problem = open_files_problem(settings.max_sockets)
    if problem:
        say("warning", problem)
    try:
        serve(settings, ConsumerSettings())
    finally:
        if issuer is not None:
            issuer.stop()
    return 0


def _dev_ticket_key() -> SecretStr:
    """A ticket key for one dev-mode run: ``dev:<32 random bytes, base64url>``."""
    import secrets

    return SecretStr(f"dev:{secrets.token_urlsafe(32)}")


def _check_dev_mode_host(settings: GatewaySettings) -> None:
    """Dev mode publishes without authentication and hands out tokens for any tenant: loopback hosts only."""
    from gateway.dev.issuer import is_loopback

    if settings.dev_mode and not is_loopback(settings.host):
        raise UserError(
            f"dev mode (--dev or GATEWAY_DEV_MODE=true) runs only on a loopback address, not on host "
            f"{settings.host!r} (--host or GATEWAY_HOST): it lets anyone who reaches it publish statuses and get "
            "tokens for any tenant; use 127.0.0.1 (and an SSH tunnel or a port-forward), or turn dev mode off"
        )


def _start_dev_issuer(settings: GatewaySettings) -> BackgroundIssuer:
    """``serve --dev`` without keys: a loopback dev issuer in this process, and how to get a token from it."""
    from urllib.parse import urlsplit

    from gateway.dev.issuer import BANNER, is_loopback, start_background_issuer, token_help

    wanted = urlsplit(settings.dev_issuer_url)
    host = wanted.hostname or "127.0.0.1"
    if not is_loopback(host):
        raise UserError(
            f"GATEWAY_DEV_ISSUER_URL={settings.dev_issuer_url!r} is not a loopback address: set GATEWAY_JWKS_URL "
            "(with GATEWAY_JWT_ISSUER) to that issuer's keys, or unset GATEWAY_DEV_ISSUER_URL"
        )
    issuer = start_background_issuer(host, wanted.port or 8090, settings.jwt_audience)
    print(BANNER, file=sys.stderr)
    lines = [
        f"{PROG}: dev mode without GATEWAY_JWKS_URL/GATEWAY_OIDC_ISSUER: started a DEV token issuer on {issuer.url}",
        f"  demo:     http://{_url_host(settings.host)}:{settings.port}/demo",
        *token_help(issuer.url),
        "",
    ]
    print("\n".join(lines), file=sys.stderr, flush=True)
    return issuer


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def cmd_publish(args: argparse.Namespace) -> int:
    from gateway.cli.publish import StatusPublisher, build_event

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


def cmd_create_topic(args: argparse.Namespace) -> int:
    from gateway.cli.topic import create_topic

    settings = _kafka_settings(args)
    created = asyncio.run(_kafka_call(create_topic(settings, args.partitions, args.replication_factor), settings))
    print(f"topic {settings.primary_topic} {'created' if created else 'already exists'}")
    return 0


def _kafka_settings(args: argparse.Namespace) -> ConsumerSettings:
    overrides = {}
    if getattr(args, "bootstrap_servers", None):
        overrides["kafka_bootstrap_servers"] = args.bootstrap_servers
    if getattr(args, "topic", None):
        overrides["kafka_topic"] = args.topic
    return ConsumerSettings(**overrides)


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


def cmd_mapping_check(args: argparse.Namespace) -> int:
    from gateway.cli.mapping_check import run_check

    return run_check(
        args.mapping,
        args.record,
        topic=args.topic,
        key=args.key,
        key_file=args.key_file,
        headers=args.header,
        timestamp=args.timestamp,
        tombstone=args.tombstone,
    )


def cmd_watch(args: argparse.Namespace) -> int:
    from gateway.cli.watch import watch

    credential = {"ticket": args.ticket} if args.ticket else {"token": args.token}
    return asyncio.run(watch(args.url, args.session_id, credential, args.last_event_id))


def cmd_dev_issuer(args: argparse.Namespace) -> int:
    from gateway.dev.issuer import is_loopback, serve_dev_issuer

    if is_loopback(args.host):
        check_port_free(args.host, args.port, "--port")
    try:
        serve_dev_issuer(args.host, args.port, args.audience)
    except ValueError as error:
        raise UserError(str(error)) from None
    return 0


def cmd_dev_token(args: argparse.Namespace) -> int:
    import httpx

    params = {"tenant": args.tenant, "ttl": str(args.ttl)}
    if args.session:
        params["session"] = args.session
    url = f"{args.issuer.rstrip('/')}/token"
    try:
        response = httpx.post(url, params=params, timeout=5.0)
        response.raise_for_status()
        token = response.json()["access_token"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as error:
        raise UserError(
            f"the dev issuer at {args.issuer} did not mint a token ({type(error).__name__}: {error}); "
            "start one with `session-gateway serve --dev` or `session-gateway dev-issuer`, or pass --issuer"
        ) from None
    print(token)
    return 0
