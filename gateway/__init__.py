"""HTTP side: SSE endpoint, authentication, limits, health, metrics and the command line."""
