"""``python -m schemas``: writes the JSON Schema generated from the pydantic models."""

import json
from pathlib import Path

from schemas.session_status import json_schema

SCHEMA_PATH = Path(__file__).with_name("session-status.schema.json")


def render() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    SCHEMA_PATH.write_text(render(), encoding="utf-8")
    print(f"wrote {SCHEMA_PATH}")
