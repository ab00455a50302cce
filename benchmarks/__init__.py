"""Benchmarks of the gateway against a baseline; run with ``python -m benchmarks`` (see README.md)."""
