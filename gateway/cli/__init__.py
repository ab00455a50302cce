"""``session-gateway``: the command line (``main``), start-up checks (``diagnostics``), and the
integrator's tools (``publish``, ``watch``, ``topic``, ``configuration_reference``).
"""

from gateway.cli.main import UserError, build_parser, main

__all__ = ["UserError", "build_parser", "main"]
