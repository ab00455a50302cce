"""What every concern of the seam shares: the aiokafka versions tested, and one warning per fallback."""

from __future__ import annotations

import importlib
import logging
from typing import Any

import aiokafka

log = logging.getLogger("gateway.consumer")

# The aiokafka versions tested, as pinned in pyproject.toml (``aiokafka>=0.14,<0.15``).
TESTED_AIOKAFKA = ("0.14.",)
_warned: set[str] = set()  # one warning per fallback and process


def check() -> str | None:
    """None when the installed aiokafka is a tested version, else why not."""
    version = getattr(aiokafka, "__version__", "?")
    if not version.startswith(TESTED_AIOKAFKA):
        return f"aiokafka {version} is not a tested version ({', '.join(TESTED_AIOKAFKA)}x)"
    return None


def warn_once(key: str, message: str, *args: object) -> None:
    """Logs ``message`` the first time ``key`` falls back in this process."""
    if key not in _warned:
        _warned.add(key)
        log.warning(message, *args)


def import_or_none(name: str) -> Any | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None
