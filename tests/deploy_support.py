"""Helpers of the deployment tests: the CI tools, helm, Kubernetes and compose schemas, the Dockerfile.

The tools (helm, hadolint, the Kubernetes JSON schemas) are installed by ``scripts/deploy-tools.sh`` on
first use and cached under ``~/.cache/session-events-gateway/tools``; its progress is shown live even
under pytest's capture. A tool that cannot be installed fails the test that needs it, with the
script's message: nothing is skipped.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from jsonschema.validators import validator_for
from referencing import Registry, Resource

from consumers.settings import ConsumerSettings
from gateway.settings import GatewaySettings

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "session-events-gateway"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
DOCKERFILE = REPO / "Dockerfile"
COMPOSE_FILE = REPO / "docker-compose.kafka.yml"
DATA = Path(__file__).resolve().parent / "data"
TOOLS_SCRIPT = REPO / "scripts" / "deploy-tools.sh"

# Kubernetes versions every chart example is rendered for and validated against: the chart's minimum
# (1.27, `exec sleep` preStop hook), the first with the native sleep action (1.30), and the newest
# whose schemas kubernetes-validate ships.
KUBE_VERSIONS = ("1.27.0", "1.30.0", "1.37.0")


# --- tools --------------------------------------------------------------------------------------


def _install_tool(name: str, config: pytest.Config | None) -> Path:
    command = ["bash", str(TOOLS_SCRIPT), "path", name]
    capture = config.pluginmanager.getplugin("capturemanager") if config is not None else None

    def run() -> subprocess.CompletedProcess[str]:
        # stderr is inherited: the script's progress lines (downloads, builds) are the progress report.
        return subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False, timeout=1500)

    if capture is not None:
        with capture.global_and_fixture_disabled():
            completed = run()
    else:
        completed = run()
    path = Path(completed.stdout.strip().splitlines()[-1]) if completed.stdout.strip() else None
    if completed.returncode != 0 or path is None or not path.exists():
        pytest.fail(
            f"could not install {name} with scripts/deploy-tools.sh (exit {completed.returncode}); "
            "its messages are above",
            pytrace=False,
        )
    return path


@functools.cache
def _tool_cache() -> dict[str, Path]:
    return {}


def tool(name: str, config: pytest.Config | None = None) -> Path:
    """Path of ``helm``, ``hadolint`` or ``k8s-schemas``, installed and cached on first use."""
    cache = _tool_cache()
    if name not in cache:
        cache[name] = _install_tool(name, config)
    return cache[name]


def run(command: list[str | Path], *, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


# --- helm ---------------------------------------------------------------------------------------


@dataclass
class Rendered:
    documents: list[dict[str, Any]]

    def kinds(self) -> list[str]:
        return [doc["kind"] for doc in self.documents]

    def one(self, kind: str, name_suffix: str = "") -> dict[str, Any]:
        found = [d for d in self.documents if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
        assert len(found) == 1, f"expected one {kind} named *{name_suffix}, found {[d['metadata'] for d in found]}"
        return found[0]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.documents if d["kind"] == kind]

    def gateway_container(self) -> dict[str, Any]:
        containers = self.one("Deployment")["spec"]["template"]["spec"]["containers"]
        container: dict[str, Any] = next(c for c in containers if c["name"] == "gateway")
        return container

    def config(self) -> dict[str, str]:
        """The settings ConfigMap's data: the first the gateway container loads with ``envFrom`` (the chart
        may render others, e.g. the record mapping's)."""
        # The chart's own comes first; extraEnvFrom may name others (which it does not render).
        name = next(ref["configMapRef"]["name"] for ref in self.gateway_container()["envFrom"] if "configMapRef" in ref)
        data: dict[str, str] = next(d for d in self.all("ConfigMap") if d["metadata"]["name"] == name)["data"]
        return data

    def gateway_env_names(self) -> set[str]:
        """Every environment variable name the gateway container gets (ConfigMap keys + env)."""
        names = set(self.config())
        names |= {entry["name"] for entry in self.gateway_container().get("env", [])}
        return names


def helm_template(
    helm: Path,
    *values_files: Path,
    kube_version: str = KUBE_VERSIONS[-1],
    set_values: tuple[str, ...] = (),
    namespace: str = "wallet",
    release: str = "session-gateway",
) -> subprocess.CompletedProcess[str]:
    command: list[str | Path] = [helm, "template", release, CHART, "--namespace", namespace]
    command += ["--kube-version", kube_version, "--api-versions", "monitoring.coreos.com/v1"]
    command += ["--api-versions", "gateway.networking.k8s.io/v1"]
    for values in values_files:
        command += ["--values", values]
    for assignment in set_values:
        command += ["--set", assignment]
    return run(command)


def render(helm: Path, *values_files: Path, **options: Any) -> Rendered:
    completed = helm_template(helm, *values_files, **options)
    assert completed.returncode == 0, f"helm template failed:\n{completed.stderr}"
    documents = [doc for doc in yaml.safe_load_all(completed.stdout) if doc]
    return Rendered(documents)


# --- Kubernetes schemas -------------------------------------------------------------------------


@dataclass
class KubeValidator:
    """Validates manifests against the strict Kubernetes schemas of one version (offline files shipped
    by the kubernetes-validate package) and the vendored CRD schemas in tests/data/crds."""

    schemas_root: Path
    version: str
    _registry: Registry | None = None
    _validators: dict[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        major, minor, *_ = self.version.split(".")
        return self.schemas_root / f"v{major}.{minor}.0-local-strict"

    def _kube_registry(self) -> Registry:
        if self._registry is None:
            definitions = json.loads((self.folder / "_definitions.json").read_text())
            self._registry = Resource.from_contents(definitions) @ Registry()
        return self._registry

    def _validator(self, document: dict[str, Any]) -> Any:
        api_version: str = document["apiVersion"]
        kind: str = document["kind"]
        group, _, version = api_version.rpartition("/")
        key = f"{api_version}/{kind}"
        if key in self._validators:
            return self._validators[key]
        crd = DATA / "crds" / f"{group}_{kind.lower()}_{version}.json"
        if crd.exists():
            schema = json.loads(crd.read_text())
            validator = validator_for(schema)(schema)
        else:
            # kubernetes-validate's naming: the group without its domain, e.g. apps-v1, policy-v1, v1.
            short_group = group.split(".")[0]
            name = f"{kind.lower()}-{short_group}-{version}.json" if group else f"{kind.lower()}-{version}.json"
            path = self.folder / name
            assert path.exists(), f"no schema for {key} in Kubernetes {self.version} ({path}) nor in tests/data/crds"
            validator = Draft202012Validator(json.loads(path.read_text()), registry=self._kube_registry())
        self._validators[key] = validator
        return validator

    def errors(self, document: dict[str, Any]) -> list[str]:
        validator = self._validator(document)
        where = f"{document['kind']}/{document['metadata']['name']}"
        return [
            f"{where}: {'.'.join(str(p) for p in error.absolute_path)}: {error.message}"
            for error in validator.iter_errors(document)
        ]


# --- settings -----------------------------------------------------------------------------------


def existing_settings() -> set[str]:
    """Every GATEWAY_* variable the application reads (both settings classes share the prefix)."""
    names = {f"GATEWAY_{name.upper()}" for name in GatewaySettings.model_fields}
    names |= {f"GATEWAY_{name.upper()}" for name in ConsumerSettings.model_fields}
    return names


def unknown_settings(names: set[str]) -> set[str]:
    """The GATEWAY_* names among ``names`` that are no setting."""
    gateway_names = {name for name in names if name.startswith("GATEWAY_")}
    return gateway_names - existing_settings()


# --- Dockerfile ---------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    arguments: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]

    def of(self, keyword: str) -> list[str]:
        return [i.arguments for i in self.instructions if i.keyword == keyword]


def _logical_lines(text: str) -> Iterator[str]:
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        yield current + line
        current = ""
    if current:
        yield current


def dockerfile_stages(path: Path = DOCKERFILE) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages of a Dockerfile, with continuation lines joined."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        arguments = arguments.strip()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", arguments, flags=re.IGNORECASE)
            assert match, f"cannot parse FROM {arguments}"
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), match.group(1))
            stages.append(Stage(base, match.group(2), []))
        elif keyword == "ARG" and not stages:
            name, _, default = arguments.partition("=")
            args[name] = default
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, arguments))
    return args, stages


def env_pairs(arguments: str) -> dict[str, str]:
    """The variables of an ``ENV a=1 b=2`` instruction (the key=value form)."""
    pairs: dict[str, str] = {}
    for item in shlex.split(arguments):
        name, sep, value = item.partition("=")
        assert sep, f"ENV must use the key=value form: {arguments}"
        pairs[name] = value
    return pairs
