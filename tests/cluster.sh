#!/usr/bin/env bash
# A real Kubernetes control plane on loopback: etcd, kube-apiserver and kube-controller-manager,
# built by tests/tools.sh. The Rust tests (tests/support/cluster.rs) start the very same thing
# through `run`, so there is one definition of the flags.
#
# Usage:
#   tests/cluster.sh up     build what is missing, start in the background (state: target/cluster)
#   tests/cluster.sh env    print `export KUBECONFIG=...`:  eval "$(tests/cluster.sh env)"
#   tests/cluster.sh down   stop it and remove its state
#   tests/cluster.sh run DIR  run in the foreground with state in DIR (empty or absent); writes
#                           DIR/cluster.env when ready; stops (and removes DIR unless
#                           APIGUARD_KEEP_CLUSTER=1) on SIGTERM/SIGINT, when a component exits, or
#                           when the process APIGUARD_CLUSTER_WATCH_PID (if set) is gone.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE="$ROOT/target/cluster"
MARKER=.apiguard-cluster
READY_TIMEOUT=${APIGUARD_CLUSTER_READY_TIMEOUT:-180}

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
    --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 \
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
    --endpoint-reconciler-type=none \
    --v=1
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
    --controllers=garbage-collector-controller,namespace-controller,deployment-controller,replicaset-controller,serviceaccount-controller,serviceaccount-token-controller,root-ca-certificate-publisher-controller,clusterrole-aggregation-controller,resourcequota-controller,endpoints-controller,endpointslice-controller,job-controller,cronjob-controller,statefulset-controller,daemonset-controller,disruption-controller,pod-garbage-collector-controller,ttl-after-finished-controller \
    --v=1
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

watched_alive() { [[ -z "${APIGUARD_CLUSTER_WATCH_PID-}" ]] || kill -0 "$APIGUARD_CLUSTER_WATCH_PID" 2>/dev/null; }

stop_all() {
  local i pid deadline
  trap - EXIT INT TERM
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
  free_port kcm_port
  server="https://127.0.0.1:$api_port"

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

  {
    echo "KUBECONFIG=$DIR/kubeconfig"
    echo "SERVER=$server"
    echo "TOKEN=$admin_token"
    echo "CA=$DIR/pki/ca.crt"
  } >"$DIR/cluster.env.tmp"
  mv "$DIR/cluster.env.tmp" "$DIR/cluster.env"
  log "ready: export KUBECONFIG=$DIR/kubeconfig"

  while all_running && watched_alive; do sleep 1; done
  watched_alive || log "process ${APIGUARD_CLUSTER_WATCH_PID} is gone; stopping"
}

# --- the commands for people ------------------------------------------------------------------

running_pid() {
  local pid
  [[ -f "$STATE/supervisor.pid" ]] || return 1
  pid=$(cat "$STATE/supervisor.pid")
  kill -0 "$pid" 2>/dev/null && echo "$pid"
}

up() {
  local pid deadline
  if pid=$(running_pid); then
    log "already running (supervisor pid $pid)"
    echo "export KUBECONFIG=$STATE/kubeconfig"
    return 0
  fi
  "$ROOT/tests/tools.sh" kubernetes etcd
  if [[ -d "$STATE" ]]; then
    [[ -f "$STATE/$MARKER" ]] || die "$STATE exists and is not a control plane state directory"
    rm -rf "$STATE"
  fi
  mkdir -p "$STATE"
  setsid "$ROOT/tests/cluster.sh" run "$STATE" >"$STATE/supervisor.log" 2>&1 </dev/null &
  deadline=$((SECONDS + READY_TIMEOUT + 10))
  until [[ -f "$STATE/cluster.env" ]]; do
    if ! kill -0 "$!" 2>/dev/null; then
      cat "$STATE/supervisor.log" >&2 2>/dev/null || true
      die "the control plane did not start"
    fi
    ((SECONDS < deadline)) || die "the control plane was not ready in time (see $STATE/supervisor.log)"
    sleep 0.5
  done
  log "running; logs in $STATE/logs/. Use it with:"
  log "  eval \"\$(tests/cluster.sh env)\" && kubectl get ns"
  echo "export KUBECONFIG=$STATE/kubeconfig"
}

env_cmd() {
  running_pid >/dev/null || die "not running: tests/cluster.sh up"
  echo "export KUBECONFIG=$STATE/kubeconfig"
}

down() {
  local pid deadline
  if ! pid=$(running_pid); then
    if [[ -f "$STATE/$MARKER" ]]; then rm -rf "$STATE"; fi
    log "not running"
    return 0
  fi
  kill -TERM "$pid"
  deadline=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  # The supervisor leads its own process group (setsid): take down anything left of it.
  kill -KILL -- "-$pid" 2>/dev/null || true
  if [[ -f "$STATE/$MARKER" ]]; then rm -rf "$STATE"; fi
  log "stopped"
}

case "${1-}" in
  up) up ;;
  down) down ;;
  env) env_cmd ;;
  run) run "${2-}" ;;
  *)
    sed -n '2,13s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 2
    ;;
esac
