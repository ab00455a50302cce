"""Checks of code that depends on other libraries' internals: an untested version falls back and says why."""

from __future__ import annotations

import logging

import httptools
import pytest
import uvicorn

from gateway.server import choose_engine
from gateway.settings import GatewaySettings
from gateway.uvicorn_edge import TESTED_UVICORN, check_engine


def test_the_installed_versions_are_the_tested_ones() -> None:
    assert check_engine() is None, check_engine()
    assert uvicorn.__version__.startswith(TESTED_UVICORN)


def test_an_untested_uvicorn_falls_back_to_the_portable_engine(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(uvicorn, "__version__", "0.99.0")
    problem = check_engine()
    assert problem is not None and "0.99.0" in problem
    with caplog.at_level(logging.WARNING, logger="gateway.server"):
        assert choose_engine(GatewaySettings()) == "asgi"
    assert "portable ASGI path" in caplog.text and "0.99.0" in caplog.text


def test_an_untested_parser_falls_back_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httptools, "__version__", "1.0.0")
    assert choose_engine(GatewaySettings()) == "asgi"


def test_the_portable_engine_can_be_chosen() -> None:
    assert choose_engine(GatewaySettings(http_engine="asgi")) == "asgi"
    assert choose_engine(GatewaySettings()) == "native"


async def test_kafka_metadata_refresh_falls_back_on_an_untested_aiokafka(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import aiokafka

    from consumers import aiokafka_seam

    assert aiokafka_seam.check() is None, "the installed aiokafka is the tested one"
    monkeypatch.setattr(aiokafka, "__version__", "0.99.0")
    monkeypatch.setattr(aiokafka_seam, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="gateway.consumer"):
        assert await aiokafka_seam.refresh_topics(object(), ["t"]) is False
        assert await aiokafka_seam.refresh_topics(object(), ["t"]) is False
    assert caplog.text.count("cannot refresh Kafka metadata on demand") == 1
    assert "0.99.0" in caplog.text
