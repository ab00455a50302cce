"""docs/configuration.md, generated from the settings: their descriptions, defaults and sections.

The settings classes are the one source of every setting's default and meaning; ``make docs`` (this
module) writes the reference and a test fails when the committed file is stale.
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo

from consumers.settings import GROUPS as CONSUMER_GROUPS
from consumers.settings import SettingsGroup
from gateway.cli.diagnostics import SETTINGS_CLASSES, StartupSettings
from gateway.settings import GROUPS as GATEWAY_GROUPS

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
PREFIX = "GATEWAY_"

PREAMBLE = """# Configuration

The reference of every setting: each `GATEWAY_*` variable with its default and meaning (one table
row per setting). Generated from the settings classes (`gateway/settings/`, `consumers/settings.py`; one
section per class) by `make docs`; edit those, not this file.

Every setting comes from an environment variable with the prefix `GATEWAY_` (pydantic-settings).
Durations take a unit: `500ms`, `90s`, `30m`, `6h`, `1d` (or combined, `1h30m`); a plain number
keeps the unit of the table (seconds, or milliseconds for `_MS` settings); the `timedelta` settings
(`GATEWAY_REPLAY_WINDOW`, `GATEWAY_TERMINAL_RETENTION`, `GATEWAY_SESSION_TTL`) also take ISO 8601
(`PT6H`). Lists are comma-separated. Unknown `GATEWAY_*` variables stop `serve` (see [Start-up
checks](cli.md#start-up-checks)).
"""

# One section per concern, in this order; groups with the same title share a section.
GROUPS: list[type[SettingsGroup]] = [*CONSUMER_GROUPS, *GATEWAY_GROUPS, StartupSettings]


class ReferenceError(ValueError):
    """A setting is in no group, in two, or has no description."""


def shown_default(field: FieldInfo) -> str:
    """The default as the reference shows it: the field's own ``shown`` text, else derived from the value."""
    extra = field.json_schema_extra
    if isinstance(extra, dict) and isinstance(extra.get("shown"), str):
        return str(extra["shown"])
    if field.default_factory is not None:
        raise ReferenceError("a default from a factory needs a 'shown' text")
    return _show(field.default)


def _show(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, str | list | tuple) and not value:
        return "empty"
    if isinstance(value, list | tuple):
        return "`" + ",".join(map(str, value)) + "`"
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
        return f"`{int(seconds) if seconds == int(seconds) else seconds}`"
    if isinstance(value, float) and value == int(value):
        return f"`{int(value)}`"
    return f"`{value}`"


def sections() -> dict[str, list[str]]:
    """Section title -> the fields of the groups with that title, in the order of ``GROUPS``."""
    result: dict[str, list[str]] = {}
    for group in GROUPS:
        result.setdefault(group.section, []).extend(group.model_fields)
    return result


def render() -> str:
    fields: dict[str, FieldInfo] = {}
    for settings in SETTINGS_CLASSES:
        fields.update(settings.model_fields)
    by_section = sections()
    listed = [name for names in by_section.values() for name in names]
    if sorted(listed) != sorted(fields):
        missing, unknown = sorted(set(fields) - set(listed)), sorted(set(listed) - set(fields))
        twice = sorted({name for name in listed if listed.count(name) > 1})
        raise ReferenceError(f"settings in no section {missing}, in two {twice}, unknown {unknown}")
    lines = [PREAMBLE]
    for title, names in by_section.items():
        lines += [f"## {title}", "", "| variable | default | meaning |", "|---|---|---|"]
        for name in names:
            field = fields[name]
            if not field.description:
                raise ReferenceError(f"{name} has no description")
            lines.append(f"| `{PREFIX}{name.upper()}` | {shown_default(field)} | {field.description} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Writes docs/configuration.md from the settings.")
    parser.add_argument("--check", action="store_true", help="exit 1 when the committed file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if DOCUMENT.read_text(encoding="utf-8") != text:
            print(f"{DOCUMENT} is stale: run `make docs`", file=sys.stderr)
            return 1
        return 0
    DOCUMENT.write_text(text, encoding="utf-8")
    print(f"wrote {DOCUMENT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
