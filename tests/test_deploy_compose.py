"""docker-compose.kafka.yml: valid against the Compose specification's JSON Schema, and wired as documented.

No container engine runs here, so the stack itself is not started: the file is validated against the
schema Compose files are checked with (vendored in tests/data), and its wiring is checked against the
Dockerfile, the settings, the Kafka version the other brokers use and the Keycloak realm it imports.
"""

from __future__ import annotations

import copy
import json
import os
import re
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from tests.deploy_support import COMPOSE_FILE, DATA, REPO, dockerfile_stages, unknown_settings
from tests.kafka_support import KAFKA_SCRIPT, TESTCONTAINERS_IMAGE

REALM_FILE = "deploy/keycloak/realm.json"
REALM = "session-gateway"
CLIENT = "wallet-backend"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return document


@pytest.fixture(scope="module")
def validator() -> Draft7Validator:
    schema = json.loads((DATA / "compose-spec.json").read_text())
    assert schema["$schema"].startswith("https://json-schema.org/draft-07/schema")
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def test_compose_file_is_valid_against_the_compose_specification(
    compose: dict[str, Any], validator: Draft7Validator
) -> None:
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("services", "gateway", "depends_on", "kafka", "conditon"), "service_healthy"),
        (("services", "gateway", "depends_on", "kafka", "condition"), "healthy"),
        (("services", "gateway", "read_only"), {"yes": 1}),
        (("services", "keycloak", "healthcheck", "intervall"), "10s"),
    ],
)
def test_compose_schema_rejects_mistakes(
    compose: dict[str, Any], validator: Draft7Validator, path: tuple[str, ...], value: object
) -> None:
    broken = copy.deepcopy(compose)
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert list(validator.iter_errors(broken)), f"{'.'.join(path)}={value!r} was accepted"


def test_one_apache_kafka_version_everywhere(compose: dict[str, Any]) -> None:
    images = {service["image"] for name, service in compose["services"].items() if name in ("kafka", "init-topic")}
    assert images == {TESTCONTAINERS_IMAGE}
    script_version = re.search(r'KAFKA_VERSION="\$\{KAFKA_VERSION:-([0-9.]+)\}"', KAFKA_SCRIPT.read_text())
    assert script_version is not None
    assert f"apache/kafka:{script_version.group(1)}" == TESTCONTAINERS_IMAGE


def test_topic_job_creates_the_compacted_topic(compose: dict[str, Any]) -> None:
    job = compose["services"]["init-topic"]
    assert job["depends_on"] == {"kafka": {"condition": "service_healthy"}}
    script = job["command"][0]
    assert "--create --if-not-exists --topic session-status" in script
    assert "cleanup.policy=compact" in script
    assert "kafka:19092" in script


def test_keycloak_imports_the_committed_realm(compose: dict[str, Any]) -> None:
    keycloak = compose["services"]["keycloak"]
    assert keycloak["image"].startswith("quay.io/keycloak/keycloak:")
    assert keycloak["command"] == ["start-dev", "--import-realm"]
    assert f"./{REALM_FILE}:/opt/keycloak/data/import/realm.json:ro" in keycloak["volumes"]
    assert keycloak["environment"]["KC_HEALTH_ENABLED"] == "true"
    assert "/health/ready" in " ".join(keycloak["healthcheck"]["test"])
    realm_path = REPO / REALM_FILE
    if realm_path.exists():  # committed by the end-to-end work (issue 14): check it matches what compose expects
        realm = json.loads(realm_path.read_text())
        assert realm["realm"] == REALM
        client = next(c for c in realm["clients"] if c["clientId"] == CLIENT)
        assert client.get("serviceAccountsEnabled") is True and client.get("publicClient") is not True
        mappers = client.get("protocolMappers", [])
        assert any(m.get("config", {}).get("claim.name") == "tenant_id" for m in mappers), mappers


def test_gateway_is_built_from_the_dockerfile_and_wired_to_kafka_and_keycloak(compose: dict[str, Any]) -> None:
    gateway = compose["services"]["gateway"]
    assert gateway["build"] == {"context": ".", "dockerfile": "Dockerfile"}
    assert (REPO / gateway["build"]["context"] / gateway["build"]["dockerfile"]).exists()
    assert gateway["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "init-topic": {"condition": "service_completed_successfully"},
        "keycloak": {"condition": "service_healthy"},
    }
    env = gateway["environment"]
    assert env["GATEWAY_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:19092"  # the INTERNAL listener
    assert "INTERNAL://kafka:19092" in compose["services"]["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    # The issuer the gateway discovers keys from is the one Keycloak puts in its tokens.
    hostname = compose["services"]["keycloak"]["environment"]["KC_HOSTNAME"]
    assert env["GATEWAY_OIDC_ISSUER"] == f"{hostname}/realms/{REALM}"
    assert env["GATEWAY_TENANT_CLAIM"] == "tenant_id"
    assert unknown_settings(set(env)) == set()
    # As the chart runs the image.
    assert gateway["user"] == "10001:10001"
    assert gateway["read_only"] is True
    assert gateway["tmpfs"] == ["/tmp"]
    assert gateway["cap_drop"] == ["ALL"]
    assert sorted(gateway["ports"]) == ["127.0.0.1:8080:8080", "127.0.0.1:9090:9090"]


def test_gateway_settings_accept_the_tokens_of_the_realm_it_imports(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compose gateway's settings, read by the app's own settings class, against every client of the
    realm Keycloak imports: its issuer, the audience each client adds, the tenant claim, the algorithm."""
    from gateway.settings import AuthSettings

    for name in [name for name in os.environ if name.startswith("GATEWAY_")]:
        monkeypatch.delenv(name)
    for name, value in compose["services"]["gateway"]["environment"].items():
        monkeypatch.setenv(name, str(value))
    settings = AuthSettings()
    realm = json.loads((REPO / REALM_FILE).read_text())
    hostname = compose["services"]["keycloak"]["environment"]["KC_HOSTNAME"]
    assert settings.oidc_issuer == f"{hostname}/realms/{realm['realm']}"
    assert realm["defaultSignatureAlgorithm"] in settings.jwt_algorithms
    assert settings.jwt_audience, "the compose gateway accepts tokens meant for any client of the realm"
    clients = [client for client in realm["clients"] if client.get("serviceAccountsEnabled")]
    assert clients
    for client in clients:
        mappers = client["protocolMappers"]
        audiences = {
            m["config"].get("included.custom.audience") or m["config"].get("included.client.audience")
            for m in mappers
            if m["protocolMapper"] == "oidc-audience-mapper" and m["config"].get("access.token.claim") == "true"
        }
        assert settings.jwt_audience in audiences, (client["clientId"], audiences)
        claims = {m["config"].get("claim.name") for m in mappers if m["config"].get("access.token.claim") == "true"}
        assert settings.tenant_claim in claims, (client["clientId"], claims)


def test_every_service_that_others_wait_for_has_a_healthcheck(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency}'s health"
    assert "healthcheck" in services["gateway"]


def test_gateway_healthcheck_is_the_images(compose: dict[str, Any]) -> None:
    _, stages = dockerfile_stages()
    (healthcheck,) = stages[-1].of("HEALTHCHECK")
    image_command = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert compose["services"]["gateway"]["healthcheck"]["test"] == ["CMD", *image_command]


def test_operations_doc_shows_a_token_from_keycloak_and_a_stream() -> None:
    doc = (REPO / "docs" / "operations.md").read_text()
    docker = doc[doc.index("## Docker") :]
    assert "/realms/session-gateway/protocol/openid-connect/token" in docker
    assert "grant_type=client_credentials" in docker
    assert "client_id=wallet-backend" in docker
    assert "/session/$SESSION_ID/events" in docker
