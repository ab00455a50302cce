"""DEVELOPMENT ONLY: what ``serve --dev`` adds: the demo page (``demo``, assets in ``static/``), the session
API that publishes without authentication (``sessions``, ``publisher``), all behind a loopback-only guard
(``loopback``) and mounted as one router (``routes``); and a local token issuer (``issuer``). See docs/security.md.
"""
