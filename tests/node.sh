#!/usr/bin/env bash
# A real Kubernetes node on this machine, joined to a control plane of tests/cluster.sh:
# containerd + runc, the CNI bridge, kubelet, kube-proxy (iptables), kube-scheduler, kube-router
# (NetworkPolicy enforcement only) and CoreDNS (a pod, Service kube-system/kube-dns), with the
# local images of tests/tools.sh imported. Pods get 10.244.0.0/24 on the bridge cni0 and
# Services 10.96.0.0/16: nothing is routed off the machine. One node per machine (the bridge, the
# pod range and the kubelet's ports are fixed).
#
# Called by tests/cluster.sh (`up --with-node`, `run DIR --with-node`); by hand only to debug:
#   tests/node.sh node-ip          the address the node and the apiserver advertise
#   tests/node.sh start DIR        DIR: a control plane started by `tests/cluster.sh run DIR
#                                  --with-node` (its node credentials); waits until the node is
#                                  Ready and CoreDNS answers; writes DIR/node/node.env
#   tests/node.sh running DIR      exit 0 when every node process of DIR runs
#   tests/node.sh stop DIR         deletes the pods (while the apiserver answers), stops every
#                                  process by PID, and removes every trace: mounts, network
#                                  namespaces, the bridge, iptables chains and ipsets of
#                                  CNI/kube-proxy/kube-router, cgroups, files the kubelet writes
#                                  outside DIR; restores the sysctls it and the kubelet change
#   tests/node.sh import DIR TAR   import an image archive into the node's containerd
#   tests/node.sh operator-image DIR BINARY   build the operator image from the Dockerfile's
#                                  final stage (tests/image.sh build) and import it
#
# Needs root, and `tests/tools.sh node` (APIGUARD_KUBELET ... in target/tools/env.sh).
# Settings this machine needs, and why:
#   - containerd `restrict_oom_score_adj = true`: root here lacks CAP_SYS_RESOURCE, so runc
#     cannot give a sandbox its oom_score_adj of -998 ("can't get final child's PID from pipe");
#   - kubelet `failCgroupV1: false`, `cgroupDriver: cgroupfs`, `failSwapOn: false` (cgroup v1
#     hybrid, no systemd);
#   - the kubelet sets vm.overcommit_memory=1, kernel.panic=10, kernel.panic_on_oops=1: `stop`
#     puts back the values found at `start`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NODE_NAME=apiguard-test-node
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/16
CLUSTER_DNS=10.96.0.10
CLUSTER_DOMAIN=cluster.local
BRIDGE=cni0
# The node's fixed ports: below the kernel's ephemeral range (a client connection holding one of
# them as its local port makes the listener fail "address already in use" until it closes: the
# kube-proxy health port was seen taken for a minute) and outside tests/cluster.sh's free_port
# range (20000-31999). `start` checks both before it starts anything.
KUBELET_PORT=11250
KUBELET_HEALTHZ_PORT=11248
PROXY_METRICS_PORT=11249
PROXY_HEALTHZ_PORT=11256
ROUTER_HEALTH_PORT=11244
SCHEDULER_PORT=11259
FIXED_PORTS=("$KUBELET_PORT" "$KUBELET_HEALTHZ_PORT" "$PROXY_METRICS_PORT" "$PROXY_HEALTHZ_PORT" "$ROUTER_HEALTH_PORT" "$SCHEDULER_PORT")
READY_TIMEOUT=${APIGUARD_NODE_READY_TIMEOUT:-180}
# The processes, in start order (stopped in reverse).
COMPONENTS=(containerd kubelet kube-proxy kube-router kube-scheduler)
SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables vm.overcommit_memory kernel.panic kernel.panic_on_oops)

log() { printf '[node] %s\n' "$*" >&2; }
die() { printf '[node] error: %s\n' "$*" >&2; exit 1; }

node_ip() {
  local ip=${APIGUARD_NODE_IP-}
  [[ -n "$ip" ]] || ip=$(ip -4 -o addr show scope global | awk '{ sub(/\/.*/, "", $4); print $4; exit }')
  [[ -n "$ip" ]] || die "this machine has no global IPv4 address to advertise (set APIGUARD_NODE_IP)"
  printf '%s\n' "$ip"
}

load_tools() {
  if [[ -f "$ROOT/target/tools/env.sh" ]]; then
    # shellcheck source=/dev/null
    source "$ROOT/target/tools/env.sh"
  fi
  local var
  for var in APIGUARD_KUBELET APIGUARD_KUBE_PROXY APIGUARD_KUBE_SCHEDULER APIGUARD_KUBE_ROUTER; do
    [[ -n "${!var-}" && -x "${!var}" ]] || die "$var (${!var-unset}) is not an executable: run tests/tools.sh node"
  done
  [[ -n "${APIGUARD_NODE_IMAGES-}" && -f "$APIGUARD_NODE_IMAGES/pause.tar" ]] ||
    die "the node images (${APIGUARD_NODE_IMAGES-unset}) are missing: run tests/tools.sh node"
  local cmd
  for cmd in containerd ctr runc iptables ipset conntrack ip kubectl; do
    command -v "$cmd" >/dev/null || die "$cmd is not installed: run tests/tools.sh node"
  done
  [[ -x /usr/lib/cni/bridge ]] || die "the CNI plugins are not installed: run tests/tools.sh node"
  [[ $(id -u) -eq 0 ]] || die "a node needs root (containerd, runc, iptables)"
}

# --- configuration files ---------------------------------------------------------------------

write_configs() { # DIR NODE_IP
  local dir=$1 node="$1/node" ip=$2
  mkdir -p "$node/cni/net.d" "$node/cni/ipam" "$node/containerd/root" "$node/containerd/state" \
    "$node/kubelet" "$node/pids"
  cat >"$node/containerd.toml" <<EOF
version = 2
root = "$node/containerd/root"
state = "$node/containerd/state"
[grpc]
  address = "$node/containerd/state/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$APIGUARD_PAUSE_IMAGE"
  enable_selinux = false
  # root lacks CAP_SYS_RESOURCE here: runc cannot lower oom_score_adj (a sandbox wants -998)
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "$(command -v runc)"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$node/cni/net.d"
EOF
  cat >"$node/cni/net.d/10-bridge.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "apiguard-test",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}],
              "dataDir": "$node/cni/ipam"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  # syncFrequency 10s: mounted Secrets follow a renewal within seconds (the default is 1m).
  cat >"$node/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$node/containerd/state/containerd.sock
address: $ip
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $dir/pki/client-ca.crt}
authorization:
  mode: Webhook
failSwapOn: false
resolvConf: /etc/resolv.conf
clusterDNS: [$CLUSTER_DNS]
clusterDomain: $CLUSTER_DOMAIN
syncFrequency: 10s
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
  nodefs.inodesFree: "1%"
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
serializeImagePulls: false
registerNode: true
EOF
  cat >"$node/kube-proxy-config.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection:
  kubeconfig: $node/kube-proxy.kubeconfig
hostnameOverride: $NODE_NAME
bindAddress: $ip
clusterCIDR: $POD_CIDR
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
healthzBindAddress: 127.0.0.1:$PROXY_HEALTHZ_PORT
conntrack:
  maxPerCore: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
iptables:
  localhostNodePorts: false
EOF
}

# --- processes ---------------------------------------------------------------------------------

spawn() { # DIR NAME BINARY ARGS...: in its own session, pid in DIR/node/pids/NAME.pid
  local dir=$1 name=$2
  shift 2
  setsid "$@" >"$dir/logs/$name.log" 2>&1 </dev/null &
  echo "$!" >"$dir/node/pids/$name.pid"
  log "started $name (pid $!), log: $dir/logs/$name.log"
}

alive() { # DIR NAME
  [[ -f "$1/node/pids/$2.pid" ]] && kill -0 "$(cat "$1/node/pids/$2.pid")" 2>/dev/null
}

# Waits until COMMAND succeeds; dies with the log of NAME when NAME exits or time runs out.
await() { # DIR NAME WHAT COMMAND...
  local dir=$1 name=$2 what=$3 deadline=$((SECONDS + READY_TIMEOUT))
  shift 3
  until "$@" >/dev/null 2>&1; do
    if ! alive "$dir" "$name"; then
      tail -n 30 "$dir/logs/$name.log" >&2 || true
      die "$name exited before $what (log: $dir/logs/$name.log)"
    fi
    ((SECONDS < deadline)) || die "$what: not within ${READY_TIMEOUT}s (log: $dir/logs/$name.log)"
    sleep 0.5
  done
}

ctr_() { # DIR ARGS...
  local dir=$1
  shift
  ctr --address "$dir/node/containerd/state/containerd.sock" -n k8s.io "$@"
}

import_image() { # DIR TAR
  ctr_ "$1" images import "$2" >/dev/null || die "ctr images import $2 failed"
}

kubectl_() { # DIR ARGS...
  local dir=$1
  shift
  kubectl --kubeconfig "$dir/kubeconfig" "$@"
}

node_ready() { # DIR
  [[ "$(kubectl_ "$1" get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}

# Dies naming a fixed port another process listens on, or one the kernel may hand out as the
# local port of a connection.
check_ports() {
  local low high port
  read -r low high </proc/sys/net/ipv4/ip_local_port_range
  for port in "${FIXED_PORTS[@]}"; do
    ((port < low || port > high)) ||
      die "port $port is in this machine's ephemeral range $low-$high (net.ipv4.ip_local_port_range): a connection may hold it"
    ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || die "port $port is taken: another process listens on it"
  done
}

another_node() {
  ip link show "$BRIDGE" >/dev/null 2>&1 && return 0
  (exec 3<>"/dev/tcp/127.0.0.1/$KUBELET_HEALTHZ_PORT") 2>/dev/null
}

start() { # DIR
  local dir=${1:?start needs the control plane state directory} ip sysctl t0=$SECONDS
  dir=$(cd "$dir" && pwd)
  [[ -f "$dir/node/kubelet.kubeconfig" ]] ||
    die "$dir has no node credentials: start the control plane with tests/cluster.sh run DIR --with-node"
  load_tools
  another_node && die "another test node runs on this machine (bridge $BRIDGE or a kubelet exists): stop it first (tests/cluster.sh down)"
  check_ports
  ip=$(node_ip)
  write_configs "$dir" "$ip"
  # What the node changes in the kernel, put back by stop.
  for sysctl in "${SYSCTLS[@]}"; do
    printf '%s=%s\n' "$sysctl" "$(sysctl -n "$sysctl" 2>/dev/null || echo)" >>"$dir/node/sysctl.saved"
  done
  modprobe br_netfilter 2>/dev/null || true
  sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1

  spawn "$dir" containerd containerd --config "$dir/node/containerd.toml"
  await "$dir" containerd "containerd answers" ctr --address "$dir/node/containerd/state/containerd.sock" version
  local image
  for image in pause toolbox echo coredns envoy; do import_image "$dir" "$APIGUARD_NODE_IMAGES/$image.tar"; done
  log "imported the node images ($((SECONDS - t0))s)"

  spawn "$dir" kubelet "$APIGUARD_KUBELET" --config="$dir/node/kubelet-config.yaml" \
    --kubeconfig="$dir/node/kubelet.kubeconfig" --root-dir="$dir/node/kubelet/root" \
    --cert-dir="$dir/node/kubelet/pki" --hostname-override="$NODE_NAME" --node-ip="$ip" --v=2
  await "$dir" kubelet "node $NODE_NAME Ready" node_ready "$dir"
  log "node $NODE_NAME Ready ($((SECONDS - t0))s)"
  spawn "$dir" kube-proxy "$APIGUARD_KUBE_PROXY" --config="$dir/node/kube-proxy-config.yaml" --v=2
  spawn "$dir" kube-router "$APIGUARD_KUBE_ROUTER" --kubeconfig="$dir/node/kube-router.kubeconfig" \
    --hostname-override="$NODE_NAME" --run-router=false --run-firewall=true --run-service-proxy=false \
    --run-loadbalancer=false --service-cluster-ip-range="$SERVICE_CIDR" --health-port=$ROUTER_HEALTH_PORT --v=2
  spawn "$dir" kube-scheduler "$APIGUARD_KUBE_SCHEDULER" --kubeconfig="$dir/node/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig="$dir/node/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig="$dir/node/kube-scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=$SCHEDULER_PORT --leader-elect=false --v=1
  await "$dir" kube-router "kube-router healthy" curl -fsS "http://127.0.0.1:$ROUTER_HEALTH_PORT/healthz"
  await "$dir" kube-proxy "kube-proxy healthy" curl -fsS "http://127.0.0.1:$PROXY_HEALTHZ_PORT/healthz"
  start_dns "$dir"
  {
    echo "NODE_NAME=$NODE_NAME"
    echo "NODE_IP=$ip"
    echo "APIGUARD_TOOLBOX_IMAGE=$APIGUARD_TOOLBOX_IMAGE"
    echo "APIGUARD_ECHO_IMAGE=$APIGUARD_ECHO_IMAGE"
    echo "APIGUARD_ENVOY_IMAGE=$APIGUARD_ENVOY_IMAGE"
  } >"$dir/node/node.env"
  log "node ready in $((SECONDS - t0))s: pods on $BRIDGE $POD_CIDR, Services $SERVICE_CIDR, DNS $CLUSTER_DNS"
}

# CoreDNS as kube-system/coredns behind Service kube-dns (the names and labels clusters use), so
# pods resolve <service>.<namespace>.svc.cluster.local, and NetworkPolicies that allow DNS to
# pods match it. It answers the cluster domain only: nothing is forwarded off the machine.
start_dns() { # DIR
  local dir=$1
  kubectl_ "$dir" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- {apiGroups: [""], resources: [endpoints, services, pods, namespaces], verbs: [list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:53 {
        errors
        health :8080
        ready :8181
        kubernetes $CLUSTER_DOMAIN in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
        }
        cache 30
        loadbalance
        reload
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      dnsPolicy: Default
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        # port 53 without a capability
        sysctls: [{name: net.ipv4.ip_unprivileged_port_start, value: "53"}]
      containers:
      - name: coredns
        image: $APIGUARD_COREDNS_IMAGE
        imagePullPolicy: Never
        args: [-conf, /etc/coredns/Corefile]
        ports:
        - {name: dns, containerPort: 53, protocol: UDP}
        - {name: dns-tcp, containerPort: 53, protocol: TCP}
        readinessProbe: {httpGet: {path: /ready, port: 8181}, periodSeconds: 2}
        livenessProbe: {httpGet: {path: /health, port: 8080}, periodSeconds: 10}
        securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
        volumeMounts: [{name: config, mountPath: /etc/coredns, readOnly: true}]
      volumes: [{name: config, configMap: {name: coredns}}]
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: $CLUSTER_DNS
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: 53}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
EOF
  kubectl_ "$dir" -n kube-system rollout status deployment/coredns --timeout="${READY_TIMEOUT}s" >&2 ||
    die "CoreDNS did not become ready: $(kubectl_ "$dir" -n kube-system describe pods -l k8s-app=kube-dns | tail -20)"
}

running() { # DIR
  local dir=${1:?running needs the control plane state directory} c
  for c in "${COMPONENTS[@]}"; do alive "$dir" "$c" || return 1; done
}

# --- teardown ----------------------------------------------------------------------------------

stop_pid() { # PIDFILE
  [[ -f $1 ]] || return 0
  local p i
  p=$(cat "$1")
  if kill -0 "$p" 2>/dev/null; then
    kill -TERM "$p"
    for i in $(seq 1 60); do
      kill -0 "$p" 2>/dev/null || break
      sleep 0.5
    done
    kill -KILL "$p" 2>/dev/null || true
  fi
  rm -f "$1"
}

stop() { # DIR
  local dir=${1:?stop needs the control plane state directory} pids sock c
  [[ -d "$dir/node" ]] || return 0
  # Best effort from here on: every step runs, whatever the previous one found.
  set +e +o pipefail
  dir=$(cd "$dir" && pwd)
  pids="$dir/node/pids"
  sock="$dir/node/containerd/state/containerd.sock"
  # 1. the kubelet tears the pods down (CNI DEL, unmounts) while the apiserver still answers
  if alive "$dir" kubelet && kubectl_ "$dir" get --raw /readyz >/dev/null 2>&1; then
    timeout 60 kubectl_ "$dir" delete pods --all -A --grace-period=1 --wait=true >/dev/null 2>&1 || true
  fi
  stop_pid "$pids/kube-scheduler.pid"
  stop_pid "$pids/kube-router.pid"
  [[ -x "${APIGUARD_KUBE_ROUTER-}" ]] || load_tools_quietly
  [[ -x "${APIGUARD_KUBE_ROUTER-}" ]] && "$APIGUARD_KUBE_ROUTER" --cleanup-config >/dev/null 2>&1 || true
  stop_pid "$pids/kube-proxy.pid"
  [[ -x "${APIGUARD_KUBE_PROXY-}" ]] && "$APIGUARD_KUBE_PROXY" --cleanup >/dev/null 2>&1 || true
  stop_pid "$pids/kubelet.pid"
  # 2. what is left in containerd, then containerd and its shims
  if alive "$dir" containerd; then
    for c in $(ctr --address "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$sock" -n k8s.io tasks kill -s KILL "$c" >/dev/null 2>&1 || true
    done
    sleep 1
    for c in $(ctr --address "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$sock" -n k8s.io tasks delete -f "$c" >/dev/null 2>&1 || true
    done
    for c in $(ctr --address "$sock" -n k8s.io containers ls -q 2>/dev/null); do
      ctr --address "$sock" -n k8s.io containers delete "$c" >/dev/null 2>&1 || true
    done
  fi
  stop_pid "$pids/containerd.pid"
  for c in $(pgrep -f "containerd-shim-runc-v2 .*-address $sock" || true); do kill -KILL "$c" 2>/dev/null || true; done
  # 3. mounts (deepest first) and network namespaces
  local m
  for m in $(awk '{print $2}' /proc/mounts | grep -E "^$dir/|^/run/netns/cni-|^/var/run/netns/cni-|^/run/containerd/" | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  rm -f /run/netns/cni-*
  ip link del "$BRIDGE" 2>/dev/null || true
  # 4. iptables chains and ipsets of CNI, kube-proxy, kube-router, the kubelet
  local ipt tbl rules ch r s
  for ipt in iptables ip6tables; do
    for tbl in filter nat mangle raw; do
      rules=$($ipt-save -t $tbl 2>/dev/null) || continue
      echo "$rules" | grep -E '^-A (INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) .*-j (KUBE|CNI)' | sed 's/^-A/-D/' |
        while read -r r; do eval "$ipt -t $tbl $r" 2>/dev/null || true; done
      for ch in $(echo "$rules" | sed -n 's/^:\(\(KUBE\|CNI\)[^ ]*\) .*/\1/p'); do $ipt -t $tbl -F "$ch" 2>/dev/null || true; done
      for ch in $(echo "$rules" | sed -n 's/^:\(\(KUBE\|CNI\)[^ ]*\) .*/\1/p'); do $ipt -t $tbl -X "$ch" 2>/dev/null || true; done
    done
  done
  for s in $(ipset list -n 2>/dev/null | grep -E '^(KUBE|kube-router|inet6:KUBE)' || true); do ipset destroy "$s" 2>/dev/null || true; done
  # 5. files the node writes outside DIR
  rm -rf /var/log/pods /var/log/containers /var/lib/cni /var/lib/kubelet /run/containerd
  # 6. cgroups of the pods (kubepods) and of containerd (k8s.io), deepest first
  local sub n
  for sub in /sys/fs/cgroup/*/; do
    for n in kubepods k8s.io; do
      [[ -d "$sub$n" ]] && find "$sub$n" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
  done
  # 7. the sysctls as they were
  if [[ -f "$dir/node/sysctl.saved" ]]; then
    while IFS='=' read -r s r; do
      [[ -n "$r" ]] && sysctl -qw "$s=$r" 2>/dev/null || true
    done <"$dir/node/sysctl.saved"
    rm -f "$dir/node/sysctl.saved"
  fi
  log "stopped; removed the node's mounts, bridge, iptables chains, ipsets and cgroups"
}

load_tools_quietly() {
  if [[ -f "$ROOT/target/tools/env.sh" ]]; then
    # shellcheck source=/dev/null
    source "$ROOT/target/tools/env.sh"
  fi
}

operator_image() { # DIR BINARY
  local dir=${1:?operator-image needs the control plane state directory} bin=${2:?operator-image needs the apiguard binary}
  local tar="$dir/node/operator-image.tar"
  "$ROOT/tests/image.sh" build "$bin" "$tar" "$dir/node/image-build" >&2
  import_image "$dir" "$tar"
  rm -rf "$dir/node/image-build" "$tar"
}

case "${1-}" in
  node-ip) node_ip ;;
  start) start "${2-}" ;;
  running) running "${2-}" ;;
  stop) stop "${2-}" ;;
  import) import_image "${2:?import needs DIR}" "${3:?import needs an image archive}" ;;
  operator-image) operator_image "${2-}" "${3-}" ;;
  *)
    sed -n '2,31s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 2
    ;;
esac
