"""The one open SSE stream (``stream``) and its wire format (``sse``)."""
