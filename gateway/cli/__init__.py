"""``session-gateway``: the entry point (``main``), its options (``parser``) and commands (``commands``),
start-up checks (``diagnostics``), and the integrator's tools (``publish``, ``watch``, ``topic``,
``configuration_reference``). See docs/cli.md.
"""

from gateway.cli.diagnostics import UserError
from gateway.cli.main import main
from gateway.cli.parser import build_parser

__all__ = ["UserError", "build_parser", "main"]
