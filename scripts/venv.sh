#!/usr/bin/env bash
# Sourced by the other scripts: makes sure .venv exists with the project installed (extras in $1).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
EXTRAS="${1:-}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment in .venv" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >&2
fi
stamp="$VENV/.installed-$(cat "$ROOT/pyproject.toml" | sha1sum | cut -c1-12)${EXTRAS:+-$EXTRAS}"
if [ ! -f "$stamp" ]; then
  echo "[setup] installing session-events-gateway${EXTRAS:+[$EXTRAS]} into .venv" >&2
  "$VENV/bin/pip" install -q -e "$ROOT${EXTRAS:+[$EXTRAS]}" >&2
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
