"""``session-gateway``: serve, publish, watch, dev-issuer, dev-token, create-topic.

User mistakes end with one readable line on stderr and a non-zero exit, never a traceback:
unknown ``GATEWAY_*`` variables, invalid setting values and ports in use are checked before
anything starts (``gateway.cli.diagnostics``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, TypeVar

from pydantic import ValidationError

from consumers.settings import ConsumerSettings
from gateway.cli.diagnostics import (
    UserError,
    allow_unknown_settings,
    describe_settings_error,
    settings_problems,
    unknown_variables,
)
from schemas import SessionStatus, SessionType

if TYPE_CHECKING:
    from gateway.dev.issuer import BackgroundIssuer
    from gateway.settings import GatewaySettings

T = TypeVar("T")

__all__ = ["UserError", "build_parser", "main"]

_PROG = "session-gateway"


class SettingsRejected(Exception):
    """Start-up checks failed; the lines were printed already."""


def _say(kind: str, line: str) -> None:
    print(f"{_PROG}: {kind}: {line}", file=sys.stderr, flush=True)


def _check_environment(*, strict: bool) -> None:
    """Reports unknown GATEWAY_* variables (errors when ``strict``, unless allowed) and every invalid value."""
    unknown = unknown_variables()
    fatal = strict and not allow_unknown_settings()
    for line in unknown:
        if fatal:
            _say("error", f"{line} (serve refuses unknown settings; GATEWAY_ALLOW_UNKNOWN_SETTINGS=true only warns)")
        else:
            _say("warning", f"{line} (ignored)")
    invalid = settings_problems()
    for line in invalid:
        _say("error", f"invalid setting {line}")
    if invalid or (unknown and fatal):
        raise SettingsRejected


def _kafka_settings(args: argparse.Namespace) -> ConsumerSettings:
    overrides = {}
    if getattr(args, "bootstrap_servers", None):
        overrides["kafka_bootstrap_servers"] = args.bootstrap_servers
    if getattr(args, "topic", None):
        overrides["kafka_topic"] = args.topic
    return ConsumerSettings(**overrides)


def _cmd_serve(args: argparse.Namespace) -> int:
    from gateway.cli.diagnostics import check_gateway_ports, open_files_problem
    from gateway.runtime.server import serve
    from gateway.settings import GatewaySettings

    _check_environment(strict=True)
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
    if not (settings.jwks_url or settings.oidc_issuer):
        if not settings.dev_mode:
            raise UserError(
                "set GATEWAY_JWKS_URL or GATEWAY_OIDC_ISSUER: tokens cannot be verified without keys "
                "(for a local try-out: session-gateway serve --dev)"
            )
        check_gateway_ports(settings)
        issuer = _start_dev_issuer(settings)
        settings = settings.model_copy(
            update={"jwks_url": f"{issuer.url}/jwks.json", "jwt_issuer": issuer.url, "dev_issuer_url": issuer.url}
        )
    check_gateway_ports(settings)
    problem = open_files_problem(settings.max_sockets)
    if problem:
        _say("warning", problem)
    try:
        serve(settings, ConsumerSettings())
    finally:
        if issuer is not None:
            issuer.stop()
    return 0


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
        f"{_PROG}: dev mode without GATEWAY_JWKS_URL/GATEWAY_OIDC_ISSUER: started a DEV token issuer on {issuer.url}",
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


def _cmd_publish(args: argparse.Namespace) -> int:
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


def _cmd_create_topic(args: argparse.Namespace) -> int:
    from gateway.cli.topic import create_topic

    settings = _kafka_settings(args)
    created = asyncio.run(_kafka_call(create_topic(settings, args.partitions, args.replication_factor), settings))
    print(f"topic {settings.primary_topic} {'created' if created else 'already exists'}")
    return 0


def _cmd_watch(args: argparse.Namespace) -> int:
    from gateway.cli.watch import watch

    return asyncio.run(watch(args.url, args.session_id, args.token, args.last_event_id))


def _cmd_dev_issuer(args: argparse.Namespace) -> int:
    from gateway.cli.diagnostics import check_port_free
    from gateway.dev.issuer import is_loopback, serve_dev_issuer

    if is_loopback(args.host):
        check_port_free(args.host, args.port, "--port")
    try:
        serve_dev_issuer(args.host, args.port, args.audience)
    except ValueError as error:
        raise UserError(str(error)) from None
    return 0


def _cmd_dev_token(args: argparse.Namespace) -> int:
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
        "--workers", type=int, help="server processes on the same ports (GATEWAY_WORKERS, default 1; see README)"
    )
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

    dev_token = commands.add_parser(
        "dev-token",
        help="print a token from the dev issuer (for watch --token)",
        description="Asks a running dev issuer (serve --dev or dev-issuer) for a token and prints it. "
        'Example: session-gateway watch SESSION_ID --token "$(session-gateway dev-token --tenant demo-tenant)"',
    )
    dev_token.add_argument("--tenant", required=True, help="tenant_id claim (the session's tenant)")
    dev_token.add_argument("--session", help="session_id claim: the token opens only this session")
    dev_token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default %(default)s)")
    dev_token.add_argument(
        "--issuer", default="http://127.0.0.1:8090", help="dev issuer base URL (default %(default)s)"
    )
    dev_token.set_defaults(func=_cmd_dev_token)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("publish", "create-topic"):
        # The one error line below says it all; aiokafka's own retry chatter would bury it.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        if args.command in ("publish", "create-topic"):
            _check_environment(strict=False)
        code: int = args.func(args)
    except UserError as error:
        _say("error", str(error))
        return 1
    except SettingsRejected:
        return 2
    except ValidationError as error:  # a command-line value the settings refuse (e.g. --port 70000)
        for line in describe_settings_error(error):
            _say("error", f"invalid setting {line}")
        return 2
    except KeyboardInterrupt:
        return 130
    return code
