#!/usr/bin/env bash
# A real Kubernetes control plane on loopback: etcd, kube-apiserver and kube-controller-manager,
# built by tests/tools.sh. The Rust tests (tests/support/cluster.rs) start the very same thing
# through `run`, so there is one definition of the flags.
#
# Usage:
#   tests/cluster.sh up     build what is missing, start in the background (state: target/cluster)
#   tests/cluster.sh up --with-apiguard   the same, then `apiguard-install` into it (a playground)
#   tests/cluster.sh up --with-node [--with-apiguard]   the control plane plus a real node
#                           (tests/node.sh: containerd, kubelet, kube-proxy, kube-scheduler,
#                           kube-router, CoreDNS); with --with-apiguard the operator image is
#                           built (tests/image.sh build) and the chart installed as a user does
#                           (operator pods, webhook through its Service): the playground
#   tests/cluster.sh env    print `export KUBECONFIG=...` (and, with a node, the local image
#                           names APIGUARD_ECHO_IMAGE, APIGUARD_TOOLBOX_IMAGE, APIGUARD_ENVOY_IMAGE):
#                           eval "$(tests/cluster.sh env)"
#   tests/cluster.sh down   stop it (and a playground's apiguard) and remove its state
#   tests/cluster.sh apiguard-install DIR   into the running control plane of state dir DIR:
#                           kubectl apply -f crds/, helm install the chart with webhook.url to a
#                           local `apiguard run` (the chart's ServiceAccount token, the chart
#                           Deployment's environment plus the loopback SANs; it issues its own
#                           serving certificate and sets the webhook's caBundle), started and
#                           ready; state in DIR/apiguard/ (env file: DIR/apiguard/apiguard.env)
#   tests/cluster.sh apiguard-start DIR / apiguard-stop DIR   (re)start or stop that process with
#                           the release's current values (after `helm upgrade`)
#   tests/cluster.sh apiguard-install-node DIR [helm args...]   into the control plane + node
#                           of DIR: the operator image, the CRDs, `helm install` (in-cluster
#                           webhook), the operator pods Ready and the webhook answering
#   tests/cluster.sh run DIR [--with-node]  run in the foreground with state in DIR (empty or absent); writes
#                           DIR/cluster.env when ready; stops (and removes DIR unless
#                           APIGUARD_KEEP_CLUSTER=1) on SIGTERM/SIGINT, when a component exits, or
#                           when the process APIGUARD_CLUSTER_WATCH_PID (if set) is gone.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE="$ROOT/target/cluster"
MARKER=.apiguard-cluster
READY_TIMEOUT=${APIGUARD_CLUSTER_READY_TIMEOUT:-180}
# With a node (run --with-node): the address the apiserver advertises to pods (the `kubernetes`
# Service's endpoint) and its port, 6443 as in most clusters (the chart's NetworkPolicy lets the
# operator reach 443 and 6443).
NODE_IP=""
NODE_API_PORT=6443

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }

# Tool paths: the APIGUARD_* variables, else what tests/tools.sh recorded.
load_tools() {
  if [[ -f "$ROOT/target/tools/env.sh" ]]; then
    local etcd=${APIGUARD_ETCD-} apiserver=${APIGUARD_KUBE_APISERVER-} kcm=${APIGUARD_KUBE_CONTROLLER_MANAGER-}
    # shellcheck source=/dev/null
    source "$ROOT/target/tools/env.sh"
    APIGUARD_ETCD=${etcd:-$APIGUARD_ETCD}
    APIGUARD_KUBE_APISERVER=${apiserver:-$APIGUARD_KUBE_APISERVER}
    APIGUARD_KUBE_CONTROLLER_MANAGER=${kcm:-$APIGUARD_KUBE_CONTROLLER_MANAGER}
  fi
  local var
  for var in APIGUARD_ETCD APIGUARD_KUBE_APISERVER APIGUARD_KUBE_CONTROLLER_MANAGER; do
    [[ -n "${!var-}" && -x "${!var}" ]] || die "$var (${!var-unset}) is not an executable: run tests/tools.sh"
  done
  command -v openssl >/dev/null || die "openssl is needed for the service-account signing key"
  command -v kubectl >/dev/null || die "kubectl is needed to check readiness"
}

# A loopback port nobody listens on (below the ephemeral range, so outgoing connections do not
# take it in the meantime).
TAKEN=" "
free_port() { # VAR: sets it to the port
  local p i
  for i in $(seq 1 200); do
    p=$((20000 + RANDOM % 12000))
    [[ "$TAKEN" != *" $p "* ]] || continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      TAKEN+="$p "
      printf -v "$1" '%s' "$p"
      return 0
    fi
  done
  die "no free loopback port found"
}

new_ca() { # NAME COMMON_NAME: $DIR/pki/NAME.{key,crt}
  openssl ecparam -name prime256v1 -genkey -noout -out "$DIR/pki/$1.key" 2>/dev/null
  openssl req -x509 -new -key "$DIR/pki/$1.key" -subj "/CN=$2" -days 30 -out "$DIR/pki/$1.crt" 2>/dev/null
}

random_token() { od -An -tx1 -N16 /dev/urandom | tr -d ' \n'; }

write_kubeconfig() { # FILE SERVER CA TOKEN USER
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: apiguard-test
  cluster:
    server: $2
    certificate-authority: $3
users:
- name: $5
  user:
    token: $4
contexts:
- name: apiguard-test
  context:
    cluster: apiguard-test
    user: $5
current-context: apiguard-test
EOF
}

# --- the component flags (the one definition) -------------------------------------------------

etcd_flags() { # DIR CLIENT_PORT PEER_PORT
  printf '%s\n' \
    --name=apiguard-test \
    "--data-dir=$1/etcd" \
    "--listen-client-urls=http://127.0.0.1:$2" \
    "--advertise-client-urls=http://127.0.0.1:$2" \
    "--listen-peer-urls=http://127.0.0.1:$3" \
    "--initial-advertise-peer-urls=http://127.0.0.1:$3" \
    "--initial-cluster=apiguard-test=http://127.0.0.1:$3" \
    --unsafe-no-fsync=true \
    --log-level=warn
}

apiserver_flags() { # DIR PORT ETCD_PORT
  printf '%s\n' \
    "--etcd-servers=http://127.0.0.1:$3" \
    "--secure-port=$2" \
    "--cert-dir=$1/pki/serving" \
    "--token-auth-file=$1/pki/tokens.csv" \
    "--client-ca-file=$1/pki/client-ca.crt" \
    "--requestheader-client-ca-file=$1/pki/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User \
    --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    "--proxy-client-cert-file=$1/pki/front-proxy-client.crt" \
    "--proxy-client-key-file=$1/pki/front-proxy-client.key" \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction \
    --allow-privileged=true \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    "--service-account-key-file=$1/pki/sa.pub" \
    "--service-account-signing-key-file=$1/pki/sa.key" \
    --service-cluster-ip-range=10.96.0.0/16 \
    --v=1
  if [[ -z "$NODE_IP" ]]; then
    printf '%s\n' --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --endpoint-reconciler-type=none
  else
    # Pods reach it through the `kubernetes` Service (endpoint NODE_IP, kept by the lease
    # reconciler); it reaches the kubelet (logs, exec) with a client certificate.
    printf '%s\n' --bind-address=0.0.0.0 "--advertise-address=$NODE_IP" --endpoint-reconciler-type=lease \
      --kubelet-preferred-address-types=InternalIP,Hostname \
      "--kubelet-client-certificate=$1/pki/kubelet-client.crt" "--kubelet-client-key=$1/pki/kubelet-client.key"
  fi
}

controller_manager_flags() { # DIR PORT
  printf '%s\n' \
    "--kubeconfig=$1/controller-manager.kubeconfig" \
    "--authentication-kubeconfig=$1/controller-manager.kubeconfig" \
    "--authorization-kubeconfig=$1/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 \
    "--secure-port=$2" \
    "--cert-dir=$1/pki/controller-manager" \
    --leader-elect=false \
    --use-service-account-credentials=true \
    "--service-account-private-key-file=$1/pki/sa.key" \
    "--root-ca-file=$1/pki/ca.crt" \
    --controllers=garbage-collector-controller,namespace-controller,deployment-controller,replicaset-controller,serviceaccount-controller,serviceaccount-token-controller,root-ca-certificate-publisher-controller,clusterrole-aggregation-controller,resourcequota-controller,endpoints-controller,endpointslice-controller,job-controller,cronjob-controller,statefulset-controller,daemonset-controller,disruption-controller,pod-garbage-collector-controller,ttl-after-finished-controller${NODE_IP:+,node-lifecycle-controller} \
    --v=1
  # (node-lifecycle-controller: lifts the kubelet's registration taint not-ready:NoSchedule.)
}

# --- run: the supervisor ----------------------------------------------------------------------

PIDS=()
NAMES=()
DIR=""

start() { # NAME BINARY FLAGS_FUNCTION ARGS...
  local name=$1 bin=$2 fn=$3 flags
  shift 3
  mapfile -t flags < <("$fn" "$@")
  printf '%s\n' "${flags[@]}" >"$DIR/flags/$name"
  "$bin" "${flags[@]}" >"$DIR/logs/$name.log" 2>&1 </dev/null &
  PIDS+=("$!")
  NAMES+=("$name")
  log "started $name (pid $!), log: $DIR/logs/$name.log"
}

all_running() {
  local i
  for i in "${!PIDS[@]}"; do
    if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
      log "${NAMES[$i]} exited; last lines of its log:"
      tail -n 20 "$DIR/logs/${NAMES[$i]}.log" >&2 || true
      return 1
    fi
  done
}

node_running() {
  [[ -z "$NODE_IP" ]] && return 0
  "$ROOT/tests/node.sh" running "$DIR" && return 0
  log "a node process exited (logs: $DIR/logs/)"
  return 1
}

# The node's users (token authentication, as the control plane's own): the kubelet as
# system:node:<name> (Node authorizer, NodeRestriction), kube-proxy and kube-scheduler as the
# users their bootstrap RBAC binds, kube-router as a member of system:masters. And the client
# certificate the apiserver presents to the kubelet (logs, exec), from the client CA the
# kubelet trusts.
node_credentials() {
  mkdir -p "$DIR/node"
  local name user group token
  while read -r name user group; do
    token=$(random_token)
    echo "$token" >"$DIR/node/$name.token"
    echo "$token,$user,apiguard-$name${group:+,\"$group\"}" >>"$DIR/pki/tokens.csv"
  done <<EOF
kubelet system:node:apiguard-test-node system:nodes
kube-proxy system:kube-proxy
kube-scheduler system:kube-scheduler
kube-router apiguard-kube-router system:masters
EOF
  chmod 600 "$DIR"/node/*.token
  openssl ecparam -name prime256v1 -genkey -noout -out "$DIR/pki/kubelet-client.key" 2>/dev/null
  openssl req -new -key "$DIR/pki/kubelet-client.key" -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" 2>/dev/null |
    openssl x509 -req -CA "$DIR/pki/client-ca.crt" -CAkey "$DIR/pki/client-ca.key" -CAcreateserial \
      -days 30 -out "$DIR/pki/kubelet-client.crt" 2>/dev/null
}

watched_alive() { [[ -z "${APIGUARD_CLUSTER_WATCH_PID-}" ]] || kill -0 "$APIGUARD_CLUSTER_WATCH_PID" 2>/dev/null; }

stop_all() {
  local i pid deadline
  trap - EXIT INT TERM
  # The node first: its pods are deleted while the apiserver still answers.
  if [[ -n "$NODE_IP" ]]; then "$ROOT/tests/node.sh" stop "$DIR" || log "the node did not stop cleanly"; fi
  # In reverse order of start, each before the next: the apiserver shuts down quickly only while
  # etcd still answers.
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    pid=${PIDS[$i]}
    kill -TERM "$pid" 2>/dev/null || continue
    deadline=$((SECONDS + 15))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if [[ "${APIGUARD_KEEP_CLUSTER-}" == 1 ]]; then
    log "stopped; state kept in $DIR (APIGUARD_KEEP_CLUSTER=1)"
  elif [[ -f "$DIR/$MARKER" ]]; then
    rm -rf "$DIR"
    log "stopped; removed $DIR"
  fi
}

run() {
  DIR=${1:?run needs a state directory}
  case "${2-}" in
    "") ;;
    --with-node) NODE_IP=$("$ROOT/tests/node.sh" node-ip) ;;
    *) die "unknown option $2: run takes --with-node" ;;
  esac
  mkdir -p "$DIR"
  DIR=$(cd "$DIR" && pwd)
  [[ -z "$(ls -A "$DIR" | grep -v '^supervisor.log$' || true)" ]] || die "$DIR is not empty"
  load_tools
  touch "$DIR/$MARKER"
  trap stop_all EXIT
  trap 'exit 143' INT TERM
  mkdir -p "$DIR/pki/serving" "$DIR/pki/controller-manager" "$DIR/logs" "$DIR/flags"
  echo "$$" >"$DIR/supervisor.pid"

  local etcd_port etcd_peer_port api_port kcm_port admin_token kcm_token server deadline
  free_port etcd_port
  free_port etcd_peer_port
  free_port api_port
  if [[ -n "$NODE_IP" ]]; then
    api_port=$NODE_API_PORT
    # (its self-signed certificate names localhost, the node's address and the Service IP)
    server="https://localhost:$api_port"
    ! (exec 3<>"/dev/tcp/127.0.0.1/$api_port") 2>/dev/null ||
      die "port $api_port is taken (another control plane with a node?): tests/cluster.sh down"
  fi
  free_port kcm_port
  [[ -n "$NODE_IP" ]] || server="https://127.0.0.1:$api_port"

  admin_token=$(random_token)
  kcm_token=$(random_token)
  {
    echo "$admin_token,admin,apiguard-admin,\"system:masters\""
    echo "$kcm_token,system:kube-controller-manager,apiguard-kube-controller-manager"
  } >"$DIR/pki/tokens.csv"
  openssl ecparam -name prime256v1 -genkey -noout -out "$DIR/pki/sa.key" 2>/dev/null
  openssl ec -in "$DIR/pki/sa.key" -pubout -out "$DIR/pki/sa.pub" 2>/dev/null
  # The client and front-proxy (aggregation) CAs every real cluster has; the apiserver publishes
  # them in kube-system/extension-apiserver-authentication for delegated authentication.
  new_ca client-ca apiguard-test-client-ca
  new_ca front-proxy-ca apiguard-test-front-proxy-ca
  openssl ecparam -name prime256v1 -genkey -noout -out "$DIR/pki/front-proxy-client.key" 2>/dev/null
  openssl req -new -key "$DIR/pki/front-proxy-client.key" -subj /CN=front-proxy-client 2>/dev/null |
    openssl x509 -req -CA "$DIR/pki/front-proxy-ca.crt" -CAkey "$DIR/pki/front-proxy-ca.key" \
      -CAcreateserial -days 30 -out "$DIR/pki/front-proxy-client.crt" 2>/dev/null
  [[ -z "$NODE_IP" ]] || node_credentials
  chmod 600 "$DIR"/pki/*.key "$DIR/pki/tokens.csv"

  start etcd "$APIGUARD_ETCD" etcd_flags "$DIR" "$etcd_port" "$etcd_peer_port"
  start kube-apiserver "$APIGUARD_KUBE_APISERVER" apiserver_flags "$DIR" "$api_port" "$etcd_port"

  # The apiserver writes its self-signed serving certificate (leaf, then its CA) into --cert-dir;
  # the CA is what clients trust.
  deadline=$((SECONDS + READY_TIMEOUT))
  until [[ -s "$DIR/pki/serving/apiserver.crt" ]]; do
    all_running || exit 1
    ((SECONDS < deadline)) || die "kube-apiserver wrote no serving certificate within ${READY_TIMEOUT}s"
    sleep 0.2
  done
  sleep 0.2 # the file is written in one call; give it a moment to be complete
  awk '/-----BEGIN CERTIFICATE-----/ { n++; buf = "" } { buf = buf $0 "\n" } END { printf "%s", buf }' \
    "$DIR/pki/serving/apiserver.crt" >"$DIR/pki/ca.crt"
  write_kubeconfig "$DIR/kubeconfig" "$server" "$DIR/pki/ca.crt" "$admin_token" admin
  write_kubeconfig "$DIR/controller-manager.kubeconfig" "$server" "$DIR/pki/ca.crt" "$kcm_token" \
    system:kube-controller-manager

  until kubectl --kubeconfig "$DIR/kubeconfig" get --raw /readyz >/dev/null 2>&1; do
    all_running || exit 1
    ((SECONDS < deadline)) || die "kube-apiserver not ready within ${READY_TIMEOUT}s (log: $DIR/logs/kube-apiserver.log)"
    sleep 0.5
  done
  log "kube-apiserver ready at $server"

  start kube-controller-manager "$APIGUARD_KUBE_CONTROLLER_MANAGER" controller_manager_flags "$DIR" "$kcm_port"
  if [[ -n "$NODE_IP" ]]; then
    local name
    for name in kubelet kube-proxy kube-router kube-scheduler; do
      write_kubeconfig "$DIR/node/$name.kubeconfig" "$server" "$DIR/pki/ca.crt" "$(cat "$DIR/node/$name.token")" "$name"
    done
    "$ROOT/tests/node.sh" start "$DIR"
  fi

  {
    echo "KUBECONFIG=$DIR/kubeconfig"
    echo "SERVER=$server"
    echo "TOKEN=$admin_token"
    echo "CA=$DIR/pki/ca.crt"
    [[ -z "$NODE_IP" ]] || cat "$DIR/node/node.env"
  } >"$DIR/cluster.env.tmp"
  mv "$DIR/cluster.env.tmp" "$DIR/cluster.env"
  log "ready: export KUBECONFIG=$DIR/kubeconfig"

  while all_running && node_running && watched_alive; do sleep 1; done
  watched_alive || log "process ${APIGUARD_CLUSTER_WATCH_PID} is gone; stopping"
}

# --- apiguard in the control plane (the playground and tests/e2e/e2e_journey.rs) ----------------

RELEASE=apiguard
RELEASE_NS=apiguard-system
APIGUARD_READY_TIMEOUT=${APIGUARD_READY_TIMEOUT:-60}
# The chart's controller.enabled for the local operator (true: controller + webhook, as the
# chart deploys it by default).
APIGUARD_CONTROLLER=${APIGUARD_CONTROLLER:-true}

apiguard_bin() {
  local bin=${APIGUARD_BIN:-$ROOT/target/debug/apiguard}
  if [[ -z "${APIGUARD_BIN-}" && ! -x "$bin" ]]; then
    (cd "$ROOT" && cargo build --bin apiguard) >&2 || die "cargo build --bin apiguard failed"
  fi
  [[ -x "$bin" ]] || die "$bin is not an executable (APIGUARD_BIN)"
  printf '%s\n' "$bin"
}

helm_bin() {
  local helm=${APIGUARD_HELM-}
  if [[ -z "$helm" && -f "$ROOT/target/tools/env.sh" ]]; then
    # shellcheck source=/dev/null
    helm=$(source "$ROOT/target/tools/env.sh" && echo "${APIGUARD_HELM-}")
  fi
  [[ -n "$helm" && -x "$helm" ]] || die "helm (${helm:-unset}) is not an executable: run tests/tools.sh"
  printf '%s\n' "$helm"
}

# The environment the chart gives its Deployment, for the release's current values, one
# NAME=VALUE a line (fieldRef metadata.namespace becomes the release namespace).
chart_env() { # KUBECONFIG
  local helm values
  helm=$(helm_bin)
  values=$(mktemp)
  "$helm" --kubeconfig "$1" get values "$RELEASE" -n "$RELEASE_NS" -o yaml >"$values"
  # The URL only moves the webhook out of the cluster; render the in-cluster Deployment.
  "$helm" template "$RELEASE" "$ROOT/charts/apiguard" -n "$RELEASE_NS" -f "$values" \
    --set webhook.url= --set webhook.caBundle= --show-only templates/deployment.yaml |
    kubectl --kubeconfig "$1" create --dry-run=client -f - -o \
      jsonpath='{range .spec.template.spec.containers[0].env[*]}{.name}{"|"}{.valueFrom.fieldRef.fieldPath}{"|"}{.value}{"\n"}{end}' |
    while IFS='|' read -r name field value; do
      case "$field" in
        "") printf '%s=%s\n' "$name" "$value" ;;
        metadata.namespace) printf '%s=%s\n' "$name" "$RELEASE_NS" ;;
        metadata.name) printf '%s=%s\n' "$name" "apiguard-local" ;;
        *) die "the chart's $name comes from $field, which a local process has no value for" ;;
      esac
    done
  rm -f "$values"
}

apiguard_start() { # DIR
  local dir=${1:?apiguard-start needs the control plane state directory} kubeconfig bin state pid deadline
  dir=$(cd "$dir" && pwd)
  state="$dir/apiguard"
  kubeconfig="$dir/kubeconfig"
  [[ -f "$state/apiguard.env" ]] || die "$state/apiguard.env is missing: run apiguard-install first"
  # shellcheck source=/dev/null
  source "$state/apiguard.env"
  if [[ -f "$state/pid" ]] && kill -0 "$(cat "$state/pid")" 2>/dev/null; then
    die "apiguard is already running (pid $(cat "$state/pid"))"
  fi
  command -v curl >/dev/null || die "curl is needed to check apiguard's readiness"
  bin=$(apiguard_bin)
  local -a env=()
  local dns_names
  # What differs from a pod: loopback listeners, and the loopback names the apiserver calls
  # (webhook.url) added to the serving certificate's SANs.
  mapfile -t env < <(chart_env "$kubeconfig" |
    grep -Ev '^(APIGUARD_WEBHOOK_ADDR|APIGUARD_ADMIN_ADDR|APIGUARD_WEBHOOK_DNS_NAMES)=')
  ((${#env[@]} > 0)) || die "the chart's Deployment has no environment"
  dns_names=$(chart_env "$kubeconfig" | sed -n 's/^APIGUARD_WEBHOOK_DNS_NAMES=//p')
  env+=(
    "APIGUARD_WEBHOOK_ADDR=127.0.0.1:$WEBHOOK_PORT"
    "APIGUARD_ADMIN_ADDR=127.0.0.1:$ADMIN_PORT"
    "APIGUARD_WEBHOOK_DNS_NAMES=${dns_names:+$dns_names,}localhost"
    "APIGUARD_WEBHOOK_IP_ADDRESSES=127.0.0.1"
    "KUBECONFIG=$state/operator.kubeconfig"
    "RUST_LOG=${RUST_LOG:-info}"
  )
  printf '%s\n' "${env[@]}" >"$state/process.env"
  (
    # Like a pod: only the environment the chart gives it.
    env -i PATH="$PATH" "${env[@]}" "$bin" run >>"$state/apiguard.log" 2>&1 </dev/null &
    op=$!
    echo "$op" >"$state/pid"
    # Never outlive the process that asked for it (a test), if one was named.
    while kill -0 "$op" 2>/dev/null; do
      if [[ -n "${APIGUARD_CLUSTER_WATCH_PID-}" ]] && ! kill -0 "$APIGUARD_CLUSTER_WATCH_PID" 2>/dev/null; then
        kill -TERM "$op" 2>/dev/null || true
      fi
      sleep 1
    done
  ) </dev/null >/dev/null 2>&1 &
  deadline=$((SECONDS + APIGUARD_READY_TIMEOUT))
  until [[ -s "$state/pid" ]] && curl -fsS "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1; do
    if [[ -s "$state/pid" ]] && ! kill -0 "$(cat "$state/pid")" 2>/dev/null; then
      tail -n 30 "$state/apiguard.log" >&2 || true
      die "apiguard run exited (log: $state/apiguard.log)"
    fi
    ((SECONDS < deadline)) || die "apiguard run not ready within ${APIGUARD_READY_TIMEOUT}s (log: $state/apiguard.log)"
    sleep 0.2
  done
  pid=$(cat "$state/pid")
  log "apiguard run ready (pid $pid): webhook $WEBHOOK_URL, admin http://127.0.0.1:$ADMIN_PORT, log $state/apiguard.log"
}

apiguard_stop() { # DIR
  local dir=${1:?apiguard-stop needs the control plane state directory} pid deadline
  [[ -f "$dir/apiguard/pid" ]] || return 0
  pid=$(cat "$dir/apiguard/pid")
  rm -f "$dir/apiguard/pid"
  kill -TERM "$pid" 2>/dev/null || return 0
  deadline=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  log "apiguard run stopped"
}

apiguard_install() { # DIR [extra helm install args...]
  local dir=${1:?apiguard-install needs the control plane state directory} kubeconfig state bin helm
  shift
  dir=$(cd "$dir" && pwd)
  kubeconfig="$dir/kubeconfig"
  [[ -f "$kubeconfig" ]] || die "$kubeconfig is missing: is the control plane of $dir running?"
  state="$dir/apiguard"
  mkdir -p "$state"
  bin=$(apiguard_bin)
  helm=$(helm_bin)
  local webhook_port admin_port
  free_port webhook_port
  free_port admin_port
  # The apiserver calls the local operator at https://127.0.0.1:PORT; the operator issues its
  # serving certificate (IP SAN 127.0.0.1) from its CA and sets the webhook's caBundle, as in a
  # cluster.
  {
    echo "WEBHOOK_PORT=$webhook_port"
    echo "ADMIN_PORT=$admin_port"
    echo "WEBHOOK_URL=https://127.0.0.1:$webhook_port/validate"
  } >"$state/apiguard.env"

  # What a user does (docs/install.md, "Install with Helm"), plus the out-of-cluster webhook URL.
  kubectl --kubeconfig "$kubeconfig" apply -f "$ROOT/crds/" >&2
  kubectl --kubeconfig "$kubeconfig" wait --for=condition=Established --timeout=60s \
    -f "$ROOT/crds/" >&2
  "$helm" --kubeconfig "$kubeconfig" install "$RELEASE" "$ROOT/charts/apiguard" \
    -n "$RELEASE_NS" --create-namespace \
    --set "webhook.url=https://127.0.0.1:$webhook_port/validate" \
    --set "controller.enabled=$APIGUARD_CONTROLLER" "$@" >&2

  # The operator's credentials: a token of the chart's ServiceAccount, so it runs with exactly
  # the chart's RBAC.
  local token server ca
  token=$(kubectl --kubeconfig "$kubeconfig" -n "$RELEASE_NS" create token "$RELEASE" --duration=24h)
  server=$(kubectl --kubeconfig "$kubeconfig" config view --minify -o jsonpath='{.clusters[0].cluster.server}')
  ca=$(kubectl --kubeconfig "$kubeconfig" config view --minify -o jsonpath='{.clusters[0].cluster.certificate-authority}')
  write_kubeconfig "$state/operator.kubeconfig" "$server" "$ca" "$token" "system:serviceaccount:$RELEASE_NS:$RELEASE"
  chmod 600 "$state/operator.kubeconfig"
  apiguard_start "$dir"
}

# --- apiguard on the node: the chart as a user installs it -------------------------------------

apiguard_install_node() { # DIR [extra helm install args...]
  local dir=${1:?apiguard-install-node needs the control plane state directory} kubeconfig bin helm
  shift
  dir=$(cd "$dir" && pwd)
  kubeconfig="$dir/kubeconfig"
  [[ -f "$dir/node/node.env" ]] || die "$dir has no node: tests/cluster.sh up --with-node"
  # shellcheck source=/dev/null
  source "$dir/node/node.env"
  bin=$(apiguard_bin)
  helm=$(helm_bin)
  local t0=$SECONDS
  "$ROOT/tests/node.sh" operator-image "$dir" "$bin"
  log "operator image built and imported ($((SECONDS - t0))s)"
  kubectl --kubeconfig "$kubeconfig" apply -f "$ROOT/crds/" >&2
  kubectl --kubeconfig "$kubeconfig" wait --for=condition=Established --timeout=60s -f "$ROOT/crds/" >&2
  # docs/install.md, "Install with Helm"; only the Envoy image is a local one.
  "$helm" --kubeconfig "$kubeconfig" install "$RELEASE" "$ROOT/charts/apiguard" \
    -n "$RELEASE_NS" --create-namespace --set "gateway.envoyImage=$APIGUARD_ENVOY_IMAGE" \
    --wait --timeout "${APIGUARD_READY_TIMEOUT}s" "$@" >&2 ||
    die "helm install failed: $(kubectl --kubeconfig "$kubeconfig" -n "$RELEASE_NS" describe pods | tail -30)"
  # The apiserver calls the webhook through its Service: an insecure Ingress is refused.
  local deadline=$((SECONDS + APIGUARD_READY_TIMEOUT)) out
  until out=$(kubectl --kubeconfig "$kubeconfig" create --dry-run=server \
    -f "$ROOT/examples/insecure/APG001-cors-wildcard-origin.yaml" 2>&1 || true) && [[ "$out" == *APG001* ]]; do
    ((SECONDS < deadline)) || die "the in-cluster webhook does not refuse APG001 within ${APIGUARD_READY_TIMEOUT}s: $out"
    sleep 1
  done
  touch "$dir/node/apiguard.installed"
  log "apiguard installed on the node in $((SECONDS - t0))s: operator pods Ready, webhook answering through its Service"
}

# --- the commands for people ------------------------------------------------------------------

running_pid() {
  local pid
  [[ -f "$STATE/supervisor.pid" ]] || return 1
  pid=$(cat "$STATE/supervisor.pid")
  kill -0 "$pid" 2>/dev/null && echo "$pid"
}

up() { # [--with-node] [--with-apiguard]
  local pid deadline with_node=false with_apiguard=false arg
  for arg in "$@"; do
    case "$arg" in
      --with-node) with_node=true ;;
      --with-apiguard) with_apiguard=true ;;
      *) die "unknown option $arg: up takes --with-node and --with-apiguard" ;;
    esac
  done
  if pid=$(running_pid); then
    log "already running (supervisor pid $pid)"
    if $with_node && [[ ! -f "$STATE/node/node.env" ]]; then
      die "it runs without a node: tests/cluster.sh down, then up --with-node"
    fi
    if $with_apiguard; then
      if [[ -f "$STATE/node/node.env" && ! -f "$STATE/node/apiguard.installed" ]]; then
        apiguard_install_node "$STATE"
      elif [[ ! -f "$STATE/node/node.env" && ! -f "$STATE/apiguard/apiguard.env" ]]; then
        apiguard_install "$STATE"
      fi
    fi
    env_cmd
    return 0
  fi
  "$ROOT/tests/tools.sh" kubernetes etcd
  if $with_node; then "$ROOT/tests/tools.sh" node; fi
  if [[ -d "$STATE" ]]; then
    [[ -f "$STATE/$MARKER" ]] || die "$STATE exists and is not a control plane state directory"
    rm -rf "$STATE"
  fi
  mkdir -p "$STATE"
  local run_args=(run "$STATE")
  if $with_node; then run_args+=(--with-node); fi
  setsid "$ROOT/tests/cluster.sh" "${run_args[@]}" >"$STATE/supervisor.log" 2>&1 </dev/null &
  deadline=$((SECONDS + READY_TIMEOUT * 2 + 10))
  until [[ -f "$STATE/cluster.env" ]]; do
    if ! kill -0 "$!" 2>/dev/null; then
      cat "$STATE/supervisor.log" >&2 2>/dev/null || true
      die "the control plane did not start"
    fi
    ((SECONDS < deadline)) || die "the control plane was not ready in time (see $STATE/supervisor.log)"
    sleep 0.5
  done
  if $with_apiguard; then
    if $with_node; then apiguard_install_node "$STATE"; else apiguard_install "$STATE"; fi
  fi
  log "running; logs in $STATE/logs/. Use it with:"
  log "  eval \"\$(tests/cluster.sh env)\" && kubectl get ns"
  env_cmd
}

env_cmd() {
  running_pid >/dev/null || die "not running: tests/cluster.sh up"
  echo "export KUBECONFIG=$STATE/kubeconfig"
  if [[ -f "$STATE/node/node.env" ]]; then
    sed -n 's/^\(APIGUARD_[A-Z_]*_IMAGE=.*\)$/export \1/p' "$STATE/node/node.env"
  fi
}

down() {
  local pid deadline
  if ! pid=$(running_pid); then
    if [[ -f "$STATE/$MARKER" ]]; then rm -rf "$STATE"; fi
    log "not running"
    return 0
  fi
  apiguard_stop "$STATE"
  kill -TERM "$pid"
  # (a node takes longer: its pods are deleted first)
  deadline=$((SECONDS + 150))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  # The supervisor leads its own process group (setsid): take down anything left of it.
  kill -KILL -- "-$pid" 2>/dev/null || true
  if [[ -f "$STATE/$MARKER" ]]; then rm -rf "$STATE"; fi
  log "stopped"
}

case "${1-}" in
  up) up "${@:2}" ;;
  apiguard-install) apiguard_install "${@:2}" ;;
  apiguard-install-node) apiguard_install_node "${@:2}" ;;
  apiguard-start) apiguard_start "${2-}" ;;
  apiguard-stop) apiguard_stop "${2-}" ;;
  down) down ;;
  env) env_cmd ;;
  run) run "${2-}" "${3-}" ;;
  *)
    sed -n '2,32s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 2
    ;;
esac
