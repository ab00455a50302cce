"""The Helm chart, checked with the real helm (built from its Go module, pinned) and the Kubernetes schemas.

Every example in ``helm/session-events-gateway/ci/`` must lint strictly, render for several Kubernetes
versions and validate against those versions' strict schemas (plus the ServiceMonitor, PrometheusRule
and HTTPRoute CRDs); bad values must be refused at ``helm template`` time with a clear message.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.settings import GatewaySettings
from tests.deploy_support import (
    CHART,
    CI_VALUES,
    KUBE_VERSIONS,
    REPO,
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
    config = rendered.config()
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


def test_ticket_keys_come_from_a_secret_only(helm: Path) -> None:
    env = {entry["name"]: entry for entry in render(helm, FULL_VALUES).gateway_container()["env"]}
    assert env["GATEWAY_TICKET_KEYS"]["valueFrom"] == {
        "secretKeyRef": {"name": "gateway-ticket-keys", "key": "ticket-keys"}
    }
    default = render(helm, DEFAULT_VALUES)
    assert "GATEWAY_TICKET_KEYS" not in {entry["name"] for entry in default.gateway_container()["env"]}
    assert "GATEWAY_TICKET_KEYS" not in default.one("ConfigMap")["data"]


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
        if family.type == "histogram":
            names |= {f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count")}
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


# --- Grafana dashboard ------------------------------------------------------------------------------

DASHBOARD = CHART / "dashboards" / "session-events-gateway.json"


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panel_queries(board: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]


def test_dashboard_is_valid_for_grafana_schema_39() -> None:
    """The fields Grafana 10/11 (dashboard schemaVersion 39) needs to import the JSON as it is: a uid,
    unique panel ids, a 24-column grid without overlaps, a data source variable every query uses."""
    board = dashboard()
    assert board["schemaVersion"] == 39 and board["uid"] and board["title"]
    assert {"datasource", "namespace", "job"} <= {v["name"] for v in board["templating"]["list"]}
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        cells = {(grid["y"] + dy, grid["x"] + dx) for dy in range(grid["h"]) for dx in range(grid["w"])}
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
        assert panel["type"] in {"row", "timeseries", "stat"}, panel["type"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            refs = [target["refId"] for target in panel["targets"]]
            assert refs and len(refs) == len(set(refs)), panel["title"]
            assert all(target["datasource"]["uid"] == "${datasource}" for target in panel["targets"])


def test_dashboard_shows_what_an_operator_asks_first_with_real_metric_names() -> None:
    queries = panel_queries(dashboard())
    used = {name for query in queries for name in re.findall(r"\bgateway_[a-z_]+", query)}
    unknown = used - registered_metric_names()
    assert unknown == set(), unknown
    assert all('namespace=~"$namespace"' in query and 'job=~"$job"' in query for query in queries)
    for needed in (
        "gateway_open_streams",
        "gateway_streams_opened_total",
        "gateway_stream_requests_refused_total",
        "gateway_limit_refusals_total",
        "gateway_delivery_delay_seconds_bucket",
        "gateway_records_applied_total",
        "gateway_records_rejected_total",
        "gateway_consumer_lag_records",
        "gateway_jwks_last_refresh_age_seconds",
        "gateway_dlq_records_written_total",
        "gateway_task_restarts_total",
    ):
        assert needed in used, needed


def test_dashboard_configmap_carries_the_json_for_the_grafana_sidecar(helm: Path) -> None:
    assert "grafana_dashboard" not in {
        label for doc in render(helm, DEFAULT_VALUES).documents for label in doc["metadata"].get("labels", {})
    }, "off by default"
    maps = [doc for doc in render(helm, FULL_VALUES).documents if doc["kind"] == "ConfigMap"]
    board = next(doc for doc in maps if doc["metadata"]["name"].endswith("-dashboard"))
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert board["metadata"]["annotations"] == {"grafana_folder": "Wallet"}
    assert json.loads(board["data"]["session-events-gateway.json"]) == dashboard()


# --- What the chart documents is what the app does (issue 25) --------------------------------------

_DOCUMENTED_DEFAULT = re.compile(r"\((GATEWAY_[A-Z0-9_]+);\s*app default:?\s*(.+?)\)", re.DOTALL)
_BOOTSTRAP_DEFAULT = re.compile(r"\((GATEWAY_[A-Z0-9_]+)\).*?the app default, ([^,]+),", re.DOTALL)
# Words a comment uses for a setting that is off or absent by default.
_UNSET = re.compile(r"^(unset\b.*|none|off|the whole retained log)$")
_CONFIG_ENV = re.compile(r'\(list "(GATEWAY_[A-Z0-9_]+)" \$v\.([A-Za-z0-9.]+)\)')


def _comment_blocks(text: str) -> list[tuple[str, str | None]]:
    """Each ``# --`` comment of values.yaml (joined into one line) with the key it documents."""
    blocks: list[tuple[str, str | None]] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        if lines[index].lstrip().startswith("# --"):
            comment = [lines[index].lstrip()[4:].strip()]
            index += 1
            while index < len(lines) and lines[index].lstrip().startswith("#"):
                comment.append(lines[index].lstrip()[1:].strip())
                index += 1
            key = lines[index].split(":")[0].strip() if index < len(lines) else None
            blocks.append((" ".join(comment), key))
        else:
            index += 1
    return blocks


def _app_value(name: str, text: str | None, monkeypatch: pytest.MonkeyPatch) -> object:
    """The value the app's own settings classes give ``name`` (``GATEWAY_*``) from ``text``, or by default."""
    from consumers.settings import ConsumerSettings
    from gateway.settings import GatewaySettings

    field = name.removeprefix("GATEWAY_").lower()
    for variable in [variable for variable in os.environ if variable.startswith("GATEWAY_")]:
        monkeypatch.delenv(variable)
    if text is not None:
        monkeypatch.setenv(name, text)
    for settings_class in (GatewaySettings, ConsumerSettings):
        if field in settings_class.model_fields:
            return getattr(settings_class(), field)
    raise AssertionError(f"{name} is no setting")


def test_every_default_the_chart_documents_is_the_apps(monkeypatch: pytest.MonkeyPatch) -> None:
    """values.yaml (and the chart README's tables) quote app defaults, and values.yaml sets some values the app
    reads: each one, read by
    the app's settings classes, equals the app's own default (an operator must not believe a limit protects
    them when it does not)."""
    text = (CHART / "values.yaml").read_text()
    readme_rows = [line for line in (CHART / "README.md").read_text().splitlines() if line.startswith("| `")]
    documented: list[tuple[str, str]] = []
    for comment in [comment for comment, _ in _comment_blocks(text)] + readme_rows:
        documented += [(name, value.strip()) for name, value in _DOCUMENTED_DEFAULT.findall(comment)]
        documented += [(name, value.strip()) for name, value in _BOOTSTRAP_DEFAULT.findall(comment)]
    assert len(documented) >= 50, documented  # the parser still finds the comments
    wrong: list[tuple[str, str, object]] = []
    for name, text_value in documented:
        default = _app_value(name, None, monkeypatch)
        unquoted = re.split(r"[,;] ", text_value)[0].strip('"')  # "0, which means ..." is 0
        if _UNSET.match(unquoted):
            if default not in (None, [], "", 0):
                wrong.append((name, text_value, default))
        elif _app_value(name, unquoted, monkeypatch) != default:
            wrong.append((name, text_value, default))
    # Values the chart renders by default (not null, not empty) must be the app's defaults too.
    values = yaml.safe_load(text)
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    rendered = 0
    for name, path in _CONFIG_ENV.findall(helpers):
        value: object = values
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value in (None, "", [], {}):
            continue
        rendered += 1
        as_text = ",".join(map(str, value)) if isinstance(value, list) else str(value).lower()
        if _app_value(name, as_text, monkeypatch) != _app_value(name, None, monkeypatch):
            wrong.append((name, f"values.yaml {path}={value!r}", _app_value(name, None, monkeypatch)))
    assert rendered >= 4
    port = values["containerPort"]
    assert port == _app_value("GATEWAY_PORT", None, monkeypatch), "containerPort is passed as --port"
    assert wrong == [], wrong


def test_the_parser_of_documented_defaults_finds_a_wrong_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above is no rubber stamp: the two defaults issue 25 found wrong are reported."""
    for name, value in (("GATEWAY_MAX_CONNECTIONS", "20000"), ("GATEWAY_MAX_CONNECTIONS_PER_SUBJECT", "50")):
        comment = f"-- Open streams ({name}; app default {value})."
        [(found, documented)] = _DOCUMENTED_DEFAULT.findall(comment)
        assert _app_value(found, documented, monkeypatch) != _app_value(found, None, monkeypatch)


MAPPING = {
    "topics": ["wallet.session-lifecycle.v2"],
    "id": "/session/ref",
    "tenantId": "/organisation/id",
    "status": "/lifecycle/state",
    "updatedAt": "/occurredAt",
    "statusValues": {"OFFER_CREATED": "active", "DONE": "completed", "ERROR": "failed"},
}


def test_records_dead_letters_and_root_path_are_values(
    helm: Path, k8s_schemas: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record mapping (a ConfigMap of the chart, mounted), the CloudEvents types, the dead-letter topic and
    writer and the root path are values; what the chart renders is read back by the app's settings."""
    import json

    from consumers.settings import ConsumerSettings
    from gateway.settings import GatewaySettings

    values = tmp_path / "records.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "kafka": {"topic": "session-status,wallet.session-lifecycle.v2"},
                "records": {"cloudeventsTypes": ["eu.wallet.session.status"], "mapping": {"json": MAPPING}},
                "deadLetter": {"topic": "session-status.dlq", "writer": False},
                "rootPath": "/gateway",
                "store": {"evictionInterval": 2.5},
            }
        )
    )
    rendered = render(helm, DEFAULT_VALUES, values)
    validator = KubeValidator(k8s_schemas, KUBE_VERSIONS[-1])
    assert [error for document in rendered.documents for error in validator.errors(document)] == []
    config = rendered.config()
    assert config["GATEWAY_CLOUDEVENTS_TYPES"] == "eu.wallet.session.status"
    assert config["GATEWAY_DLQ_TOPIC"] == "session-status.dlq"
    assert config["GATEWAY_DLQ_WRITER"] == "false"
    assert config["GATEWAY_ROOT_PATH"] == "/gateway"
    assert config["GATEWAY_RECORD_MAPPING"] == "/etc/gateway/record-mapping/mapping.json"
    mapping_map = rendered.one("ConfigMap", "-record-mapping")
    assert json.loads(mapping_map["data"]["mapping.json"]) == MAPPING
    pod = rendered.one("Deployment")["spec"]["template"]
    assert "checksum/record-mapping" in pod["metadata"]["annotations"]
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "record-mapping")
    assert volume["configMap"]["name"] == mapping_map["metadata"]["name"]
    mount = next(m for m in rendered.gateway_container()["volumeMounts"] if m["name"] == "record-mapping")
    assert mount == {"name": "record-mapping", "mountPath": "/etc/gateway/record-mapping", "readOnly": True}

    # The app reads what the pod would see: the file where the variable points, the other variables as set.
    mounted = tmp_path / "mapping.json"
    mounted.write_text(mapping_map["data"]["mapping.json"])
    for variable in [variable for variable in os.environ if variable.startswith("GATEWAY_")]:
        monkeypatch.delenv(variable)
    for name, value in {**config, "GATEWAY_RECORD_MAPPING": str(mounted)}.items():
        monkeypatch.setenv(name, value)
    consumer, gateway = ConsumerSettings(), GatewaySettings()
    assert consumer.mapping_for("wallet.session-lifecycle.v2") is not None
    assert consumer.mapping_for("session-status") is None
    assert (consumer.dlq_topic, consumer.dlq_writer, consumer.cloudevents_types) == (
        "session-status.dlq",
        False,
        ["eu.wallet.session.status"],
    )
    assert gateway.root_path == "/gateway"
    assert consumer.store_eviction_interval == 2.5

    # An existing ConfigMap instead: its name and key, and no ConfigMap of the chart's own.
    existing = render(
        helm,
        DEFAULT_VALUES,
        set_values=("records.mapping.existingConfigMap=wallet-mapping", "records.mapping.key=v2.json"),
    )
    assert existing.config()["GATEWAY_RECORD_MAPPING"] == "/etc/gateway/record-mapping/v2.json"
    volume = next(
        v for v in existing.one("Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == "record-mapping"
    )
    assert volume["configMap"] == {"name": "wallet-mapping", "items": [{"key": "v2.json", "path": "v2.json"}]}
    # Nothing of it by default.
    default = render(helm, DEFAULT_VALUES)
    assert not {"GATEWAY_RECORD_MAPPING", "GATEWAY_DLQ_TOPIC", "GATEWAY_ROOT_PATH"} & set(
        default.one("ConfigMap")["data"]
    )
    assert not any(
        v["name"] == "record-mapping" for v in default.one("Deployment")["spec"]["template"]["spec"]["volumes"]
    )


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("deadLetter.topic=bad topic", "/deadLetter/topic"),
        ("rootPath=gateway", "/rootPath"),
        ("deadLetter.writer=maybe", "/deadLetter/writer"),
        ("store.evictionInterval=0", "/store/evictionInterval"),
        ("store.evictionInterval=soon", "/store/evictionInterval"),
    ],
)
def test_values_schema_rejects_bad_record_values(helm: Path, assignment: str, message: str) -> None:
    completed = helm_template(helm, DEFAULT_VALUES, set_values=(assignment,))
    assert completed.returncode != 0
    assert message in completed.stderr, completed.stderr


def test_every_alert_links_a_runbook_in_the_docs(helm: Path) -> None:
    from tests.test_docs import anchors

    rules = render(helm, FULL_VALUES).one("PrometheusRule")["spec"]["groups"][0]["rules"]
    base = yaml.safe_load((CHART / "values.yaml").read_text())["prometheusRule"]["runbookBaseUrl"]
    operations = REPO / "docs" / "operations.md"
    alerts = [rule for rule in rules if "alert" in rule]
    assert len(alerts) >= 8
    for rule in alerts:
        url = rule["annotations"]["runbook_url"]
        page, _, anchor = url.removeprefix(base + "/").partition("#")
        assert (page, anchor) == ("operations.md", rule["alert"].lower()), url
        assert anchor in anchors(operations), f"docs/operations.md has no heading for {rule['alert']}"
    none = render(helm, FULL_VALUES, set_values=("prometheusRule.runbookBaseUrl=",)).one("PrometheusRule")
    assert not any(
        "runbook_url" in rule["annotations"] for rule in none["spec"]["groups"][0]["rules"] if "alert" in rule
    )


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
