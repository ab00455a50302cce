"""Kafka ingestion, never importing ``gateway``: the consumer (``consumer``, its parts in ``consuming/``),
record formats (``records``, ``formats/``), the in-memory session store (``store``), the fan-out hub
(``hub``), dead letters, replay progress, task supervision, and the seam into aiokafka (``aiokafka_seam/``).
"""
