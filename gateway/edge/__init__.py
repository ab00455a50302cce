"""The HTTP edge: request heads under limits, keep-alive, routing, CORS, error answers, and the one
module that knows uvicorn's internals (``connection``). See docs/architecture.md.
"""
