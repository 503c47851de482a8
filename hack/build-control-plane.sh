#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager, kubectl and helm from their Go modules at the
# versions pinned in hack/versions.env, into a cache outside git, and fetches the Knative Serving module
# whose CRDs the tests install. Binaries whose --version already matches the pin are reused. Also builds
# the AWS Lambda Runtime Interface Emulator (aws-lambda-rie), which the function tests run under, and
# prometheus and promtool, which check the chart's alert rules and the dashboard's queries.
#
#   hack/build-control-plane.sh          build what is missing or stale, print the bin directory
#   ZEROSERVE_CACHE_DIR=...              where to build (default: ~/.cache/zeroserve)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=hack/versions.env
source "$here/versions.env"

cache=${ZEROSERVE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/zeroserve}
bin="$cache/bin"
src="$cache/src"
mkdir -p "$bin" "$src"
export GOFLAGS="${GOFLAGS:-} -buildvcs=false" GOTOOLCHAIN=${GOTOOLCHAIN:-local}

log() { printf '[build-control-plane] %s\n' "$*" >&2; }

# current NAME EXPECTED CMD...: true when the binary exists and CMD prints EXPECTED.
current() {
  local name=$1 expected=$2; shift 2
  [[ -x "$bin/$name" ]] || return 1
  local got
  got=$("$bin/$name" "$@" 2>/dev/null || true)
  [[ "$got" == *"$expected"* ]]
}

# wrapper_module DIR MODULE VERSION: a throwaway module requiring MODULE@VERSION. Modules whose own
# go.mod replaces its siblings with local paths (kubernetes, etcd) refuse `go install`; a wrapper that
# requires them and maps each replaced sibling to its published version builds them.
wrapper_module() {
  local dir=$1 module=$2 version=$3 sibling_version=$4
  rm -rf "$dir" && mkdir -p "$dir"
  local modfile
  modfile=$(cd "$dir" && go mod download -json "$module@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  {
    echo "module zeroserve.dev/hack/build"
    echo
    echo "go $(awk '/^go /{print $2; exit}' "$modfile")"
    echo
    echo "require $module $version"
    echo
    # Every `X => ./local/path` in the upstream go.mod becomes `X => X sibling_version`.
    awk -v v="$sibling_version" '$2 == "=>" && $3 ~ /^\.\.?\// { print "replace " $1 " => " $1 " " v }' "$modfile"
  } >"$dir/go.mod"
}

build_kubernetes() {
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local staging="v0.${K8S_VERSION#v1.}"
  local names=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl) name stale=()
  for name in "${names[@]}"; do
    if [[ $name == kubectl ]]; then current kubectl "$K8S_VERSION" version --client || stale+=("$name")
    else current "$name" "$K8S_VERSION" --version || stale+=("$name"); fi
  done
  if ((${#stale[@]} == 0)); then log "kubernetes $K8S_VERSION: up to date"; return; fi
  log "kubernetes $K8S_VERSION: building ${stale[*]} (cold: tens of minutes on 2 cores)"
  local dir="$src/kubernetes"
  wrapper_module "$dir" k8s.io/kubernetes "$K8S_VERSION" "$staging"
  local pkgs=("${stale[@]/#/k8s.io/kubernetes/cmd/}")
  (cd "$dir" && go get "${pkgs[@]/%/@$K8S_VERSION}")
  # The same -X flags Kubernetes' hack/lib/version.sh sets; without them every binary reports v0.0.0.
  local ld="" p
  local date; date=$(date -u +'%Y-%m-%dT%H:%M:%SZ')
  for p in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=$date"
  done
  (cd "$dir" && go build -trimpath -ldflags "-s -w $ld" -o "$bin/" "${pkgs[@]}")
}

build_etcd() {
  if current etcd "${ETCD_VERSION#v}" --version; then log "etcd $ETCD_VERSION: up to date"; return; fi
  log "etcd $ETCD_VERSION: building"
  local dir="$src/etcd"
  wrapper_module "$dir" go.etcd.io/etcd/server/v3 "$ETCD_VERSION" "$ETCD_VERSION"
  (cd "$dir" && go get go.etcd.io/etcd/server/v3@"$ETCD_VERSION" >/dev/null &&
    go build -trimpath -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION" \
      -o "$bin/etcd" go.etcd.io/etcd/server/v3)
}

build_helm() {
  # Helm's default capabilities report the Kubernetes version of the client-go it is built with, stamped
  # by its Makefile; unstamped it says v1.20 and refuses charts with a newer kubeVersion. The stamp file
  # records that version, which `helm version` does not show.
  local gomod client_go major minor stamp="$bin/.helm.kube-version"
  gomod=$(cd "$src" && go mod download -json "helm.sh/helm/v3@$HELM_VERSION" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  client_go=$(awk '$1 == "k8s.io/client-go" {print $2; exit}' "$gomod")
  # As upstream's Makefile: client-go v0.N.x goes with Kubernetes v1.N.
  local parts; IFS=. read -ra parts <<<"${client_go#v}"
  major=$((parts[0] + 1)); minor=${parts[1]}
  if current helm "$HELM_VERSION" version --template '{{.Version}}' &&
     [[ "$(cat "$stamp" 2>/dev/null)" == "v$major.$minor" ]]; then
    log "helm $HELM_VERSION (Kubernetes v$major.$minor): up to date"; return
  fi
  log "helm $HELM_VERSION: building, with default Kubernetes version v$major.$minor"
  rm -f "$stamp"
  local ld="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  ld+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  local p
  for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ld+=" -X $p.k8sVersionMajor=$major -X $p.k8sVersionMinor=$minor"
  done
  # pyhelm3 parses `helm version` as semver, so the version must be stamped in.
  GOBIN="$bin" go install -trimpath -ldflags "$ld" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  echo "v$major.$minor" >"$stamp"
}

# aws-lambda-rie has no --version (unknown flags are passed on to the runtime it starts), so a stamp file
# beside it records the pin it was built at.
build_rie() {
  local stamp="$bin/.aws-lambda-rie.version"
  if [[ -x "$bin/aws-lambda-rie" && "$(cat "$stamp" 2>/dev/null)" == "$LAMBDA_RIE_VERSION" ]]; then
    log "aws-lambda-rie $LAMBDA_RIE_VERSION: up to date"; return
  fi
  log "aws-lambda-rie $LAMBDA_RIE_VERSION: building"
  rm -f "$stamp"
  # No replace directives in its go.mod, so `go install` builds it directly; static, as upstream's Makefile.
  CGO_ENABLED=0 GOBIN="$bin" go install -trimpath -ldflags "-s -w" \
    "github.com/aws/aws-lambda-runtime-interface-emulator/cmd/aws-lambda-rie@$LAMBDA_RIE_VERSION"
  echo "$LAMBDA_RIE_VERSION" >"$stamp"
}

# stamped NAME VERSION: true when the stamp beside binary NAME records VERSION. For binaries whose
# --version needs a running environment, or that have none.
stamp_file() { echo "$bin/$(dirname "$1")/.$(basename "$1").version"; }
stamped() { [[ -x "$bin/$1" && "$(cat "$(stamp_file "$1")" 2>/dev/null)" == "$2" ]]; }
stamp() { echo "$2" >"$(stamp_file "$1")"; }

# Knative Serving's data- and control-plane components, run as pods on the test node. Static, as
# Knative's own release images (ko builds them with CGO off).
build_knative() {
  local names=(controller webhook autoscaler activator queue) name missing=0
  for name in "${names[@]}"; do [[ -x "$bin/knative/$name" ]] || missing=1; done
  if ((missing == 0)) && stamped knative/queue "$KNATIVE_SERVING_VERSION"; then
    log "knative.dev/serving $KNATIVE_SERVING_VERSION components: up to date"; return
  fi
  log "knative.dev/serving $KNATIVE_SERVING_VERSION: building ${names[*]} (cold: about 3 minutes on 2 cores)"
  mkdir -p "$bin/knative"
  rm -f "$(stamp_file knative/queue)"
  for name in "${names[@]}"; do
    (cd "$src" && CGO_ENABLED=0 GOBIN="$bin/knative" go install -trimpath -ldflags "-s -w" \
      "knative.dev/serving/cmd/$name@$KNATIVE_SERVING_VERSION")
  done
  stamp knative/queue "$KNATIVE_SERVING_VERSION"
}

# Traefik's Knative provider is Knative's networking layer on the test node (Envoy-based layers cannot
# build here). Its go.mod has replace directives, so it builds through a wrapper module that repeats
# them; v3.7 cannot build here at all (its nested dynamic/ext module is not served).
build_traefik() {
  if stamped traefik "$TRAEFIK_VERSION"; then log "traefik $TRAEFIK_VERSION: up to date"; return; fi
  log "traefik $TRAEFIK_VERSION: building (cold: about 8 minutes on 2 cores)"
  local dir="$src/traefik" gomod
  rm -rf "$dir" && mkdir -p "$dir"
  gomod=$(cd "$dir" && go mod download -json "github.com/traefik/traefik/v3@$TRAEFIK_VERSION" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  {
    echo "module zeroserve.dev/hack/traefik"
    echo
    echo "go $(awk '/^go /{print $2; exit}' "$gomod")"
    echo
    echo "require github.com/traefik/traefik/v3 $TRAEFIK_VERSION"
    echo
    sed -n '/^replace (/,/^)/p' "$gomod"
  } >"$dir/go.mod"
  (cd "$dir" && go get "github.com/traefik/traefik/v3/cmd/traefik@$TRAEFIK_VERSION" &&
    CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X github.com/traefik/traefik/v3/pkg/version.Version=$TRAEFIK_VERSION" \
      -o "$bin/traefik" github.com/traefik/traefik/v3/cmd/traefik)
  stamp traefik "$TRAEFIK_VERSION"
}

# Cluster DNS for the test node: Knative's components find each other and the API server by name.
build_coredns() {
  if current coredns "CoreDNS-${COREDNS_VERSION#v}" -version; then log "coredns $COREDNS_VERSION: up to date"; return; fi
  log "coredns $COREDNS_VERSION: building"
  CGO_ENABLED=0 GOBIN="$bin" go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
}

# module_dir MODULE@VERSION: where the module cache unpacked it.
module_dir() {
  (cd "$src" && go mod download -json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
}

# Prometheus and promtool: the observability tests run the real server on loopback and check the chart's
# rules with promtool. Its go.mod has no replace directives, so `go install` builds it. Without the
# builtinassets tag the UI is left out; the tests use only the HTTP API. The -X flags are those of
# Prometheus's .promu.yml, so --version reports the release (the module v0.3XY.Z is release 3.XY.Z).
build_prometheus() {
  local release dir
  dir=$(module_dir "github.com/prometheus/prometheus@$PROMETHEUS_VERSION")
  release=$(cat "$dir/VERSION")
  if current prometheus "version $release" --version && current promtool "version $release" --version; then
    log "prometheus $release ($PROMETHEUS_VERSION): up to date"; return
  fi
  log "prometheus $release ($PROMETHEUS_VERSION): building prometheus and promtool"
  local v=github.com/prometheus/common/version ld
  ld="-s -w -X $v.Version=$release -X $v.Revision=$PROMETHEUS_VERSION -X $v.Branch=release"
  ld+=" -X $v.BuildUser=zeroserve -X $v.BuildDate=$(date -u +%Y%m%d-%H:%M:%S)"
  (cd "$src" && CGO_ENABLED=0 GOBIN="$bin" go install -trimpath -ldflags "$ld" \
    "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_VERSION" \
    "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION")
}

# tritonserver from the nvidia-pytriton wheel, unpacked as it is (the binary finds its libraries by a
# relative RPATH) at $cache/tritonserver/<version>, with the Python backend's stub for this machine's
# python3 put where the backend looks for it; $bin/tritonserver-root points at the server's root, laid
# out as /opt/tritonserver is in NVIDIA's image. Nothing of pytriton's Python package is used. The stub
# embeds the system's libpython and was built against numpy 1 (numpy 2 arrays come back with the wrong
# size), so the test model's numpy and onnxruntime go into site-packages of their own beside it.
fetch_tritonserver() {
  local dir="$cache/tritonserver/$PYTRITON_VERSION" py root
  root="$dir/pytriton/tritonserver"
  py=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  if [[ -x "$root/bin/tritonserver" && -x "$root/backends/python/triton_python_backend_stub" &&
        -d "$dir/site-packages/onnxruntime" ]]; then
    ln -sfn "$root" "$bin/tritonserver-root"
    log "tritonserver (nvidia-pytriton $PYTRITON_VERSION): up to date"; return
  fi
  log "tritonserver (nvidia-pytriton $PYTRITON_VERSION): downloading the wheel"
  rm -rf "$dir" && mkdir -p "$dir"
  python3 -m pip download --quiet --no-deps --dest "$src" "nvidia-pytriton==$PYTRITON_VERSION"
  python3 -m zipfile -e "$src/nvidia_pytriton-$PYTRITON_VERSION-"*.whl "$dir"
  chmod +x "$root/bin/tritonserver" "$root/python_backend_stubs/"*/triton_python_backend_stub
  cp "$root/python_backend_stubs/$py/triton_python_backend_stub" "$root/backends/python/"
  python3 -m pip install --quiet --target "$dir/site-packages" --only-binary=:all: "numpy<2" onnxruntime
  ln -sfn "$root" "$bin/tritonserver-root"
}

# Knative's manifests come from the module cache, never copied into the repo. The serving module's zip
# drops its symlinks, so the networking CRDs and config-network come from knative.dev/networking and the
# images CRD from knative.dev/caching, at the versions serving's go.mod pins.
fetch_knative() {
  local dir gomod networking caching
  dir=$(module_dir "knative.dev/serving@$KNATIVE_SERVING_VERSION")
  gomod=$(cd "$src" && go mod download -json "knative.dev/serving@$KNATIVE_SERVING_VERSION" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  networking=$(module_dir "knative.dev/networking@$(awk '$1 == "knative.dev/networking" {print $2; exit}' "$gomod")")
  caching=$(module_dir "knative.dev/caching@$(awk '$1 == "knative.dev/caching" {print $2; exit}' "$gomod")")
  ln -sfn "$dir/config/core/300-resources" "$cache/knative-serving-crds"
  ln -sfn "$dir/config/core" "$cache/knative-serving-core"
  ln -sfn "$networking/config" "$cache/knative-networking-config"
  ln -sfn "$caching/config" "$cache/knative-caching-config"
  # Traefik's own RBAC for its Knative provider, from its module's docs.
  ln -sfn "$(module_dir "github.com/traefik/traefik/v3@$TRAEFIK_VERSION")/docs/content/reference/dynamic-configuration/kubernetes-knative-rbac.yml" \
    "$cache/traefik-knative-rbac.yml"
  log "knative.dev/serving $KNATIVE_SERVING_VERSION: manifests at $cache/knative-serving-core"
}

start=$SECONDS
build_etcd
build_helm
build_kubernetes
build_rie
build_knative
build_coredns
build_traefik
build_prometheus
fetch_tritonserver
fetch_knative
log "done in $((SECONDS - start))s"
echo "$bin"
