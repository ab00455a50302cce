"""The ``session-gateway`` command line: subcommands, options and help texts, and nothing else.

The help texts are the command line's reference (docs/cli.md repeats them with examples); what a
command does is in ``gateway.cli.commands``.
"""

from __future__ import annotations

import argparse

from gateway.cli.commands import (
    cmd_create_topic,
    cmd_dev_issuer,
    cmd_dev_token,
    cmd_mapping_check,
    cmd_publish,
    cmd_serve,
    cmd_watch,
)
from gateway.cli.diagnostics import PROG
from schemas import SessionStatus, SessionType


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
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
    serve.set_defaults(func=cmd_serve)

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
    publish.set_defaults(func=cmd_publish)

    create = commands.add_parser(
        "create-topic",
        help="create the compacted session-status topic",
        description="Create the session-status topic (compacted).",
    )
    create.add_argument("--partitions", type=int, default=6)
    create.add_argument("--replication-factor", type=int, default=1)
    kafka_options(create)
    create.set_defaults(func=cmd_create_topic)

    watch = commands.add_parser(
        "watch",
        help="print a session's transitions from a gateway",
        description="Terminal SSE client: prints each transition and exits on a terminal status.",
    )
    watch.add_argument("session_id", metavar="SESSION_ID")
    credential = watch.add_mutually_exclusive_group(required=True)
    credential.add_argument("--token", help="JWT for the session's tenant")
    credential.add_argument("--ticket", help="stream ticket for the session (POST /session/{id}/ticket)")
    watch.add_argument("--url", default="http://127.0.0.1:8080", help="gateway base URL (default %(default)s)")
    watch.add_argument("--last-event-id", help="resume after this event id")
    watch.set_defaults(func=cmd_watch)

    issuer = commands.add_parser(
        "dev-issuer",
        help="local token issuer for development ONLY",
        description="Serves a JWKS and mints tokens for any tenant. Development only: binds loopback addresses only.",
    )
    issuer.add_argument("--host", default="127.0.0.1")
    issuer.add_argument("--port", type=int, default=8090)
    issuer.add_argument("--audience", help="aud claim of minted tokens")
    issuer.set_defaults(func=cmd_dev_issuer)

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
    dev_token.set_defaults(func=cmd_dev_token)

    mapping = commands.add_parser(
        "mapping",
        help="try a record mapping on a sample record",
        description="Record mappings (GATEWAY_RECORD_MAPPING): see docs/event-bus.md.",
    )
    mapping_commands = mapping.add_subparsers(dest="mapping_command", required=True, metavar="SUBCOMMAND")
    check = mapping_commands.add_parser(
        "check",
        help="print what the gateway would store for a sample record, or why it would reject it",
        description="Runs the gateway's own decoder on one sample record (nothing is read from Kafka). Prints "
        "'stored: {...}' (exit 0), 'ignored (...)' (exit 0) or 'rejected (reason): why' (exit 1). Example: "
        'session-gateway mapping check --mapping debezium.json --key \'{"id": "wallet-42"}\' record.json',
    )
    check.add_argument("record", metavar="RECORD", help="file holding the record value ('-' reads stdin)")
    check.add_argument(
        "--mapping", help="mapping file or inline JSON (default: GATEWAY_RECORD_MAPPING, as serve reads it)"
    )
    check.add_argument("--key", help='the record key as text, e.g. wallet-42 or \'{"id": "wallet-42"}\'')
    check.add_argument("--key-file", help="file holding the record key")
    check.add_argument(
        "--header", action="append", default=[], metavar="NAME=VALUE", help="a record header (repeatable)"
    )
    check.add_argument(
        "--timestamp", type=int, help="the record's Kafka timestamp in epoch milliseconds (default: now)"
    )
    check.add_argument("--topic", help="the topic the record is on (checks the mapping's topics)")
    check.add_argument("--tombstone", action="store_true", help="the value is null (RECORD is not read)")
    check.set_defaults(func=cmd_mapping_check)
    return parser
