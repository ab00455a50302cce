"""DEVELOPMENT ONLY: the demo page and its routes (``routes``, assets in ``static/``) and a local token
issuer (``issuer``). Never enabled in production: see docs/security.md.
"""
