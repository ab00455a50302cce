"""``python -m gateway``: same as the ``session-gateway`` command."""

from gateway.cli import main

raise SystemExit(main())
