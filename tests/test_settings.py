"""Every setting is documented in docs/configuration.md with its default, and dangerous ones are refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from consumers.durations import DURATION_FIELDS
from consumers.settings import ConsumerSettings
from gateway.cli import configuration_reference
from gateway.cli.diagnostics import (
    SETTINGS_CLASSES,
    known_variables,
    open_files_problem,
    settings_problems,
    unknown_variables,
)
from gateway.settings import AdmissionSettings, AuthSettings, GatewaySettings, ProcessSettings

CONFIGURATION_DOC = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()


@pytest.mark.parametrize("settings_class", SETTINGS_CLASSES, ids=lambda cls: cls.__name__)
def test_every_setting_is_in_the_configuration_reference(settings_class: type[object]) -> None:
    fields = settings_class.model_fields  # type: ignore[attr-defined]
    documented = set(re.findall(r"^\| `(GATEWAY_[A-Z0-9_]+)` \|", CONFIGURATION_DOC, re.MULTILINE))
    missing = {f"GATEWAY_{name.upper()}" for name in fields} - documented
    assert not missing, f"undocumented settings: {sorted(missing)}"


def test_configuration_reference_documents_no_setting_that_does_not_exist() -> None:
    documented = set(re.findall(r"^\| `(GATEWAY_[A-Z0-9_]+)` \|", CONFIGURATION_DOC, re.MULTILINE))
    assert documented <= known_variables(), f"documented but unknown: {sorted(documented - known_variables())}"


def test_known_variables_are_the_fields_of_every_settings_class() -> None:
    assert {ConsumerSettings, GatewaySettings} <= set(SETTINGS_CLASSES)
    assert "GATEWAY_KAFKA_TOPIC" in known_variables()
    assert "GATEWAY_DEV_MODE" in known_variables()
    assert "GATEWAY_ALLOW_UNKNOWN_SETTINGS" in known_variables()


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("GATEWAY_DEV_MOD", "GATEWAY_DEV_MODE"),
        ("GATEWAY_KAFKA_TOPC", "GATEWAY_KAFKA_TOPIC"),
        ("GATEWAY_JWKS_ULR", "GATEWAY_JWKS_URL"),
        ("gateway_jwt_audeince", "GATEWAY_JWT_AUDIENCE"),
    ],
)
def test_unknown_variables_name_the_closest_setting(name: str, suggestion: str) -> None:
    lines = unknown_variables({name: "x", "GATEWAY_KAFKA_TOPIC": "t", "HOME": "/root"})
    assert lines == [f"unknown setting {name}: did you mean {suggestion}?"]


def test_unknown_variables_ignore_known_and_foreign_names() -> None:
    assert unknown_variables({"GATEWAY_PORT": "1", "gateway_port": "1", "KAFKA_BOOTSTRAP_SERVERS": "x"}) == []
    (line,) = unknown_variables({"GATEWAY_ZZZZZZZZZZ": "1"})
    assert "no setting has a similar name" in line
    (service_link,) = unknown_variables({"GATEWAY_SERVICE_HOST": "10.0.0.1"})
    assert "enableServiceLinks: false" in service_link


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("6h", 21600), ("30m", 1800), ("90s", 90), ("1d", 86400), ("500ms", 0.5), ("1h30m", 5400), ("42", 42),
     ("2.5", 2.5), (" 10S ", 10)],
)  # fmt: skip
def test_durations_with_units_for_every_kind_of_duration_setting(
    monkeypatch: pytest.MonkeyPatch, text: str, seconds: float
) -> None:
    for name in (
        "GATEWAY_REPLAY_WINDOW",
        "GATEWAY_KAFKA_HEALTH_INTERVAL",
        "GATEWAY_STORE_EVICTION_INTERVAL",
        "GATEWAY_DRAIN_SECONDS",
    ):
        monkeypatch.setenv(name, text)
    consumer, gateway = ConsumerSettings(), GatewaySettings()
    assert consumer.replay_window is not None and consumer.replay_window.total_seconds() == seconds
    assert consumer.kafka_health_interval == seconds
    assert consumer.store_eviction_interval == seconds
    assert gateway.drain_seconds == seconds


def test_millisecond_settings_take_units_and_plain_milliseconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_RETRY_MS", "3s")
    monkeypatch.setenv("GATEWAY_KAFKA_REQUEST_TIMEOUT_MS", "15000")
    assert GatewaySettings().retry_ms == 3000
    assert ConsumerSettings().kafka_request_timeout_ms == 15000


def test_every_float_seconds_setting_takes_units() -> None:
    seconds_fields = [
        name
        for name, info in GatewaySettings.model_fields.items()
        if info.annotation is float and name not in ("retry_jitter", "tenant_stream_opening_rate")  # not durations
    ]
    assert seconds_fields, "no float settings found"
    unregistered = [name for name in seconds_fields if name not in DURATION_FIELDS]
    assert not unregistered, f"duration settings without unit parsing: {unregistered}"


@pytest.mark.parametrize(
    ("variable", "value", "fragments"),
    [
        ("GATEWAY_REPLAY_WINDOW", "6 hours", ["GATEWAY_REPLAY_WINDOW='6 hours'", "6h", "90s"]),
        ("GATEWAY_DRAIN_SECONDS", "soon", ["GATEWAY_DRAIN_SECONDS='soon'", "30m"]),
        ("GATEWAY_PORT", "http", ["GATEWAY_PORT='http'", "valid integer", "e.g. 8080"]),
        ("GATEWAY_LOG_FORMAT", "yaml", ["GATEWAY_LOG_FORMAT='yaml'", "one of json, text"]),
        ("GATEWAY_DEV_MODE", "maybe", ["GATEWAY_DEV_MODE='maybe'", "true or false"]),
        ("GATEWAY_KAFKA_SASL_MECHANISM", "GSSAPI", ["GATEWAY_KAFKA_SASL_MECHANISM='GSSAPI'", "SCRAM-SHA-256"]),
        ("GATEWAY_KAFKA_SASL_PASSWORD", "", []),  # valid: no line at all
    ],
)
def test_setting_errors_name_the_variable_the_value_and_a_valid_example(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, fragments: list[str]
) -> None:
    monkeypatch.setenv(variable, value)
    lines = settings_problems()
    if not fragments:
        assert lines == []
        return
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Input should be a valid timedelta" not in lines[0]


def test_open_files_message_says_what_it_checks_and_what_to_do() -> None:
    assert open_files_problem(20_000, limit=20_100) is None
    assert open_files_problem(20_000, limit=-1) is None  # not POSIX
    message = open_files_problem(20_000, limit=20_000)
    assert message is not None
    for fragment in ("ulimit -n", "20000", "GATEWAY_MAX_SOCKETS=20000", "plus 100", "= 20100", "to 19900"):
        assert fragment in message, (fragment, message)


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


def test_the_configuration_reference_is_generated_from_the_settings() -> None:
    """docs/configuration.md is what ``make docs`` writes from the settings: stale, it fails here."""
    assert configuration_reference.render() == CONFIGURATION_DOC, "docs/configuration.md is stale: run `make docs`"
    assert configuration_reference.main(["--check"]) == 0


def test_every_setting_needs_a_section_and_a_description(monkeypatch: pytest.MonkeyPatch) -> None:
    groups = list(configuration_reference.GROUPS)
    process = [n for n in groups if n is ProcessSettings]
    assert process, "ProcessSettings is a documented group"
    monkeypatch.setattr(configuration_reference, "GROUPS", [g for g in groups if g is not ProcessSettings])
    with pytest.raises(configuration_reference.ReferenceError, match=r"no section \[.*'workers'.*\]"):
        configuration_reference.render()
    monkeypatch.setattr(configuration_reference, "GROUPS", [*groups, ProcessSettings])
    with pytest.raises(configuration_reference.ReferenceError, match=r"in two \[.*'workers'.*\]"):
        configuration_reference.render()
    monkeypatch.setattr(configuration_reference, "GROUPS", groups)
    monkeypatch.setattr(GatewaySettings.model_fields["workers"], "description", None)
    with pytest.raises(configuration_reference.ReferenceError, match="workers has no description"):
        configuration_reference.render()


def test_each_component_group_reads_only_its_own_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """A group is its own settings class: it reads its variables from the environment and nothing else."""
    monkeypatch.setenv("GATEWAY_JWT_AUDIENCE", "gateway")
    monkeypatch.setenv("GATEWAY_MAX_CONNECTIONS", "12")
    auth = AuthSettings()
    assert auth.jwt_audience == "gateway"
    assert not hasattr(auth, "max_connections")
    assert AdmissionSettings().max_connections == 12
    whole = GatewaySettings()
    assert isinstance(whole, AuthSettings) and isinstance(whole, AdmissionSettings)
    assert (whole.jwt_audience, whole.max_connections) == ("gateway", 12)
    names = [name for group in configuration_reference.GROUPS for name in group.model_fields]
    assert len(names) == len(set(names)), "a setting belongs to one group"
