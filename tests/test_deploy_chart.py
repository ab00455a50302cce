"""The Helm chart, checked with the real helm (built from its Go module, pinned) and the Kubernetes schemas.

Every example in ``helm/session-events-gateway/ci/`` must lint strictly, render for several Kubernetes
versions and validate against those versions' strict schemas (plus the ServiceMonitor, PrometheusRule
and HTTPRoute CRDs); bad values must be refused at ``helm template`` time with a clear message.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from gateway.settings import GatewaySettings
from tests.deploy_support import (
    CHART,
    CI_VALUES,
    KUBE_VERSIONS,
    KubeValidator,
    existing_settings,
    helm_template,
    render,
    run,
    tool,
    unknown_settings,
)

pytestmark = pytest.mark.timeout(1800)  # the first test may build helm from source (a few minutes)

DEFAULT_VALUES = CHART / "ci" / "default-values.yaml"
FULL_VALUES = CHART / "ci" / "full-values.yaml"


@pytest.fixture(scope="module")
def helm(pytestconfig: pytest.Config) -> Path:
    return tool("helm", pytestconfig)


@pytest.fixture(scope="module")
def k8s_schemas(pytestconfig: pytest.Config) -> Path:
    return tool("k8s-schemas", pytestconfig)


def test_ci_examples_exist() -> None:
    names = [path.name for path in CI_VALUES]
    assert {"default-values.yaml", "full-values.yaml"} <= set(names), names
    assert len(names) >= 3


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_helm_lint_strict(helm: Path, values: Path) -> None:
    completed = run([helm, "lint", "--strict", CHART, "--values", values])
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "0 chart(s) failed" in completed.stdout


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_every_example_renders_and_validates(helm: Path, k8s_schemas: Path, values: Path, kube_version: str) -> None:
    rendered = render(helm, values, kube_version=kube_version)
    validator = KubeValidator(k8s_schemas, kube_version)
    errors = [error for document in rendered.documents for error in validator.errors(document)]
    assert errors == []
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount", "PodDisruptionBudget"} <= set(rendered.kinds())


def test_schema_validation_catches_invalid_manifests(k8s_schemas: Path) -> None:
    """The validator is not a rubber stamp: a typo and a wrong type in a Deployment are reported."""
    validator = KubeValidator(k8s_schemas, KUBE_VERSIONS[0])
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "replicas": "two",
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "i", "imagePullPolicy": "IfNotPresent", "portz": []}]},
            },
        },
    }
    errors = "\n".join(validator.errors(deployment))
    assert "replicas" in errors
    assert "portz" in errors
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "x"},
        "spec": {"endpoints": [{"port": 9090}], "selector": {}},
    }
    assert any("endpoints.0.port" in error for error in validator.errors(monitor))


def test_full_example_renders_every_optional_resource(helm: Path) -> None:
    rendered = render(helm, FULL_VALUES)
    expected = {"Ingress", "HTTPRoute", "ServiceMonitor", "PrometheusRule", "HorizontalPodAutoscaler", "NetworkPolicy"}
    assert expected <= set(rendered.kinds())


# --- ports, probes, routing ---------------------------------------------------------------------------


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_probes_and_metrics_use_the_internal_port_and_public_routes_only_the_streams(helm: Path, values: Path) -> None:
    rendered = render(helm, values)
    container = rendered.gateway_container()
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": 8080, "internal": 9090}
    config = rendered.one("ConfigMap")["data"]
    assert config["GATEWAY_INTERNAL_PORT"] == "9090"
    assert config["GATEWAY_INTERNAL_HOST"] == "0.0.0.0"
    assert container["args"] == ["--host", "0.0.0.0", "--port", "8080"]  # after the entrypoint `... serve`
    probes = {name: container[name]["httpGet"] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes == {
        "startupProbe": {"path": "/readyz", "port": "internal"},
        "livenessProbe": {"path": "/livez", "port": "internal"},
        "readinessProbe": {"path": "/readyz", "port": "internal"},
    }

    public = rendered.one("Service", "-gateway")
    assert [(p["name"], p["targetPort"]) for p in public["spec"]["ports"]] == [("http", "http")]
    internal = rendered.one("Service", "-internal")
    assert [(p["name"], p["targetPort"]) for p in internal["spec"]["ports"]] == [("internal", "internal")]
    assert internal["metadata"]["labels"]["session-events-gateway/port"] == "internal"
    assert "session-events-gateway/port" not in public["metadata"]["labels"]

    for ingress in rendered.all("Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["path"] == "/session", path
                assert path["backend"]["service"] == {"name": public["metadata"]["name"], "port": {"name": "http"}}
        annotations = ingress["metadata"].get("annotations", {})
        assert not any("rewrite" in key for key in annotations), annotations
    for route in rendered.all("HTTPRoute"):
        for rule in route["spec"]["rules"]:
            assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/session"}}]
            assert [ref["name"] for ref in rule["backendRefs"]] == [public["metadata"]["name"]]
    for monitor in rendered.all("ServiceMonitor"):
        assert [endpoint["port"] for endpoint in monitor["spec"]["endpoints"]] == ["internal"]
        assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
        assert monitor["spec"]["selector"]["matchLabels"]["session-events-gateway/port"] == "internal"
    for test_pod in rendered.all("Pod"):
        url = test_pod["spec"]["containers"][0]["command"][-1]
        assert url == f"http://{public['metadata']['name']}:80/livez"


def test_network_policy_separates_public_and_internal_peers(helm: Path) -> None:
    policy = render(helm, FULL_VALUES).one("NetworkPolicy")
    rules = {rule["ports"][0]["port"]: rule["from"] for rule in policy["spec"]["ingress"]}
    assert rules["http"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]
    assert rules["internal"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]


@pytest.mark.parametrize(("kube_version", "native"), [("1.27.0", False), ("1.30.0", True)])
def test_prestop_hook_matches_the_cluster_version(helm: Path, kube_version: str, native: bool) -> None:
    lifecycle = render(helm, DEFAULT_VALUES, kube_version=kube_version).gateway_container()["lifecycle"]
    if native:
        assert lifecycle["preStop"] == {"sleep": {"seconds": 5}}
    else:
        # Needs a `sleep` binary in the image: the Dockerfile's slim Debian base has coreutils.
        assert lifecycle["preStop"] == {"exec": {"command": ["sleep", "5"]}}


# --- autoscaling -----------------------------------------------------------------------------------


def test_autoscaling_on_open_streams_per_pod_with_cpu_fallback(helm: Path) -> None:
    hpa = render(helm, FULL_VALUES).one("HorizontalPodAutoscaler")
    metrics = hpa["spec"]["metrics"]
    target = {"type": "AverageValue", "averageValue": "5000"}
    open_streams = {"metric": {"name": "gateway_open_streams"}, "target": target}
    assert metrics[0] == {"type": "Pods", "pods": open_streams}
    cpu = {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 75}}
    assert {"type": "Resource", "resource": cpu} in metrics
    assert not any(m.get("resource", {}).get("name") == "memory" for m in metrics)


def test_chart_readme_documents_the_adapter_rule_for_the_hpa_metric() -> None:
    readme = (CHART / "README.md").read_text()
    assert 'seriesQuery: \'gateway_open_streams{namespace!="",pod!=""}\'' in readme
    assert "targetOpenStreamsPerPod" in readme


# --- required and bad values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("assignments", "message"),
    [
        ((), "kafka.bootstrapServers is required"),
        (("kafka.bootstrapServers=kafka:9092",), "auth.jwksUrl or auth.oidcIssuer is required"),
    ],
)
def test_required_values_fail_at_render_time(helm: Path, assignments: tuple[str, ...], message: str) -> None:
    completed = helm_template(helm, set_values=assignments)
    assert completed.returncode != 0
    assert message in completed.stderr, completed.stderr


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("autoscaling.targetMemoryUtilizationPercentage=80", "targetMemoryUtilizationPercentage"),
        ("kafka.bootstrapServers=kafka", "bootstrapServers"),
        ("kafka.securityProtocol=TLS", "securityProtocol"),
        ("auth.jwksUrl=ftp://idp/jwks", "jwksUrl"),
        ("internalPort=70000", "internalPort"),
        ("workers=0", "workers"),
        ("health.readinessStrict=maybe", "readinessStrict"),
        ("prometheusRule.brokerUnreachableFor=five", "brokerUnreachableFor"),
        ("prometheusRule.streamRefusalRatio=5", "streamRefusalRatio"),
        ("autoscaling.targetOpenStreamsPerPod=0", "targetOpenStreamsPerPod"),
        ("serviceMonitor.enable=true", "enable"),
        ("logLevel=TRACE", "logLevel"),
    ],
)
def test_values_schema_rejects_bad_values(helm: Path, assignment: str, message: str) -> None:
    completed = helm_template(helm, DEFAULT_VALUES, set_values=(assignment,))
    assert completed.returncode != 0, f"{assignment} was accepted"
    assert "values don't meet the specifications of the schema" in completed.stderr, completed.stderr
    assert message in completed.stderr, completed.stderr


@pytest.mark.parametrize(
    ("assignments", "message"),
    [
        (("internalPort=8080",), "internalPort and containerPort must differ"),
        (("serviceMonitor.enabled=true", "internalService.enabled=false"), "needs internalService.enabled"),
        (("extraEnv[0].name=GATEWAY_DEV_MODE", "extraEnv[0].value=true"), "GATEWAY_DEV_MODE cannot be set"),
        (("kafka.securityProtocol=SASL_SSL",), "needs kafka.sasl.existingSecret"),
        (("terminationGracePeriodSeconds=20",), "must exceed"),
        (("autoscaling.enabled=true", "autoscaling.targetCPUUtilizationPercentage=null"), "needs at least one"),
    ],
)
def test_templates_refuse_inconsistent_values(helm: Path, assignments: tuple[str, ...], message: str) -> None:
    completed = helm_template(helm, DEFAULT_VALUES, set_values=assignments)
    assert completed.returncode != 0
    assert message in completed.stderr, completed.stderr


# --- the chart README's install command -------------------------------------------------------------


def test_readme_install_command_renders_as_pasted(helm: Path) -> None:
    """The README's `helm upgrade --install` command, run by bash exactly as written (as `helm template`)."""
    readme = (CHART / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.DOTALL)
    command = next(
        line for block in blocks for line in block.replace("\\\n", " ").splitlines() if "helm upgrade --install" in line
    )
    assert "\\," in command
    words = shlex.split(command)
    assert words[:3] == ["helm", "upgrade", "--install"]
    script = command.replace("helm upgrade --install", f"{shlex.quote(str(helm))} template", 1)
    completed = run(["bash", "-c", script])
    assert completed.returncode == 0, completed.stderr
    assert 'GATEWAY_KAFKA_BOOTSTRAP_SERVERS: "kafka-0.kafka:9092,kafka-1.kafka:9092"' in completed.stdout


# --- settings and metric names ---------------------------------------------------------------------


def test_every_gateway_variable_the_chart_sets_is_a_setting(helm: Path) -> None:
    names: set[str] = set()
    for values in CI_VALUES:
        names |= render(helm, values).gateway_env_names()
    assert unknown_settings(names) == set()
    # The chart maps the new settings of this round; they must exist once the lead's changes are merged.
    assert {"GATEWAY_INTERNAL_HOST", "GATEWAY_INTERNAL_PORT", "GATEWAY_WORKERS"} <= names
    assert {"GATEWAY_KAFKA_BOOTSTRAP_SERVERS", "GATEWAY_JWKS_URL", "GATEWAY_OIDC_ISSUER"} <= names & existing_settings()


def test_workers_value_sets_gateway_workers(helm: Path) -> None:
    assert render(helm, DEFAULT_VALUES).one("ConfigMap")["data"]["GATEWAY_WORKERS"] == "1"
    assert render(helm, DEFAULT_VALUES, set_values=("workers=3",)).one("ConfigMap")["data"]["GATEWAY_WORKERS"] == "3"


def registered_metric_names() -> set[str]:
    """Every metric the gateway process registers (importing the app imports every module that defines one)."""
    from prometheus_client import REGISTRY

    import gateway.runtime.app  # noqa: F401

    names: set[str] = set()
    for family in REGISTRY.collect():
        names.add(family.name + ("_total" if family.type == "counter" else ""))
    return names


def test_prometheus_rule_alerts_use_real_metric_names(helm: Path) -> None:
    rule = render(helm, FULL_VALUES).one("PrometheusRule")
    rules = rule["spec"]["groups"][0]["rules"]
    alerts = {r["alert"] for r in rules}
    assert {
        "SessionGatewayNotCaughtUp",
        "SessionGatewayBrokerUnreachable",
        "SessionGatewayJwksFailing",
        "SessionGatewayStreamRefusals",
        "SessionGatewaySlowClientCuts",
        "SessionGatewayTaskRestarts",
    } <= alerts
    used = {name for r in rules for name in re.findall(r"\bgateway_[a-z_]+", r["expr"])}
    assert "gateway_store_caught_up" in used and "gateway_broker_reachable" in used
    unknown = used - registered_metric_names()
    assert unknown == set()
    for r in rules:
        assert 'service="session-gateway-session-events-gateway-internal"' in r["expr"], r["alert"]
        assert r["labels"]["team"] == "wallet"


# --- several issuers and header-only clients ----------------------------------------------------------

ISSUERS_VALUES = """
kafka:
  bootstrapServers: kafka:9092
auth:
  allowQueryTokens: false
  issuers:
    - issuer: https://idp.example.com/realms/tenant-a
      tenant: tenant-a
    - issuer: https://idp.example.com/realms/tenant-b
      jwksUrl: https://idp.example.com/realms/tenant-b/protocol/openid-connect/certs
      tenant: tenant-b
"""


def test_issuers_from_a_values_list_are_what_the_app_reads(
    helm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = tmp_path / "issuers.yaml"
    values.write_text(ISSUERS_VALUES)
    config = render(helm, values).one("ConfigMap")["data"]
    assert "GATEWAY_JWKS_URL" not in config and "GATEWAY_OIDC_ISSUER" not in config
    for name in ("GATEWAY_JWT_ISSUERS", "GATEWAY_ALLOW_QUERY_TOKENS"):
        monkeypatch.setenv(name, config[name])
    settings = GatewaySettings()
    assert [(i.issuer, i.jwks_url, i.tenant) for i in settings.jwt_issuers] == [
        ("https://idp.example.com/realms/tenant-a", None, "tenant-a"),
        (
            "https://idp.example.com/realms/tenant-b",
            "https://idp.example.com/realms/tenant-b/protocol/openid-connect/certs",
            "tenant-b",
        ),
    ]
    assert settings.allow_query_tokens is False


@pytest.mark.parametrize(
    ("assignments", "message"),
    [
        (("auth.issuers[0].issuer=https://idp/a", "auth.issuers[0].tenantId=a"), "tenantId"),
        (("auth.issuers[0].issuer=https://idp/a", "auth.issuers[0].jwksUrl=file:///etc/passwd"), "jwksUrl"),
        (("auth.issuers[0].tenant=a",), "issuer"),
        (("auth.allowQueryTokens=maybe",), "allowQueryTokens"),
    ],
)
def test_values_schema_rejects_bad_issuers(helm: Path, assignments: tuple[str, ...], message: str) -> None:
    completed = helm_template(helm, DEFAULT_VALUES, set_values=("auth.jwksUrl=", *assignments))
    assert completed.returncode != 0, f"{assignments} were accepted"
    assert "values don't meet the specifications of the schema" in completed.stderr, completed.stderr
    assert message in completed.stderr, completed.stderr


def test_issuers_and_the_one_issuer_form_are_not_mixed(helm: Path) -> None:
    completed = helm_template(helm, DEFAULT_VALUES, set_values=("auth.issuers[0].issuer=https://idp/a",))
    assert completed.returncode != 0
    assert "auth.issuers replaces auth.jwksUrl" in completed.stderr, completed.stderr
