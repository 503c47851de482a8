#!/usr/bin/env bash
# Builds the container images a local node runs, with buildah and without Docker or any registry pull:
#   pause         the pod sandbox: hack/pause/ as a static Go binary in a scratch image
#   base          Debian bookworm with python3, made by mmdebstrap from Debian's mirror
#   runtime-onnx  runtimes/onnx/Dockerfile on that base
#   runtime-onnx-gpu  the same with --build-arg DEVICE=gpu (onnxruntime-gpu, CUDA and cuDNN wheels: several
#                 GB, so only when named; a machine without a GPU builds it, it cannot run it)
#   operator      operator/Dockerfile on that base
#   knative-{controller,webhook,autoscaler,activator,queue}, traefik, coredns
#                 the static binaries hack/build-control-plane.sh builds, each alone in a scratch image
# Each image is tagged kind.local/zeroserve/<name>:<hash of its inputs> (Knative skips tag resolution for
# kind.local), so an unchanged tree reuses what the last run built. Each one but the base is written as a
# docker-archive, $cache/images/<name>.tar, for `ctr -n k8s.io images import`, and $cache/images/images.env
# names them all. Logs go to stderr; images.env is printed on stdout at the end.
#
#   hack/build-images.sh [IMAGE...]     build what is missing or stale (default: all but runtime-onnx-gpu)
#   ZEROSERVE_CACHE_DIR=...             where to keep them (default: ~/.cache/zeroserve)
#   ZEROSERVE_DEBIAN_MIRROR=...         Debian mirror for the base (default: http://deb.debian.org/debian)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
cache=${ZEROSERVE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/zeroserve}
images="$cache/images"
store="$cache/buildah"
mirror=${ZEROSERVE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
registry=kind.local/zeroserve
export GOFLAGS="${GOFLAGS:-} -buildvcs=false" GOTOOLCHAIN=${GOTOOLCHAIN:-local}

log() { printf '[build-images] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# need TOOL INSTALL: fail before any work when TOOL is missing, saying how to get it.
need() { command -v "$1" >/dev/null || die "$1 not found; install it: $2"; }

# Its own store, so nothing here touches (or needs) a system-wide container setup; vfs needs no
# overlay mounts, which unprivileged or nested machines may refuse.
bah() { buildah --root "$store/root" --runroot "$store/run" --storage-driver vfs "$@"; }

have_image() { bah inspect --type image "$1" >/dev/null 2>&1; }

# digest: the first 16 hex digits of the sha256 of stdin, enough to tell recipes apart.
digest() { sha256sum | cut -c1-16; }

arch=$(go env GOARCH 2>/dev/null || dpkg --print-architecture)

# --- pause -----------------------------------------------------------------------------------------

pause_ref() {
  { declare -f build_pause; go version; cat "$here/pause/go.mod" "$here/pause/main.go"; } | digest \
    | sed "s|^|$registry/pause:|"
}

build_pause() {
  local ref=$1 work c
  work=$(mktemp -d)
  (cd "$here/pause" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$work/pause" .)
  c=$(bah from scratch)
  bah copy --quiet --chmod 0755 "$c" "$work/pause" /pause
  # 65535, as the upstream pause image: a uid no real user has.
  bah config --entrypoint '["/pause"]' --cmd '' --user 65535:65535 --os linux --arch "$arch" "$c"
  bah commit --quiet --rm --format docker "$c" "$ref" >/dev/null
  rm -rf "$work"
}

# --- base ------------------------------------------------------------------------------------------

base_packages=python3,python3-venv,ca-certificates,passwd

base_ref() {
  { declare -f build_base; echo "$mirror $base_packages"; } | digest | sed "s|^|$registry/base:|"
}

build_base() {
  local ref=$1 work c security=${mirror%/debian}/debian-security
  work=$(mktemp -d)
  # minbase: the essential set and apt; no docs, man pages or locales (copyrights stay).
  # The merged-/usr hook installs usr-is-merged instead of usrmerge, which would bring all of perl.
  mmdebstrap --variant=minbase --include="$base_packages" --quiet \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    bookworm "$work/rootfs.tar" \
    "deb $mirror bookworm main" "deb $mirror bookworm-updates main" "deb $security bookworm-security main" >&2
  c=$(bah from scratch)
  bah add --quiet "$c" "$work/rootfs.tar" /
  bah config --cmd '["python3"]' --env LANG=C.UTF-8 --os linux --arch "$arch" "$c"
  bah commit --quiet --rm --format docker "$c" "$ref" >/dev/null
  rm -rf "$work"
}

# --- images from a Dockerfile ----------------------------------------------------------------------

# context DOCKERFILE DIR: the files the Dockerfile's COPY lines name (not those from another stage),
# as git sees them (no caches, no egg-info), copied into DIR. Its hash is then exactly what goes in.
context() {
  local dockerfile=$1 dir=$2 paths f
  mapfile -t paths < <(awk '$1 == "COPY" && $2 !~ /^--/ { for (i = 2; i < NF; i++) print $i }' "$dockerfile")
  ((${#paths[@]})) || die "$dockerfile copies nothing"
  rm -rf "$dir" && mkdir -p "$dir"
  if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    while IFS= read -r -d '' f; do
      [[ -f "$root/$f" ]] && (cd "$root" && cp --parents -p "$f" "$dir/")
    done < <(git -C "$root" ls-files -z --cached --others --exclude-standard -- "${paths[@]}")
  else
    (cd "$root" && find "${paths[@]}" -type f ! -path '*/__pycache__/*' ! -path '*.egg-info/*' -print0 \
      | xargs -0 cp --parents -p -t "$dir/")
  fi
  cp "$dockerfile" "$dir/Dockerfile.zeroserve"
}

tree_digest() { (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | digest; }

# dockerfile_ref NAME DOCKERFILE: the tag, from the Dockerfile, the files it copies, the base and this recipe.
dockerfile_ref() {
  local name=$1 dockerfile=$2 dir="$images/context/$1"
  context "$dockerfile" "$dir"
  { declare -f build_dockerfile; tree_digest "$dir"; base_ref; } | digest \
    | sed "s|^|$registry/$name:|"
}

build_dockerfile() {
  local name=$1 ref=$2 trust=() args=() f
  [[ $name == runtime-onnx-gpu ]] && args+=(--build-arg DEVICE=gpu)
  # pip in the RUN steps trusts what pip here trusts: behind a TLS-inspecting proxy PyPI is only reached
  # with this machine's CA bundle and pip.conf. Mounted for the RUN steps only, never in the image.
  for f in /etc/ssl/certs/ca-certificates.crt /etc/pip.conf; do
    [[ -f $f ]] && trust+=(--volume "$f:$f:ro")
  done
  # chroot isolation: runc needs CAP_SYS_RESOURCE, which a nested machine may not grant. --pull=never:
  # the base is in the store, and nothing is ever pulled.
  bah build --quiet --isolation chroot --pull=never --format docker "${trust[@]}" \
    --build-arg BASE_IMAGE="$base" "${args[@]}" -f "$images/context/$name/Dockerfile.zeroserve" -t "$ref" \
    "$images/context/$name" >/dev/null
}

# --- static binaries ---------------------------------------------------------------------------

# Knative's, Traefik's and CoreDNS's static binaries (hack/build-control-plane.sh), each in a scratch
# image as their release images are, run as 65532 (the Deployments set runAsNonRoot).
static_images=(knative-controller knative-webhook knative-autoscaler knative-activator knative-queue traefik coredns)

static_binary() {
  case $1 in
    knative-*) echo "$cache/bin/knative/${1#knative-}" ;;
    *) echo "$cache/bin/$1" ;;
  esac
}

static_ref() {
  local binary
  binary=$(static_binary "$1")
  [[ -x $binary ]] || die "$binary is missing; run hack/build-control-plane.sh first"
  { declare -f build_static; sha256sum <"$binary"; } | digest | sed "s|^|$registry/$1:|"
}

build_static() {
  local name=$1 ref=$2 c binary
  binary=$(static_binary "$name")
  c=$(bah from scratch)
  bah copy --quiet --chmod 0755 "$c" "$binary" "/$name"
  bah config --entrypoint "[\"/$name\"]" --cmd '' --user 65532:65532 --os linux --arch "$arch" "$c"
  bah commit --quiet --rm --format docker "$c" "$ref" >/dev/null
}

# --- archives --------------------------------------------------------------------------------------

# export_archive NAME REF: $images/NAME.tar holds REF, written only when it holds something else.
export_archive() {
  local name=$1 ref=$2 tar="$images/$1.tar"
  [[ -f "$tar" && "$(cat "$tar.ref" 2>/dev/null)" == "$ref" ]] && return
  log "$name: writing $tar"
  rm -f "$tar" "$tar.ref" "$tar.tmp"
  bah push --quiet "$ref" "docker-archive:$tar.tmp:$ref" >&2
  mv "$tar.tmp" "$tar"
  echo "$ref" >"$tar.ref"
}

current_archive() { [[ -f "$images/$1.tar" && "$(cat "$images/$1.tar.ref" 2>/dev/null)" == "$2" ]]; }

# write_env: images.env names every image whose archive is current, so a partial run still tells the
# node what it can use.
write_env() {
  local tmp="$images/images.env.tmp"
  {
    current_archive pause "$pause" && echo "ZEROSERVE_PAUSE_IMAGE=$pause"
    current_archive runtime-onnx "$runtime" && echo "ZEROSERVE_RUNTIME_IMAGE=$runtime"
    current_archive runtime-onnx-gpu "$runtime_gpu" && echo "ZEROSERVE_RUNTIME_GPU_IMAGE=$runtime_gpu"
    current_archive operator "$operator" && echo "ZEROSERVE_OPERATOR_IMAGE=$operator"
    have_image "$base" && echo "ZEROSERVE_BASE_IMAGE=$base"
    local name key
    for name in "${!static[@]}"; do
      key=${name^^}; key=${key//-/_}
      current_archive "$name" "${static[$name]}" && echo "ZEROSERVE_${key}_IMAGE=${static[$name]}"
    done
    echo "ZEROSERVE_IMAGES_DIR=$images"
  } >"$tmp"
  mv "$tmp" "$images/images.env"
}

# --- main ------------------------------------------------------------------------------------------

need go "Go 1.22+ (https://go.dev/dl/)"
need buildah "apt-get install -y buildah"
need runc "apt-get install -y runc"
wanted=("$@")
((${#wanted[@]})) || wanted=(pause base runtime-onnx operator "${static_images[@]}")
for name in "${wanted[@]}"; do
  case $name in
    pause | knative-* | traefik | coredns) ;;
    base | runtime-onnx | runtime-onnx-gpu | operator) need mmdebstrap "apt-get install -y mmdebstrap" ;;
    *) die "unknown image $name (pause, base, runtime-onnx, runtime-onnx-gpu, operator, ${static_images[*]})" ;;
  esac
done
mkdir -p "$images" "$store"

pause=$(pause_ref)
base=$(base_ref)
runtime=$(dockerfile_ref runtime-onnx "$root/runtimes/onnx/Dockerfile")
runtime_gpu=$(dockerfile_ref runtime-onnx-gpu "$root/runtimes/onnx/Dockerfile")
operator=$(dockerfile_ref operator "$root/operator/Dockerfile")
# Every static image whose binary is built gets its ref, wanted or not, so images.env keeps naming it.
declare -A static=()
for name in "${static_images[@]}"; do
  if [[ -x $(static_binary "$name") || " ${wanted[*]} " == *" $name "* ]]; then
    static[$name]=$(static_ref "$name")
  fi
done

# ensure NAME REF BUILD...: build REF unless the store has it, then drop NAME's other tags: vfs keeps a
# full copy of every image, and each source change makes a new one.
ensure() {
  local name=$1 ref=$2 started=$SECONDS old; shift 2
  if have_image "$ref"; then log "$name: $ref (cached)"; return; fi
  log "$name: building $ref"
  "$@" "$ref"
  log "$name: built in $((SECONDS - started)) s"
  bah images --format '{{.Name}}:{{.Tag}}' --filter "reference=$registry/$name" | while read -r old; do
    [[ $old == "$ref" ]] || bah rmi "$old" >/dev/null
  done
}

for name in "${wanted[@]}"; do
  case $name in
    pause)
      current_archive pause "$pause" || { ensure pause "$pause" build_pause; export_archive pause "$pause"; } ;;
    base) ensure base "$base" build_base ;;
    runtime-onnx | runtime-onnx-gpu | operator)
      ref=$runtime
      [[ $name == operator ]] && ref=$operator
      [[ $name == runtime-onnx-gpu ]] && ref=$runtime_gpu
      if ! current_archive "$name" "$ref"; then
        ensure base "$base" build_base
        ensure "$name" "$ref" build_dockerfile "$name"
        export_archive "$name" "$ref"
      fi ;;
    *)
      current_archive "$name" "${static[$name]}" || {
        ensure "$name" "${static[$name]}" build_static "$name"
        export_archive "$name" "${static[$name]}"
      } ;;
  esac
  write_env
done
write_env
cat "$images/images.env"
