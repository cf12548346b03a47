#!/usr/bin/env bash
# netpol.sh — NetworkPolicy enforcement for the real node moat-real-0: kube-router's network policy
# controller alone (iptables-nft + ipset in the host's filter table; no routing, no service proxy, no CNI),
# built from the Go module proxy into $MOAT_CACHE. Needs root, the control plane and the real node.
#
#   hack/netpol.sh build            build kube-router (cached) and install Debian's ipset tool when missing
#   hack/netpol.sh up               start it for moat-real-0 (idempotent), wait for its first full sync
#   hack/netpol.sh down             stop it (by PID), remove its iptables rules/chains and ipsets, check the host
#   hack/netpol.sh status           what runs, when it last synced
#   hack/netpol.sh wait-sync [T]    wait for a full sync that started at or after T (epoch seconds, default now)
#   hack/netpol.sh wait-policy NS NAME present|absent [TIMEOUT]
#                                   wait until the rules of NetworkPolicy NS/NAME are in (or gone from)
#                                   the host's filter table: then the policy is enforced (or lifted)
#   hack/netpol.sh check-clean      the host's filter tables, ipsets and sysctls equal the snapshot `up` took
#
# What is enforced and what is not (traffic from the node itself is always allowed): hack/README.md,
# section "NetworkPolicy enforcement".
set -euo pipefail
LOG_TAG=netpol
# Settings, go_env, with_progress, log, die, pki_sign, kubectl_local, curl_api, pid_alive, RUN_DIR, PKI, CACHE.
# shellcheck source=hack/local-cluster.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/local-cluster.sh"

KUBE_ROUTER_VERSION=${KUBE_ROUTER_VERSION:-v2.1.0} # the only version the Go module proxy serves here
KUBE_ROUTER_MODULE=github.com/cloudnativelabs/kube-router/v2
KUBE_ROUTER_DIR=$CACHE/bin/netpol-kube-router-$KUBE_ROUTER_VERSION
KUBE_ROUTER=$KUBE_ROUTER_DIR/kube-router

NODE_NAME=moat-real-0
NETPOL_DIR=$RUN_DIR/netpol
NETPOL_BASELINE=$CACHE/netpol-baseline # outlives the run dir, like the node's baseline
NETPOL_USER=moat-local:kube-router      # client certificate CN; RBAC below
SYNC_PERIOD=${NETPOL_SYNC_PERIOD:-30s}  # periodic full sync; every pod/policy/namespace event also triggers one
# Chains and ipsets kube-router's network policy controller creates (pkg/controllers/netpol, v2.1.0).
CHAIN_RE='^(KUBE-ROUTER-(INPUT|FORWARD|OUTPUT)|KUBE-POD-FW-|KUBE-NWPLCY-)'
IPSET_RE='^(inet6:)?(KUBE-SRC-|KUBE-DST-|TMP-)'

# ---------------------------------------------------------------- build ----
build_netpol() {
  if ! command -v ipset >/dev/null; then
    log "installing Debian's ipset tool (apt) — kube-router drives the kernel's ipsets through it"
    DEBIAN_FRONTEND=noninteractive apt-get install -y ipset >/dev/null || die "apt-get install ipset failed"
  fi
  if [[ -x $KUBE_ROUTER ]]; then log "kube-router $KUBE_ROUTER_VERSION: cached"; return 0; fi
  go_env; mkdir -p "$KUBE_ROUTER_DIR"
  local m=$KUBE_ROUTER_MODULE
  # Its go.mod has no replace directives, so `go install` works; static (CGO off) like upstream's image.
  GOBIN=$KUBE_ROUTER_DIR with_progress "kube-router $KUBE_ROUTER_VERSION: go install" \
    go install -trimpath \
    -ldflags "-s -w -X $m/pkg/version.Version=$KUBE_ROUTER_VERSION -X $m/pkg/version.BuildDate=1970-01-01T00:00:00Z" \
    "$m/cmd/kube-router@$KUBE_ROUTER_VERSION"
  "$KUBE_ROUTER" --version 2>&1 | head -1
}

# ---------------------------------------------------------------- state ----
pid_of_kr() { [[ -f $NETPOL_DIR/kube-router.pid ]] && cat "$NETPOL_DIR/kube-router.pid"; }
kr_alive() { local p; p=$(pid_of_kr) && pid_alive "$p"; }
need_root() { [[ $EUID -eq 0 ]] || die "netpol needs root (iptables, ipset)"; }
kr_pids() { # any process running the cache's kube-router binary
  local p exe
  for p in /proc/[0-9]*; do
    exe=$(readlink "$p/exe" 2>/dev/null) || continue
    [[ $exe == "$KUBE_ROUTER" ]] && echo "${p#/proc/}"
  done
  return 0
}

# iptables-nft explicitly (kube-router calls `iptables`, `iptables-save`, `iptables-restore`, `ipset` from PATH):
# rules land in the nf_tables tables `ip filter` / `ip6 filter`, never in the legacy xtables.
IPT=(iptables-nft ip6tables-nft)
tool_dir() {
  local d=$NETPOL_DIR/bin t
  mkdir -p "$d"
  for t in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    ln -sfn "/usr/sbin/${t/tables/tables-nft}" "$d/$t"
  done
  ln -sfn "$(command -v ipset)" "$d/ipset"
  echo "$d"
}

# What kube-router can change on the host: both filter tables (and whether they exist), ipsets, sysctls.
VOLATILE_SYSCTL='^(fs\.(dentry-state|file-nr|inode-nr|inode-state|aio-nr|quota\.[a-z_]+)|kernel\.(ns_last_pid|random\.[a-z_]+|pty\.nr)|net\.netfilter\.nf_conntrack_count) ='
netpol_state() { # dir
  local o=$1 f
  mkdir -p "$o"
  for f in ip ip6; do
    { echo "## nft list table $f filter"; nft list table "$f" filter 2>/dev/null || echo "(no table)"; } >> "$o/filter"
  done
  ipset list -n 2>/dev/null | sort > "$o/ipsets"
  # Per-veth entries come and go with pods and the pod bridge's change as pods are wired to it
  # (CI saw moatbr0's accept_ra go 1 -> 0): the node's business, not kube-router's; local-node.sh
  # removes both and its check-clean covers them.
  sysctl -a 2>/dev/null | grep -Ev "$VOLATILE_SYSCTL" | grep -Ev '^net\.ipv[46]\.(conf|neigh)\.(veth|moatbr0)' | sort > "$o/sysctl"
}

# ------------------------------------------------------------------- up ----
write_identity() { # client certificate + kubeconfig + RBAC (read-only: what its informers watch)
  mkdir -p "$NETPOL_DIR/pki"
  [[ -f $NETPOL_DIR/pki/kube-router.crt ]] ||
    pki_sign "$NETPOL_DIR/pki/kube-router" "/CN=$NETPOL_USER" \
      "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n"
  client_kubeconfig "$NETPOL_DIR/kubeconfig" kube-router "$NETPOL_DIR/pki/kube-router"
  kubectl_local apply -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "$NETPOL_USER"}
rules:
- apiGroups: [""]
  resources: [pods, namespaces, nodes, services, endpoints]
  verbs: [get, list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "$NETPOL_USER"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "$NETPOL_USER"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "$NETPOL_USER"}]
EOF
}

# Full syncs as "start-epoch-seconds duration" lines, from kube-router's -v=1 log: "Starting sync of
# iptables with version: <UnixNano>" ... "sync iptables took <d>" (syncs are serialized by a mutex).
syncs() {
  [[ -f $NETPOL_DIR/kube-router.log ]] || return 0
  awk '/Starting sync of iptables with version:/ {v = $NF}
       /sync iptables took/ && v != "" {printf "%.3f %s\n", v / 1e9, $NF; v = ""}' "$NETPOL_DIR/kube-router.log"
}

wait_sync() { # [since-epoch] [timeout-s]
  local since=${1:-$(date +%s.%N)} t=${2:-60} i
  for ((i = 0; i < t * 4; i++)); do
    if syncs | awk -v s="$since" '$1 >= s {found = 1} END {exit !found}'; then
      local first; first=$(syncs | awk -v s="$since" '$1 >= s' | head -1)
      log "full sync done (started $(date -d "@${first%% *}" +%H:%M:%S.%3N), took ${first#* })"
      return 0
    fi
    kr_alive || die "kube-router exited (log: $NETPOL_DIR/kube-router.log)"
    sleep 0.25
  done
  die "no full sync started after $since within ${t}s (log: $NETPOL_DIR/kube-router.log)"
}

# kube-router comments the rules of a policy with "... policy name[:] <name> namespace <ns>" and
# writes a sync's rules in one iptables-restore: once they are visible, the policy is enforced.
wait_policy() { # namespace name present|absent [timeout-s]
  local ns=$1 name=$2 want=$3 t=${4:-60} i have
  [[ $want == present || $want == absent ]] || die "wait-policy: present or absent, not '$want'"
  for ((i = 0; i < t * 4; i++)); do
    have=absent
    iptables-nft-save -t filter 2>/dev/null | grep -qE "policy name:? $name namespace $ns\"" && have=present
    if [[ $have == "$want" ]]; then log "policy $ns/$name: $want in the filter table"; return 0; fi
    kr_alive || die "kube-router exited (log: $NETPOL_DIR/kube-router.log)"
    sleep 0.25
  done
  die "policy $ns/$name not $want in the filter table within ${t}s (log: $NETPOL_DIR/kube-router.log)"
}

netpol_up() {
  need_root
  local start=$SECONDS since
  [[ -x $KUBE_ROUTER ]] || die "$KUBE_ROUTER missing (run: hack/netpol.sh build)"
  command -v ipset >/dev/null || die "ipset missing (run: hack/netpol.sh build)"
  curl_api /readyz >/dev/null 2>&1 || die "the control plane is not up (hack/local-cluster.sh up)"
  [[ $(kubectl_local get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]] ||
    die "node $NODE_NAME is not Ready (hack/local-node.sh up)"
  if kr_alive; then log "kube-router already running (pid $(pid_of_kr))"; return 0; fi
  if [[ -e $NETPOL_DIR ]] || [[ -n $(kr_pids) ]] || [[ -n $(our_chains iptables-nft) ]]; then
    log "removing what a previous run left behind"; netpol_cleanup
  fi
  rm -rf "$NETPOL_BASELINE.tmp"; netpol_state "$NETPOL_BASELINE.tmp"
  rm -rf "$NETPOL_BASELINE"; mv "$NETPOL_BASELINE.tmp" "$NETPOL_BASELINE"
  mkdir -p "$NETPOL_DIR"
  write_identity
  local bin; bin=$(tool_dir)
  since=$(date +%s.%N)
  # --health-port=0 and no --metrics-port: it listens on nothing. -v=1 logs each full sync (wait-sync).
  PATH=$bin:$PATH setsid "$KUBE_ROUTER" --kubeconfig="$NETPOL_DIR/kubeconfig" --hostname-override="$NODE_NAME" \
    --run-firewall=true --run-router=false --run-service-proxy=false --run-loadbalancer=false \
    --enable-cni=false --enable-ipv4=true --enable-ipv6=false \
    --service-cluster-ip-range="$SERVICE_CIDR" --iptables-sync-period="$SYNC_PERIOD" \
    --health-port=0 --v=1 >"$NETPOL_DIR/kube-router.log" 2>&1 </dev/null &
  echo $! > "$NETPOL_DIR/kube-router.pid"
  log "started kube-router $KUBE_ROUTER_VERSION (pid $!, log $NETPOL_DIR/kube-router.log)"
  wait_sync "$since" 60
  log "NetworkPolicies enforced on $NODE_NAME in $((SECONDS - start)) s"
}

# ----------------------------------------------------------------- down ----
our_chains() { "$1" -S 2>/dev/null | awk '$1 == "-N" {print $2}' | { grep -E "$CHAIN_RE" || true; }; }
netpol_cleanup() { # idempotent: stop kube-router, remove its rules, chains and ipsets
  local pid ipt c rule fam i
  if pid=$(pid_of_kr) && kill "$pid" 2>/dev/null; then
    for _ in $(seq 40); do pid_alive "$pid" || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
    log "stopped kube-router (pid $pid)"
  fi
  for ((i = 0; i < 20; i++)); do
    pid=$(kr_pids); [[ -z $pid ]] && break
    kill -9 $pid 2>/dev/null || true; sleep 0.25
  done
  for ipt in "${IPT[@]}"; do
    # Jumps from the built-in chains first, then flush every kube-router chain, then delete them.
    for c in INPUT FORWARD OUTPUT; do
      for rule in $("$ipt" -S "$c" 2>/dev/null | grep -n -- '-j KUBE-ROUTER-' | cut -d: -f1 | sort -rn); do
        "$ipt" -D "$c" $((rule - 1)) || true # -S line 1 is the policy (-P), so line n is rule n-1
      done
    done
    for c in $(our_chains "$ipt"); do "$ipt" -F "$c" || true; done
    for c in $(our_chains "$ipt"); do "$ipt" -X "$c" || true; done
  done
  for c in $(ipset list -n 2>/dev/null | { grep -E "$IPSET_RE" || true; }); do
    grep -qx -- "$c" "$NETPOL_BASELINE/ipsets" 2>/dev/null || ipset destroy "$c" || true
  done
  # iptables-nft created `table ip filter` (built-in chains, policy ACCEPT) if it did not exist: delete it
  # when nothing else put a rule there.
  for fam in ip ip6; do
    ipt=iptables-nft; [[ $fam == ip6 ]] && ipt=ip6tables-nft
    nft list table "$fam" filter >/dev/null 2>&1 || continue
    grep -A1 "^## nft list table $fam filter\$" "$NETPOL_BASELINE/filter" 2>/dev/null | grep -qx '(no table)' || continue
    if [[ -z $("$ipt" -S 2>/dev/null | { grep -v '^-P [A-Z]* ACCEPT$' || true; }) ]]; then nft delete table "$fam" filter; fi
  done
  rm -rf "$NETPOL_DIR"
}

netpol_down() {
  need_root
  local start=$SECONDS
  netpol_cleanup
  if curl_api /readyz >/dev/null 2>&1; then
    kubectl_local delete clusterrolebinding,clusterrole "$NETPOL_USER" --ignore-not-found >/dev/null 2>&1 || true
  fi
  log "kube-router down in $((SECONDS - start)) s"
  if [[ -d $NETPOL_BASELINE ]]; then check_clean; fi
}

check_clean() {
  [[ -d $NETPOL_BASELINE ]] || die "no baseline at $NETPOL_BASELINE (\`up\` writes it)"
  local now f fail=0
  now=$(mktemp -d); netpol_state "$now"
  for f in filter ipsets sysctl; do
    if ! diff -u --label "$f (before up)" --label "$f (now)" "$NETPOL_BASELINE/$f" "$now/$f" >&2; then fail=1; fi
  done
  rm -rf "$now"
  if [[ -n $(kr_pids) ]]; then log "check-clean: kube-router still running: $(kr_pids | tr '\n' ' ')"; fail=1; fi
  if ((fail)); then die "check-clean: the host differs from before \`up\` (diff above)"; fi
  log "check-clean: ip/ip6 filter tables, ipsets and sysctl -a equal the pre-up snapshot; no kube-router left"
}

netpol_status() {
  if kr_alive; then
    local last; last=$(syncs | tail -1)
    echo "kube-router $KUBE_ROUTER_VERSION ($NODE_NAME): running (pid $(pid_of_kr)), $(syncs | wc -l) full syncs," \
      "last started $(date -d "@${last%% *}" +%H:%M:%S 2>/dev/null || echo -), took ${last#* }"
  else
    echo "kube-router ($NODE_NAME): stopped"
  fi
}

case ${1:-} in
  build) build_netpol;;
  up) netpol_up;;
  down) netpol_down;;
  status) netpol_status;;
  wait-sync) shift; kr_alive || die "kube-router is not running"; wait_sync "$@";;
  wait-policy) shift; need_root; kr_alive || die "kube-router is not running"; (($# >= 3)) || die "usage: $0 wait-policy NS NAME present|absent [TIMEOUT]"; wait_policy "$@";;
  check-clean) need_root; check_clean;;
  *) sed -n '2,17p' "$0"; exit 2;;
esac
