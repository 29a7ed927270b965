#!/usr/bin/env bash
# Builds the operator image from the Dockerfile's final stage with buildah (no daemon, no
# registry), unpacks it with umoci and runs it with runc the way the chart's Deployment runs it:
# the image's own user (65532) and entrypoint, read-only root filesystem, no capabilities, no
# new privileges, seccomp (the containers-common default profile), the webhook certificate and a service-account token mounted read-only,
# in-cluster configuration from KUBERNETES_SERVICE_HOST/PORT, the Deployment's environment.
# It checks:
#   - the build context: .dockerignore sends exactly the files the build stage copies;
#   - the image config: user 65532:65532, ENTRYPOINT + CMD = `/usr/local/bin/apiguard run`
#     (the chart's `args: [run]` replaces CMD), exposed ports 8080 and 8443, HOME;
#   - in the container: `apiguard --version`; `apiguard lint` of a mounted insecure example
#     (exit 1, APG001) and of a secure one (exit 0); a write to the root is refused;
#   - `apiguard run` (the image's CMD: controller and webhook, the chart's defaults) against the
#     control plane of KUBECONFIG, in an operator namespace of its own: /readyz, /healthz and
#     /metrics answer; it takes the controller Lease and creates the operator CA Secret; the
#     webhook (HTTPS, the mounted certificate) denies the APG001 example; the process runs as
#     uid/gid 65532 with no capabilities, no-new-privileges and a seccomp filter; as PID 1 it exits 0 on SIGTERM;
#     it logs no error.
#
# What differs from `docker build` of the Dockerfile, because there is no registry here:
#   - the build stage is not run: the binary is BINARY (cargo's glibc build on this Debian 12
#     machine, the kind of binary the build stage produces on rust:*-bookworm);
#   - the base image is assembled locally FROM scratch with what distroless cc-debian12:nonroot
#     holds that apiguard uses: /etc/passwd and /etc/group with nonroot (65532), /home/nonroot,
#     /tmp, CA certificates, and the shared libraries BINARY links (ldd: glibc, libgcc, libm);
#   - the Dockerfile's final stage is built as written, its two external inputs rewritten:
#     `FROM <base>` to the local base, `COPY --from=build /apiguard` to BINARY.
# The network namespace is the host's (the control plane listens on its loopback), and the
# service-account token is KUBECONFIG's (the chart's RBAC is tested by tests/e2e/e2e_journey.rs).
#
# Usage: tests/image.sh BINARY KUBECONFIG [WORKDIR]   (WORKDIR default: target/image)
#        tests/image.sh build BINARY OUT.tar [WORKDIR]  only the build (context check, base,
#          final stage), written as a docker-archive OUT.tar that `ctr images import` takes, named
#          as the chart expects (the test node of tests/node.sh runs it)
#   KUBECONFIG: a running control plane whose user has a bearer token (tests/cluster.sh up;
#   tests/cluster/image.rs starts its own); the CRDs of crds/ are applied to it. Needs root (runc),
#   buildah, umoci, runc, jq (`tests/tools.sh container` installs them), curl and kubectl.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
UID_GID=65532
STAGE_COPY='COPY --from=build /apiguard /usr/local/bin/apiguard'
# The base the local one reproduces (see below); another base needs another local one.
BASE='gcr.io/distroless/cc-debian12:nonroot'

log() { printf '[image] %s\n' "$*" >&2; }
die() { printf '[image] error: %s\n' "$*" >&2; exit 1; }
expect() { # WHAT ACTUAL EXPECTED
  [[ "$2" == "$3" ]] || die "$1: '$2', expected '$3'"
  log "ok: $1 = $2"
}

MODE=check
if [[ "${1-}" == build ]]; then
  MODE=build
  shift
  [[ $# -ge 2 && $# -le 3 ]] || die "usage: tests/image.sh build BINARY OUT.tar [WORKDIR]"
  OUT=$(realpath -m "$2")
  WORK=${3:-$ROOT/target/image-build}
  TOOLS=(buildah ldd)
else
  [[ $# -ge 2 && $# -le 3 ]] || die "usage: tests/image.sh BINARY KUBECONFIG [WORKDIR]"
  KUBECONFIG_FILE=$(realpath "$2")
  [[ -f "$KUBECONFIG_FILE" ]] || die "kubeconfig $KUBECONFIG_FILE not found"
  WORK=${3:-$ROOT/target/image}
  TOOLS=(buildah umoci runc jq curl kubectl ldd)
fi
BINARY=$(realpath "$1")
[[ -x "$BINARY" ]] || die "$BINARY is not an executable"
for tool in "${TOOLS[@]}"; do
  command -v "$tool" >/dev/null || die "$tool is not installed: run tests/tools.sh container"
done
[[ $(id -u) -eq 0 ]] || die "runc needs root here (no rootless setup)"

CONTAINER="apiguard-image-$$"
# The operator's namespace (its Lease and CA Secret), removed at the end.
OPERATOR_NS="apiguard-image-$$"
ns_created=false
cleanup() {
  if runc state "$CONTAINER" >/dev/null 2>&1; then
    runc kill "$CONTAINER" KILL >/dev/null 2>&1 || true
    runc delete --force "$CONTAINER" >/dev/null 2>&1 || true
  fi
  if $ns_created; then
    kubectl --kubeconfig "$KUBECONFIG_FILE" delete namespace "$OPERATOR_NS" --wait=false >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
trap 'exit 143' TERM INT

rm -rf "$WORK"
mkdir -p "$WORK"
STORAGE=(--root "$WORK/storage" --runroot "$WORK/run" --storage-driver vfs)

# --- the image name and version ---------------------------------------------------------------
version=$("$BINARY" --version | awk '{print $2}')
tag=$(sed -n 's/^#   docker build -t \([^ ]*\) \.$/\1/p' "$ROOT/Dockerfile")
[[ "$tag" == "ghcr.io/apiguard/apiguard:$version" ]] ||
  die "the Dockerfile builds '$tag', the binary is version $version"

# --- the build context: .dockerignore lets in exactly what the build stage copies -------------
# (buildah applies .dockerignore with the same pattern rules as docker.)
sources=$(awk '/^FROM /{n++} n==1 && /^COPY / && !/--from/ {for (i = 2; i < NF; i++) print $i}' "$ROOT/Dockerfile")
[[ -n "$sources" ]] || die "the Dockerfile's build stage copies nothing"
context="$WORK/context"
mkdir -p "$context"
printf 'FROM scratch\nCOPY . /context\n' >"$context/Containerfile"
buildah "${STORAGE[@]}" bud --quiet --pull=never -t localhost/apiguard-context:latest \
  -f "$context/Containerfile" "$ROOT" >/dev/null
ctr=$(buildah "${STORAGE[@]}" from localhost/apiguard-context:latest)
mnt=$(buildah "${STORAGE[@]}" mount "$ctr")
(cd "$mnt/context" && find . -type f | sed 's|^\./||' | sort) >"$context/sent"
buildah "${STORAGE[@]}" rm "$ctr" >/dev/null
# shellcheck disable=SC2086 # the sources are words
(cd "$ROOT" && find $sources -type f | sort) >"$context/copied"
diff -u "$context/copied" "$context/sent" >&2 ||
  die "the build context (.dockerignore) differs from what the build stage copies ($(echo $sources)): - copied only, + sent only"
log "ok: the build context (.dockerignore) is the $(wc -l <"$context/sent") files under $(echo $sources)"

# --- the base: what $BASE holds that apiguard uses, assembled FROM scratch -----
base="$WORK/base"
mkdir -p "$base/rootfs/etc/ssl/certs" "$base/rootfs/tmp" "$base/home/nonroot"
printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
  'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
  "nonroot:x:$UID_GID:$UID_GID:nonroot:/home/nonroot:/sbin/nologin" >"$base/rootfs/etc/passwd"
printf '%s\n' 'root:x:0:' 'nobody:x:65534:' "nonroot:x:$UID_GID:" >"$base/rootfs/etc/group"
chmod 1777 "$base/rootfs/tmp"
cp /etc/ssl/certs/ca-certificates.crt "$base/rootfs/etc/ssl/certs/"
libs=$(ldd "$BINARY" | grep -o '/[^ ]*' || true)
[[ -n "$libs" ]] || die "ldd $BINARY lists no libraries"
for lib in $libs; do
  mkdir -p "$base/rootfs$(dirname "$lib")"
  cp -L "$lib" "$base/rootfs$lib"
done
cat >"$base/Containerfile" <<'EOF'
FROM scratch
COPY rootfs/ /
COPY --chown=65532:65532 home/ /home/
EOF
buildah "${STORAGE[@]}" bud --quiet --isolation chroot --pull=never \
  -t localhost/apiguard-test-base:latest -f "$base/Containerfile" "$base" >/dev/null
log "base image: FROM scratch + $(echo "$libs" | wc -w) libraries from ldd, passwd/group (nonroot $UID_GID), CA certificates"

# --- the Dockerfile's final stage, as written, its two external inputs rewritten ---------------
stage="$WORK/stage"
mkdir -p "$stage"
awk '/^FROM /{stage=""} {stage=stage $0 "\n"} END{printf "%s", stage}' "$ROOT/Dockerfile" >"$stage/final-stage.orig"
grep -qxF "FROM $BASE" "$stage/final-stage.orig" ||
  die "the Dockerfile's final stage is not FROM $BASE, the base tests/image.sh reproduces: update it"
grep -qxF "$STAGE_COPY" "$stage/final-stage.orig" ||
  die "the Dockerfile's final stage has no line '$STAGE_COPY' (update tests/image.sh with it)"
if grep -vxF "$STAGE_COPY" "$stage/final-stage.orig" | grep -Eq -- '--from|^RUN '; then
  die "the final stage has another --from or a RUN (distroless has no shell): update tests/image.sh"
fi
sed -e 's|^FROM .*$|FROM localhost/apiguard-test-base:latest|' \
  -e "s|^$STAGE_COPY\$|COPY apiguard /usr/local/bin/apiguard|" \
  "$stage/final-stage.orig" >"$stage/Containerfile"
cp "$BINARY" "$stage/apiguard"
log "final stage (from the Dockerfile):"
sed 's/^/    /' "$stage/final-stage.orig" >&2
buildah "${STORAGE[@]}" bud --quiet --isolation chroot --pull=never \
  -t "$tag" -f "$stage/Containerfile" "$stage" >/dev/null
if [[ $MODE == build ]]; then
  rm -f "$OUT"
  buildah "${STORAGE[@]}" push --quiet "$tag" "docker-archive:$OUT:$tag" >/dev/null
  rm -rf "$WORK"
  log "built $tag (the Dockerfile's final stage) into $OUT"
  exit 0
fi
buildah "${STORAGE[@]}" push --quiet "$tag" "oci:$WORK/oci:$version" >/dev/null
umoci unpack --image "$WORK/oci:$version" "$WORK/bundle" >/dev/null
log "built $tag with buildah, unpacked with umoci into $WORK/bundle"

# --- the image config, as a runtime sees it ----------------------------------------------------
image_config="$WORK/bundle/config.image.json"
mv "$WORK/bundle/config.json" "$image_config"
expect "image user" "$(jq -r '"\(.process.user.uid):\(.process.user.gid)"' "$image_config")" "$UID_GID:$UID_GID"
expect "image entrypoint + cmd" "$(jq -c '.process.args' "$image_config")" '["/usr/local/bin/apiguard","run"]'
expect "image exposed ports" "$(jq -r '.annotations["org.opencontainers.image.exposedPorts"]' "$image_config")" "8080/tcp,8443/tcp"
expect "image HOME" "$(jq -r '.process.env[] | select(startswith("HOME="))' "$image_config")" "HOME=/home/nonroot"

# --- what the pod mounts: the webhook certificate, a service-account token ----------------------
secrets="$WORK/secrets"
mkdir -p "$secrets/tls" "$secrets/serviceaccount"
"$BINARY" identity init-ca --out "$WORK/ca" >/dev/null
"$BINARY" identity issue --ca-dir "$WORK/ca" --out "$secrets/tls" --dns localhost \
  --spiffe-id "spiffe://cluster.local/ns/$OPERATOR_NS/sa/apiguard" >/dev/null
kc() { kubectl --kubeconfig "$KUBECONFIG_FILE" "$@"; }
server=$(kc config view --minify -o jsonpath='{.clusters[0].cluster.server}')
[[ "$server" =~ ^https://([^:/]+):([0-9]+)/?$ ]] || die "kubeconfig server '$server' is not https://HOST:PORT"
api_host=${BASH_REMATCH[1]}
api_port=${BASH_REMATCH[2]}
token=$(kc config view --raw --minify -o jsonpath='{.users[0].user.token}')
[[ -n "$token" ]] || die "the kubeconfig's user has no bearer token (the in-cluster config needs one)"
printf '%s' "$token" >"$secrets/serviceaccount/token"
ca_file=$(kc config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority}')
if [[ -n "$ca_file" ]]; then
  cp "$ca_file" "$secrets/serviceaccount/ca.crt"
else
  kc config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' |
    base64 -d >"$secrets/serviceaccount/ca.crt"
fi
printf '%s' "$OPERATOR_NS" >"$secrets/serviceaccount/namespace"
# What fsGroup 65532 does for the pod's volumes.
chown -R "$UID_GID:$UID_GID" "$secrets"
kc apply -f "$ROOT/crds/" >/dev/null
kc wait --for=condition=Established --timeout=60s -f "$ROOT/crds/" >/dev/null
kc create namespace "$OPERATOR_NS" >/dev/null
ns_created=true

free_port() { # VAR
  local p i
  for i in $(seq 1 200); do
    p=$((20000 + RANDOM % 12000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      printf -v "$1" '%s' "$p"
      return 0
    fi
  done
  die "no free port"
}
free_port webhook_port
free_port admin_port
[[ $webhook_port != "$admin_port" ]] || free_port admin_port

# --- the runtime config: the image's, hardened like the chart's securityContext -----------------
# The image's user, HOME and PATH stay; root read-only, no capabilities, no new privileges,
# seccomp, no network namespace (the host's loopback, where the control plane listens).
bind() { # SOURCE DESTINATION
  jq -n --arg s "$1" --arg d "$2" '{destination: $d, type: "bind", source: $s, options: ["rbind", "ro"]}'
}
mounts=$(jq -s '.' <(bind "$secrets/tls" /var/run/apiguard/tls) \
  <(bind "$secrets/serviceaccount" /var/run/secrets/kubernetes.io/serviceaccount) \
  <(bind "$ROOT/examples" /examples) <(bind /etc/hosts /etc/hosts) \
  <(bind /etc/resolv.conf /etc/resolv.conf))
# The chart Deployment's environment with its default values (listen addresses on loopback).
env_json=$(jq -n --arg host "$api_host" --arg port "$api_port" --arg ns "$OPERATOR_NS" \
  --arg webhook "127.0.0.1:$webhook_port" --arg admin "127.0.0.1:$admin_port" '[
  "KUBERNETES_SERVICE_HOST=\($host)", "KUBERNETES_SERVICE_PORT=\($port)",
  "POD_NAMESPACE=\($ns)", "POD_NAME=apiguard-image-test",
  "APIGUARD_OPERATOR_NAMESPACE=\($ns)",
  "APIGUARD_WEBHOOK_ADDR=\($webhook)", "APIGUARD_ADMIN_ADDR=\($admin)",
  "APIGUARD_TLS_CERT=/var/run/apiguard/tls/tls.crt", "APIGUARD_TLS_KEY=/var/run/apiguard/tls/tls.key",
  "APIGUARD_TRUST_DOMAIN=cluster.local", "APIGUARD_MODE=Enforce",
  "APIGUARD_EXEMPT_NAMESPACES=kube-system,kube-public,kube-node-lease,\($ns)",
  "APIGUARD_LOG_FORMAT=json",
  "APIGUARD_ENVOY_IMAGE=docker.io/envoyproxy/envoy:v1.40.0", "APIGUARD_GATEWAY_REPLICAS=2",
  "APIGUARD_CA_SECRET=apiguard-ca"]')
# seccomp RuntimeDefault: the default profile of Podman and CRI-O (containers-common, a
# dependency of buildah), in OCI form for amd64 and a process without capabilities.
SECCOMP_PROFILE=/usr/share/containers/seccomp.json
[[ -f $SECCOMP_PROFILE ]] || die "$SECCOMP_PROFILE (package golang-github-containers-common) is missing"
seccomp=$(jq -c '
  def applies: ((.includes.arches // []) as $a | $a == [] or ($a | index("amd64") != null))
    and ((.includes.caps // []) == []);
  {defaultAction, defaultErrnoRet,
   architectures: [.archMap[] | select(.architecture == "SCMP_ARCH_X86_64") | .architecture, .subArchitectures[]],
   syscalls: [.syscalls[] | select(applies)
     | {names, action}
       + (if (.args // []) != [] then {args} else {} end)
       + (if .errnoRet != null then {errnoRet} else {} end)]}' "$SECCOMP_PROFILE")
runtime_config() { # ARGS...: the container's args after the entrypoint
  local args
  args=$(printf '%s\n' "$@" | jq -R . | jq -s -c .) # (no argument has a newline)
  jq --argjson args "$args" --argjson mounts "$mounts" --argjson env "$env_json" \
    --argjson seccomp "$seccomp" '
    .process.terminal = false
    | .process.args = [.process.args[0]] + $args
    | .process.env = [.process.env[] | select(startswith("TERM=") | not)] + $env
    | .process.noNewPrivileges = true
    | .process.capabilities = {bounding: [], effective: [], inheritable: [], permitted: [], ambient: []}
    | .root.readonly = true
    | .linux.namespaces = [.linux.namespaces[] | select(.type != "network")]
    | .linux.seccomp = $seccomp
    | .mounts += $mounts
    | .hostname = "apiguard-image-test"' "$image_config" >"$WORK/bundle/config.json"
}

# Runs the image with ARGS in the foreground: sets $out (stdout + stderr) and $rc.
run_once() {
  runtime_config "$@"
  rc=0
  out=$(runc run --bundle "$WORK/bundle" "$CONTAINER" 2>&1) || rc=$?
  runc delete --force "$CONTAINER" >/dev/null 2>&1 || true
}
expect_run() { # EXPECTED_RC EXPECTED_SUBSTRING ARGS...
  local want_rc=$1 want=$2
  shift 2
  run_once "$@"
  [[ $rc -eq $want_rc && "$out" == *"$want"* ]] ||
    die "\`apiguard $*\` in the container: exit $rc (expected $want_rc), output without '$want':"$'\n'"$out"
  log "ok: apiguard $* -> exit $rc, '$want'"
}

expect_run 0 "apiguard $version" --version
expect_run 1 "deny APG001" lint /examples/insecure/APG001-cors-wildcard-origin.yaml
expect_run 0 "0 finding(s)" lint /examples/public-consumer-api.yaml
expect_run 2 "Read-only file system" identity init-ca --out /tmp/ca

# --- the operator: `apiguard run` (the image's CMD), controller and webhook ---------------------
runtime_config run
runc run --bundle "$WORK/bundle" "$CONTAINER" >"$WORK/run.log" 2>&1 &
runc_pid=$!
admin="http://127.0.0.1:$admin_port"
deadline=$((SECONDS + 90))
until curl -fsS "$admin/readyz" >/dev/null 2>&1; do
  kill -0 "$runc_pid" 2>/dev/null || die "apiguard run exited before ready:"$'\n'"$(cat "$WORK/run.log")"
  ((SECONDS < deadline)) || die "apiguard run not ready within 90 s:"$'\n'"$(cat "$WORK/run.log")"
  sleep 0.5
done
log "ok: /readyz answers (webhook cache synced from the control plane, in-cluster config)"
expect "/healthz" "$(curl -fsS -o /dev/null -w '%{http_code}' "$admin/healthz")" 200
curl -fsS "$admin/metrics" | grep -q '^# TYPE ' || die "/metrics serves no Prometheus metrics"
log "ok: /metrics serves Prometheus metrics"
eventually() { # WHAT EXPECTED COMMAND...: COMMAND's output becomes EXPECTED within 60 s
  local what=$1 want=$2 got deadline=$((SECONDS + 60))
  shift 2
  until got=$("$@" 2>/dev/null) && [[ "$got" == "$want" ]]; do
    ((SECONDS < deadline)) || die "$what: '${got-}' after 60 s, expected '$want':"$'\n'"$(cat "$WORK/run.log")"
    sleep 0.5
  done
  log "ok: $what = $got"
}
eventually "holder of Lease $OPERATOR_NS/apiguard-controller" apiguard-image-test \
  kc -n "$OPERATOR_NS" get lease apiguard-controller -o jsonpath='{.spec.holderIdentity}'
eventually "type of the operator CA Secret $OPERATOR_NS/apiguard-ca" kubernetes.io/tls \
  kc -n "$OPERATOR_NS" get secret apiguard-ca -o jsonpath='{.type}'

pid=$(runc state "$CONTAINER" | jq -r '.pid')
status=$(cat "/proc/$pid/status")
expect "process uids" "$(awk '/^Uid:/{print $2, $3, $4, $5}' <<<"$status")" "$UID_GID $UID_GID $UID_GID $UID_GID"
expect "process gids" "$(awk '/^Gid:/{print $2, $3, $4, $5}' <<<"$status")" "$UID_GID $UID_GID $UID_GID $UID_GID"
expect "effective capabilities" "$(awk '/^CapEff:/{print $2}' <<<"$status")" 0000000000000000
expect "no new privileges" "$(awk '/^NoNewPrivs:/{print $2}' <<<"$status")" 1
expect "seccomp mode (2: filter)" "$(awk '/^Seccomp:/{print $2}' <<<"$status")" 2

object=$(kc create --dry-run=client -o json -f "$ROOT/examples/insecure/APG001-cors-wildcard-origin.yaml")
review=$(jq -n --argjson o "$object" '{
  apiVersion: "admission.k8s.io/v1", kind: "AdmissionReview",
  request: {
    uid: "image-test-1",
    kind: {group: "networking.k8s.io", version: "v1", kind: "Ingress"},
    resource: {group: "networking.k8s.io", version: "v1", resource: "ingresses"},
    name: $o.metadata.name, namespace: $o.metadata.namespace, operation: "CREATE",
    userInfo: {username: "alice@example.com", groups: ["system:authenticated"]},
    object: $o, oldObject: null, dryRun: false,
    options: {apiVersion: "meta.k8s.io/v1", kind: "CreateOptions"}}}')
answer=$(curl -fsS --cacert "$WORK/ca/ca.crt" -H 'content-type: application/json' \
  --data-binary "$review" "https://localhost:$webhook_port/validate")
expect "webhook answer (uid, allowed)" "$(jq -r '"\(.response.uid) \(.response.allowed)"' <<<"$answer")" "image-test-1 false"
[[ "$(jq -r '.response.status.message' <<<"$answer")" == *APG001* ]] ||
  die "the webhook's denial does not name APG001: $answer"
log "ok: the webhook (TLS from the mounted certificate) denies the APG001 example"

runc kill "$CONTAINER" TERM
deadline=$((SECONDS + 20))
while kill -0 "$runc_pid" 2>/dev/null; do
  ((SECONDS < deadline)) || die "apiguard run did not stop within 20 s of SIGTERM"
  sleep 0.2
done
rc=0
wait "$runc_pid" || rc=$?
runc delete --force "$CONTAINER" >/dev/null 2>&1 || true
[[ $rc -eq 0 ]] || die "apiguard run exited $rc on SIGTERM:"$'\n'"$(tail -20 "$WORK/run.log")"
log "ok: apiguard run exits 0 on SIGTERM"
if grep -q '"level":"ERROR"' "$WORK/run.log"; then
  die "apiguard run logged errors:"$'\n'"$(grep '"level":"ERROR"' "$WORK/run.log")"
fi
log "image $tag: all checks passed (log of the run: $WORK/run.log)"
