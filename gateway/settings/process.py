"""The process: workers, shutdown, logs and the event loop (docs/configuration.md)."""

from __future__ import annotations

import socket
from typing import ClassVar, Literal

from pydantic import Field

from consumers.settings import SettingsGroup


class ProcessSettings(SettingsGroup):
    """The process: its name, workers, logs and development mode."""

    section: ClassVar[str] = "Process"

    instance_id: str = Field(
        default_factory=socket.gethostname,
        description="replica name, added to every log line",
        json_schema_extra={"shown": "host name"},
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description=(
            "server processes (`serve --workers N`), each an independent replica on the same ports "
            "(`SO_REUSEPORT`): its own consumer reading every partition, its own store and limits, so memory "
            "grows by a whole replica per worker (see [Scaling](operations.md#scaling)); worker *i* logs as "
            "`<instance id>-w<i>` and only worker 0 writes dead letters"
        ),
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="`DEBUG`, `INFO`, `WARNING`, `ERROR`"
    )
    log_format: Literal["json", "text"] = Field("json", description="`json` (one object per line) or `text`")
    access_log: bool = Field(True, description="uvicorn's access log (tokens redacted)")
    request_log_lines: int = Field(
        10,
        ge=0,
        description=(
            "log lines of refused requests written in full per refusal reason and minute; the rest are "
            "counted (`gateway_request_log_lines_suppressed_total`) and summed up in one line per reason and "
            "minute"
        ),
    )
    dev_mode: bool = Field(
        False, description="demo page and unauthenticated publishing endpoints: **never in production**"
    )
    dev_issuer_url: str = Field(
        "http://127.0.0.1:8090",
        description=(
            "dev mode: where the demo obtains tokens; without `GATEWAY_JWKS_URL`/`GATEWAY_OIDC_ISSUER`, where"
            " `serve --dev` starts its own dev issuer (loopback only)"
        ),
    )
