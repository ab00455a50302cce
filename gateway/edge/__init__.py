"""The HTTP edge of both ports: each connection and its limits (``connection``, ``head``, ``state``), how bytes
reach the socket (``wire``), requests for the app (``request``), the stream route, CORS and error bodies,
and the one module that knows uvicorn's internals (``uvicorn_seam``). See docs/architecture.md.
"""
