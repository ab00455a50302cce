"""``session-gateway`` (and ``python -m gateway``): parses the command line and runs the command.

Exit codes: 0 done, 1 a mistake the user can fix (``UserError``: one line on stderr, never a
traceback), 2 a setting the settings refuse or an option argparse refuses, 130 interrupted.
See docs/cli.md.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pydantic import ValidationError

from gateway.cli.diagnostics import SettingsRejected, UserError, check_environment, describe_settings_error, say
from gateway.cli.parser import build_parser

__all__ = ["UserError", "build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("publish", "create-topic"):
        # The one error line below says it all; aiokafka's own retry chatter would bury it.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        if args.command in ("publish", "create-topic"):
            check_environment(strict=False)
        code: int = args.func(args)
    except UserError as error:
        say("error", str(error))
        return 1
    except SettingsRejected:
        return 2
    except ValidationError as error:  # a command-line value the settings refuse (e.g. --port 70000)
        for line in describe_settings_error(error):
            say("error", line)
        return 2
    except KeyboardInterrupt:
        return 130
    return code
