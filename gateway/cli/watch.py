"""``session-gateway watch``: a terminal EventSource. Prints each transition, exits on a terminal status.

Behaves like a browser's EventSource: reconnects after the server's ``retry:`` delay with
``Last-Event-ID``, stops on 204, and reports an HTTP error's message as one line.
"""

from __future__ import annotations

import asyncio
import json
import sys

import httpx

from schemas import TERMINAL_STATUSES, SessionStatus

_MAX_RECONNECTS = 20


async def watch(
    base_url: str, session_id: str, credential: str | dict[str, str], last_event_id: str | None = None
) -> int:
    """Follows one session; ``credential`` is a token, or ``{"token": ...}`` / ``{"ticket": ...}``."""
    params = {"token": credential} if isinstance(credential, str) else credential
    url = f"{base_url.rstrip('/')}/session/{session_id}/events"
    retry_s = 3.0
    failures = 0
    connected = False
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None)) as client:
        while True:
            headers = {"accept": "text/event-stream"}
            if last_event_id:
                headers["last-event-id"] = last_event_id
            try:
                async with client.stream("GET", url, params=params, headers=headers) as response:
                    if response.status_code == 204:
                        print("session already ended", file=sys.stderr)
                        return 0
                    if response.status_code != 200:
                        body = await response.aread()
                        print(f"session-gateway: error: HTTP {response.status_code}: {_message(body)}", file=sys.stderr)
                        return 1
                    failures = 0
                    connected = True
                    event: dict[str, str] = {}
                    async for line in response.aiter_lines():
                        if line == "":
                            if "data" in event:
                                last_event_id = event.get("id", last_event_id)
                                if _print(event["data"]):
                                    return 0
                            event = {}
                        elif line.startswith(":"):
                            continue
                        else:
                            field, _, value = line.partition(":")
                            value = value.removeprefix(" ")
                            if field == "retry" and value.isdigit():
                                retry_s = int(value) / 1000
                            elif field in ("id", "event", "data"):
                                event[field] = value
            except httpx.HTTPError as error:
                failures += 1
                if not connected or failures > _MAX_RECONNECTS:
                    print(f"session-gateway: error: cannot reach {base_url}: {error}", file=sys.stderr)
                    return 1
                print(f"(connection lost: {error}; reconnecting in {retry_s:.1f}s)", file=sys.stderr)
                await asyncio.sleep(retry_s)
                continue
            print(f"(stream ended; reconnecting in {retry_s:.1f}s)", file=sys.stderr)
            await asyncio.sleep(retry_s)


def _print(data: str) -> bool:
    """Prints one transition; True when it was terminal."""
    try:
        payload = json.loads(data)
        status = SessionStatus(payload["status"])
    except (ValueError, KeyError, TypeError):
        print(data, flush=True)
        return False
    print(f"{payload.get('updatedAt', '')}  {payload.get('id', '')}  {status.value}", flush=True)
    return status in TERMINAL_STATUSES


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body)["message"])
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace")[:200]
