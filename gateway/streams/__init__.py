"""The one open SSE stream (``stream``: delivery, heartbeats, the slow-client cut, its channel interface) and
its wire format (``sse``: event ids, frames). Opened by the HTTP edge, counted by ``gateway.admission``.
"""
