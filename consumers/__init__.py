"""Kafka ingestion: consumer, in-memory session store, fan-out hub. Never imports ``gateway``."""
