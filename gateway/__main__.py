"""``python -m gateway``: same as the ``session-gateway`` command."""

from gateway.cli.main import main

raise SystemExit(main())
