"""Start-up checks that turn a newcomer's mistake into one readable line, and how a command says it.

A misspelt setting silently keeps its default (a misspelt ``GATEWAY_JWT_AUDIENCE`` would disable the
audience check), and a traceback hides the one thing to change; so unknown ``GATEWAY_*`` variables,
invalid values, ports in use and a low open-files limit are each one line naming the variable or flag
(docs/cli.md, "Start-up checks"). ``SETTINGS_CLASSES`` is the one list of settings classes: a field of
a class listed there is a known variable and appears in docs/configuration.md (``configuration_reference``).
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import os
import re
import socket
import sys
import typing
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings

from consumers.durations import DURATION_FIELDS, EXAMPLES, EXAMPLES_MS
from consumers.settings import ConsumerSettings, SettingsGroup
from gateway.settings import EdgeSettings, GatewaySettings

PROG = "session-gateway"
PREFIX = "GATEWAY_"
OPEN_FILES_HEADROOM = 100  # the process's own files and sockets besides the streams: Kafka, JWKS, logs, ...


class UserError(Exception):
    """A mistake the user can fix; printed as one line."""


class SettingsRejected(Exception):
    """Start-up checks failed; the lines were printed already."""


def say(kind: str, line: str) -> None:
    """One line on stderr: ``session-gateway: error: ...`` (or ``warning``)."""
    print(f"{PROG}: {kind}: {line}", file=sys.stderr, flush=True)


class StartupSettings(SettingsGroup):
    """Settings of the start-up checks themselves (read before, and apart from, every other group)."""

    section: ClassVar[str] = "Process"

    allow_unknown_settings: bool = Field(
        False, description="`true`: unknown `GATEWAY_*` variables are a warning instead of stopping `serve`"
    )


SETTINGS_CLASSES: list[type[BaseSettings]] = [GatewaySettings, ConsumerSettings, StartupSettings]


def variable(field: str) -> str:
    return f"{PREFIX}{field.upper()}"


def known_variables() -> set[str]:
    return {variable(name) for cls in SETTINGS_CLASSES for name in cls.model_fields}


# Kubernetes injects these for a Service named "gateway" unless the pod sets enableServiceLinks: false.
_SERVICE_LINK = re.compile(r"GATEWAY_(SERVICE_HOST|SERVICE_PORT(_.*)?|PORT_\d+_(TCP|UDP|SCTP)(_.*)?)")


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """One line per ``GATEWAY_*`` variable no settings class reads, with the closest known name."""
    environ = os.environ if environ is None else environ
    known = known_variables()
    lines: list[str] = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(PREFIX) or upper in known:
            continue
        if _SERVICE_LINK.fullmatch(upper):
            lines.append(
                f"unknown setting {name}: it looks like a Kubernetes service link for a Service named "
                "'gateway'; set enableServiceLinks: false on the pod"
            )
            continue
        close = difflib.get_close_matches(upper, known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else "no setting has a similar name (see the README)"
        lines.append(f"unknown setting {name}: {hint}")
    return lines


def allow_unknown_settings() -> bool:
    """``GATEWAY_ALLOW_UNKNOWN_SETTINGS``; an invalid value counts as false (and is reported elsewhere)."""
    try:
        return StartupSettings().allow_unknown_settings
    except ValidationError:
        return False


# --------------------------------------------------------------------------------------------------
# Setting errors


def _field_info(field: str) -> Any:
    for cls in SETTINGS_CLASSES:
        if field in cls.model_fields:
            return cls.model_fields[field]
    return None


def example_value(field: str) -> str:
    """A valid value for ``field``, for error messages."""
    kind = DURATION_FIELDS.get(field)
    if kind == "seconds":
        return EXAMPLES
    if kind == "milliseconds":
        return EXAMPLES_MS
    info = _field_info(field)
    if info is None:
        return ""
    extra = info.json_schema_extra
    if isinstance(extra, dict) and isinstance(extra.get("example"), str):
        return str(extra["example"])
    annotation = info.annotation
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    literal = next((arg for arg in [annotation, *args] if typing.get_origin(arg) is Literal), None)
    if literal is not None:
        return "one of " + ", ".join(str(choice) for choice in typing.get_args(literal))
    if annotation is bool:
        return "true or false"
    default = info.get_default(call_default_factory=False)
    if isinstance(default, list):
        return ",".join(default) or "a,b (comma-separated)"
    if default is not None and not callable(default):
        return str(default).lower() if isinstance(default, bool) else str(default)
    for bound in info.metadata:
        for attribute in ("ge", "gt"):
            limit = getattr(bound, attribute, None)
            if limit is not None:
                return str(limit if attribute == "ge" else limit + 1)
    return ""


def _shown(field: str, value: object, environ: Mapping[str, str]) -> str:
    info = _field_info(field)
    if info is not None and info.repr is False:
        return "(hidden)"
    name = variable(field)
    raw = next((v for k, v in environ.items() if k.upper() == name), None)
    return repr(raw if raw is not None else value)


def describe_settings_error(error: ValidationError, environ: Mapping[str, str] | None = None) -> list[str]:
    """One line per problem: ``invalid setting GATEWAY_X='value': what is wrong (e.g. valid)``.

    A rule over several fields (a model validator: the record mapping, the dead-letter topic) has no
    field to name; its message names the variable itself, and the input (every field of the group,
    a Python dict) is not shown: ``invalid setting: record mapping GATEWAY_RECORD_MAPPING: ...``.
    """
    environ = os.environ if environ is None else environ
    lines: list[str] = []
    for problem in error.errors():
        field = str(problem["loc"][0]) if problem["loc"] else ""
        message = str(problem["msg"]).removeprefix("Value error, ")
        if not field:
            lines.append(f"invalid setting: {message}")
            continue
        example = example_value(field)
        line = f"invalid setting {variable(field)}={_shown(field, problem.get('input'), environ)}: {message}"
        if example and "use e.g." not in message:
            line += f" (e.g. {example})"
        lines.append(line)
    return lines


# --------------------------------------------------------------------------------------------------
# Ports


def check_port_free(host: str, port: int, change: str) -> None:
    """Raises UserError when ``host:port`` cannot be bound; ``change`` names the setting or flag to change."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise UserError(f"cannot bind {host}:{port}: unknown host ({error.strerror}); change {change}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise UserError(
                    f"port {port} on {host} is already in use (another gateway or dev issuer?); "
                    f"stop it or choose another port with {change}"
                ) from None
            if error.errno == errno.EACCES:
                raise UserError(
                    f"no permission to bind port {port} on {host}; choose a port above 1023 with {change}"
                ) from None
            raise UserError(f"cannot bind {host}:{port}: {error.strerror}; change {change}") from None


def check_gateway_ports(settings: EdgeSettings, *, port_flag: bool = True) -> None:
    """The public port and, when the settings have one, the internal port."""
    check_port_free(settings.host, settings.port, "--port or GATEWAY_PORT" if port_flag else "GATEWAY_PORT")
    internal_port = getattr(settings, "internal_port", None)
    if isinstance(internal_port, int):
        internal_host = getattr(settings, "internal_host", settings.host)
        check_port_free(str(internal_host), internal_port, "GATEWAY_INTERNAL_PORT")


# --------------------------------------------------------------------------------------------------
# Open files


def raise_open_files_limit() -> int:
    """Each stream is a socket: lifts the soft open-files limit to the hard one (often 1024 vs 1M)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


def open_files_problem(max_sockets: int, limit: int | None = None) -> str | None:
    """A warning line when the open-files limit cannot hold ``max_sockets`` connections plus the process's own."""
    if limit is None:
        limit = raise_open_files_limit()
    needed = max_sockets + OPEN_FILES_HEADROOM
    if limit < 0 or limit >= needed:
        return None
    return (
        f"open-files limit (ulimit -n) is {limit}, below GATEWAY_MAX_SOCKETS={max_sockets} plus "
        f"{OPEN_FILES_HEADROOM} for the process's own files = {needed}: connections beyond about "
        f"{max(0, limit - OPEN_FILES_HEADROOM)} would fail with 'Too many open files'. Raise the limit to at least "
        f"{needed} (ulimit -n, systemd LimitNOFILE, the container runtime's nofile ulimit) or lower "
        f"GATEWAY_MAX_SOCKETS to {max(1, limit - OPEN_FILES_HEADROOM)}"
    )


def settings_problems(
    classes: Sequence[type[BaseSettings]] = SETTINGS_CLASSES, environ: Mapping[str, str] | None = None
) -> list[str]:
    """Every invalid value in the environment, across ``classes`` (one line each)."""
    lines: list[str] = []
    for cls in classes:
        try:
            cls()
        except ValidationError as error:
            lines.extend(describe_settings_error(error, environ))
    return lines


def check_environment(*, strict: bool) -> None:
    """Reports unknown GATEWAY_* variables (errors when ``strict``, unless allowed) and every invalid value."""
    unknown = unknown_variables()
    fatal = strict and not allow_unknown_settings()
    for line in unknown:
        if fatal:
            say("error", f"{line} (serve refuses unknown settings; GATEWAY_ALLOW_UNKNOWN_SETTINGS=true only warns)")
        else:
            say("warning", f"{line} (ignored)")
    invalid = settings_problems()
    for line in invalid:
        say("error", line)
    if invalid or (unknown and fatal):
        raise SettingsRejected
