"""Every setting is documented in the README with its default, and dangerous ones are refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from consumers.settings import ConsumerSettings
from gateway.settings import GatewaySettings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


@pytest.mark.parametrize("settings_class", [ConsumerSettings, GatewaySettings])
def test_every_setting_is_in_the_readme_configuration_table(settings_class: type[object]) -> None:
    fields = settings_class.model_fields  # type: ignore[attr-defined]
    documented = set(re.findall(r"^\| `(GATEWAY_[A-Z0-9_]+)` \|", README, re.MULTILINE))
    missing = {f"GATEWAY_{name.upper()}" for name in fields} - documented
    assert not missing, f"undocumented settings: {sorted(missing)}"


def test_readme_documents_no_setting_that_does_not_exist() -> None:
    known = {f"GATEWAY_{n.upper()}" for n in (*ConsumerSettings.model_fields, *GatewaySettings.model_fields)}
    documented = set(re.findall(r"^\| `(GATEWAY_[A-Z0-9_]+)` \|", README, re.MULTILINE))
    assert documented <= known, f"documented but unknown: {sorted(documented - known)}"


@pytest.mark.parametrize("algorithms", ["HS256", "RS256,none", "none", "HS512,ES256", ""])
def test_hmac_and_none_algorithms_cannot_be_allowed(monkeypatch: pytest.MonkeyPatch, algorithms: str) -> None:
    monkeypatch.setenv("GATEWAY_JWT_ALGORITHMS", algorithms)
    with pytest.raises(ValidationError):
        GatewaySettings()


def test_lists_and_durations_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_JWT_ALGORITHMS", "ES256, EdDSA")
    monkeypatch.setenv("GATEWAY_CORS_ORIGINS", "https://a.test,https://b.test")
    monkeypatch.setenv("GATEWAY_REPLAY_WINDOW", "PT6H")
    monkeypatch.setenv("GATEWAY_TERMINAL_RETENTION", "30")
    settings = GatewaySettings()
    consumer = ConsumerSettings()
    assert settings.jwt_algorithms == ["ES256", "EdDSA"]
    assert settings.cors_origins == ["https://a.test", "https://b.test"]
    assert consumer.replay_window is not None and consumer.replay_window.total_seconds() == 6 * 3600
    assert consumer.terminal_retention.total_seconds() == 30


def test_sasl_and_tls_options_reach_the_kafka_client(tmp_path: Path) -> None:
    settings = ConsumerSettings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="gateway",
        kafka_sasl_password="secret",
    )
    options = settings.kafka_client_options()
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "gateway"
    assert options["security_protocol"] == "SASL_PLAINTEXT"
    assert "ssl_context" not in options
    assert "secret" not in repr(settings)
