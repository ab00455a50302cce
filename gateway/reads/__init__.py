"""Reads that are not a stream: a session's status on request (``status``), its validator (``etag``) and its
OpenAPI description (``openapi``). Served natively by the edge (``gateway.edge.connection``); see
docs/http-api.md (Status reads).
"""
