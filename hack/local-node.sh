#!/usr/bin/env bash
# local-node.sh — a real node for the local control plane: kubelet + containerd + runc + CNI, built from
# the Go module proxy (cached under $MOAT_CACHE), registered as moat-real-0 beside the kwok fake nodes.
# Needs root. Changes no host sysctl and no iptables/nftables rule; `down` removes everything it made.
#
#   hack/local-node.sh build        build what is missing (runc, containerd, CNI plugins, kubelet, pause)
#   hack/local-node.sh up           start the node (idempotent; the control plane must be up), wait for Ready
#   hack/local-node.sh down         drain it, stop it (by PID), remove bridge, cgroups, mounts, run dir
#   hack/local-node.sh status       what runs
#   hack/local-node.sh env          paths for other scripts (ctr, containerd socket, pause binary, ...)
#   hack/local-node.sh smoke        pod checks on the node (needs moat.local/pause:3.10 in containerd)
#   hack/local-node.sh check-clean  assert the host is as before `up` (after `down`)
#
# Placement: label moat.dev/node-type=real, taint moat.dev/real-node=true:NoSchedule. Pods reach the
# apiserver at 10.88.0.1:16443 (hack/tcp-forward.py). Details and measured times: hack/README.md.
set -euo pipefail
LOG_TAG=local-node
# Settings, go_env, with_progress, log, die, build_k8s, kubectl_local, RUN_DIR, PKI, CACHE, BIN_DIR.
# shellcheck source=hack/local-cluster.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/local-cluster.sh"

RUNC_VERSION=${RUNC_VERSION:-v1.5.3}
CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.4.2}
CNI_VERSION=${CNI_VERSION:-v1.10.0}
PAUSE_VERSION=3.10.2 # build/pause/Makefile TAG in k8s.io/kubernetes v1.36.3
PAUSE_IMAGE=moat.local/pause:3.10

RUNC=$CACHE/bin/node-runc-$RUNC_VERSION/runc
CONTAINERD_DIR=$CACHE/bin/node-containerd-$CONTAINERD_VERSION
CTR=$CONTAINERD_DIR/ctr
CNI_BIN_DIR=$CACHE/bin/node-cni-$CNI_VERSION
CNI_PLUGINS=(bridge host-local loopback portmap)
PAUSE_BIN=$CACHE/bin/node-pause-$PAUSE_VERSION/pause
KUBELET=$BIN_DIR/kubelet
NODE_LINKS=$CACHE/bin/node # symlinks to the versioned binaries above

NODE_NAME=moat-real-0
NODE_LABEL=moat.dev/node-type=real
NODE_TAINT=moat.dev/real-node=true:NoSchedule
BRIDGE=moatbr0
BRIDGE_MAC=02:6d:6f:61:74:01 # locally administered
NODE_CIDR=10.88.0.0/16
NODE_IP=10.88.0.1
KUBELET_PORT=${KUBELET_PORT:-20250}
KUBELET_HEALTHZ_PORT=${KUBELET_HEALTHZ_PORT:-20248}
FORWARD_PORT=$API_PORT # pods: https://10.88.0.1:16443 -> 127.0.0.1:16443
NODE_DIR=$RUN_DIR/node
CONTAINERD_SOCK=$NODE_DIR/containerd/containerd.sock
CGROUP_ROOT=/moat-real-0

# ---------------------------------------------------------------- build ----
build_runc() {
  [[ -x $RUNC ]] && { log "runc $RUNC_VERSION: cached"; return 0; }
  if ! pkg-config --exists libseccomp 2>/dev/null; then
    log "runc: installing libseccomp-dev pkg-config (apt) for the seccomp build tag"
    apt-get install -y libseccomp-dev pkg-config >/dev/null || die "apt-get install libseccomp-dev pkg-config failed"
  fi
  go_env; mkdir -p "$(dirname "$RUNC")"
  # cgo + libseccomp: seccomp profiles (RuntimeDefault) are enforced by runc itself.
  CGO_ENABLED=1 GOBIN=$(dirname "$RUNC") with_progress "runc $RUNC_VERSION: go install" \
    go install -trimpath -buildmode=pie -tags seccomp -ldflags "-s -w -X main.gitCommit=$RUNC_VERSION" \
    "github.com/opencontainers/runc@$RUNC_VERSION"
  "$RUNC" --version | sed -n 1p
}

build_containerd() {
  local b missing=false
  for b in containerd ctr containerd-shim-runc-v2; do [[ -x $CONTAINERD_DIR/$b ]] || missing=true; done
  $missing || { log "containerd $CONTAINERD_VERSION: cached"; return 0; }
  go_env; mkdir -p "$CONTAINERD_DIR"
  local pkg=github.com/containerd/containerd/v2
  # Static (CGO off) like upstream's shim; no_btrfs/no_devmapper drop the snapshotters that need cgo.
  GOBIN=$CONTAINERD_DIR with_progress "containerd $CONTAINERD_VERSION: go install containerd ctr containerd-shim-runc-v2" \
    go install -trimpath -tags "no_btrfs no_devmapper" \
    -ldflags "-s -w -X $pkg/version.Version=$CONTAINERD_VERSION -X $pkg/version.Package=$pkg" \
    "$pkg/cmd/containerd@$CONTAINERD_VERSION" "$pkg/cmd/ctr@$CONTAINERD_VERSION" \
    "$pkg/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION"
  "$CONTAINERD_DIR/containerd" --version
}

build_cni() {
  local p missing=false
  for p in "${CNI_PLUGINS[@]}"; do [[ -x $CNI_BIN_DIR/$p ]] || missing=true; done
  $missing || { log "CNI plugins $CNI_VERSION: cached"; return 0; }
  go_env; mkdir -p "$CNI_BIN_DIR"
  local m=github.com/containernetworking/plugins
  GOBIN=$CNI_BIN_DIR with_progress "CNI plugins $CNI_VERSION: go install ${CNI_PLUGINS[*]}" \
    go install -trimpath -ldflags "-s -w -X $m/pkg/utils/buildversion.BuildVersion=$CNI_VERSION" \
    "$m/plugins/main/bridge@$CNI_VERSION" "$m/plugins/ipam/host-local@$CNI_VERSION" \
    "$m/plugins/main/loopback@$CNI_VERSION" "$m/plugins/meta/portmap@$CNI_VERSION"
}

build_pause() { # the pause binary; hack/images.sh packages it as moat.local/pause:3.10
  [[ -x $PAUSE_BIN ]] && { log "pause $PAUSE_VERSION: cached"; return 0; }
  go_env; mkdir -p "$(dirname "$PAUSE_BIN")"
  local dir start=$SECONDS
  dir=$(cd "$(mktemp -d)" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
        sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [[ -f $dir/build/pause/linux/pause.c ]] || die "pause.c not found in k8s.io/kubernetes@$K8S_VERSION"
  gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_VERSION-k8s-$K8S_VERSION" \
    -o "$PAUSE_BIN.tmp" "$dir/build/pause/linux/pause.c" || die "gcc pause.c failed"
  strip "$PAUSE_BIN.tmp"; mv "$PAUSE_BIN.tmp" "$PAUSE_BIN"
  log "pause $PAUSE_VERSION: done in $((SECONDS - start)) s ($("$PAUSE_BIN" -v))"
}

build_node() {
  (build_runc); (build_containerd); (build_cni); (build_pause)
  (build_k8s) # kubelet: same wrapper module and version stamp as the control plane
  # Version-free names for other scripts (hack/images.sh): $MOAT_CACHE/bin/node/{ctr,pause,...}.
  mkdir -p "$NODE_LINKS"
  local b
  for b in "$CTR" "$CONTAINERD_DIR/containerd" "$RUNC" "$PAUSE_BIN" "$KUBELET"; do ln -sfn "$b" "$NODE_LINKS/"; done
  log "node binaries: $RUNC, $CONTAINERD_DIR, $CNI_BIN_DIR, $PAUSE_BIN, $KUBELET (links in $NODE_LINKS)"
}


# ---------------------------------------------------------------- state ----
NODE_UP_IN_PROGRESS=false
# A failed `up` shows the node's log tails and removes what it set up (the control plane stays).
die() {
  log "ERROR: $*"
  if $NODE_UP_IN_PROGRESS; then
    NODE_UP_IN_PROGRESS=false
    local f
    for f in containerd kubelet forwarder; do
      [[ -s $NODE_DIR/$f.log ]] || continue
      log "last lines of $NODE_DIR/$f.log:"; tail -20 "$NODE_DIR/$f.log" >&2 || true
    done
    node_cleanup
  fi
  exit 1
}

# Paths kubelet and containerd use whatever their configuration says. Inside the node's mount namespace
# each is a bind mount of a directory in the run dir, so nothing is written there on the host; a path
# that does not exist on the host is created empty (as a mount point) and removed by `down`.
# /run/mount: libmount's utab (kubelet mounts Secret/projected tmpfs volumes with mount(8)).
FIXED_PATHS=(/run/containerd /var/lib/kubelet /var/log/containers /var/lib/cni /run/mount)
# Machine-wide sysctls kubelet sets to its own values when they differ (setupKernelTunables). Inside the
# namespace, a file holding the wanted value is bind-mounted over each, so kubelet finds nothing to change.
KUBELET_SYSCTLS=("vm/overcommit_memory 1" "vm/panic_on_oom 0" "kernel/panic 10" "kernel/panic_on_oops 1"
                 "kernel/keys/root_maxkeys 1000000" "kernel/keys/root_maxbytes 25000000")

pid_of() { [[ -f $NODE_DIR/$1.pid ]] && cat "$NODE_DIR/$1.pid"; }
alive() { local p; p=$(pid_of "$1") && pid_alive "$p"; }
kubectl_node() { kubectl_local "$@"; }
# ctr on the node's containerd (stderr dropped: every call repeats containerd's cgroup v1 deprecation warning)
ctr_() { "$CTR" --address "$CONTAINERD_SOCK" -n k8s.io "$@" 2>/dev/null; }
need_root() { [[ $EUID -eq 0 ]] || die "the real node needs root (bridge, mounts, cgroups)"; }

# Processes started from the node's binaries (shims, runc, containerd, kubelet), found by executable path.
node_pids() {
  local p exe
  for p in /proc/[0-9]*; do
    exe=$(readlink "$p/exe" 2>/dev/null) || continue
    case $exe in
      "$CONTAINERD_DIR"/*|"$RUNC"|"$KUBELET"|"$CNI_BIN_DIR"/*) echo "${p#/proc/}";;
    esac
  done
}

cgroup_dirs() { # this node's cgroup subtree in every mounted hierarchy (v1 controllers, name=systemd, unified)
  local h
  for h in /sys/fs/cgroup/*/; do if [[ -d $h${CGROUP_ROOT#/} ]]; then echo "$h${CGROUP_ROOT#/}"; fi; done
}

# -------------------------------------------------------------- configs ----
node_pki() {
  local d=$NODE_DIR/pki
  [[ -f $d/kubelet-serving.crt && -f $NODE_DIR/kubelet.kubeconfig ]] && return 0
  mkdir -p "$d"
  pki_sign "$d/kubelet-client" "/O=system:nodes/CN=system:node:$NODE_NAME" \
    "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n"
  pki_sign "$d/kubelet-serving" "/CN=system:node:$NODE_NAME" \
    "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:$NODE_IP,IP:127.0.0.1,DNS:$NODE_NAME\n"
  client_kubeconfig "$NODE_DIR/kubelet.kubeconfig" "$NODE_NAME" "$d/kubelet-client"
}

write_configs() {
  local c=$NODE_DIR/containerd
  mkdir -p "$c/root" "$c/state" "$c/tmp" "$NODE_DIR/cni/net.d" "$NODE_DIR/cni/ipam" "$NODE_DIR/pod-logs" \
    "$NODE_DIR/sysctl-masks" "$NODE_DIR/cdi"
  # Images come from hack/images.sh (ctr import); a pull of anything else fails at once on loopback
  # instead of resolving a registry name through the host's DNS.
  mkdir -p "$c/certs.d/_default"
  printf 'server = "http://127.0.0.1:9"\n' > "$c/certs.d/_default/hosts.toml"
  cat > "$c/config.toml" <<EOF
# containerd for the moat real node (hack/local-node.sh); everything it writes is under $NODE_DIR
# (plus /run/containerd, which is a bind mount of $NODE_DIR/fs/run-containerd inside its mount namespace).
# Version 4 is containerd 2.4's own format (v3 is still read, with a "migrated from version 3" warning;
# v4 only moved the grpc/ttrpc/debug server settings into plugins).
version = 4
root = "$c/root"
state = "$c/state"
temp = "$c/tmp"
imports = [] # containerd reads only the imports a loaded file names: none of the host's conf.d

[plugins.'io.containerd.server.v1.grpc']
  address = "$CONTAINERD_SOCK"
[plugins.'io.containerd.server.v1.ttrpc']
  address = "$CONTAINERD_SOCK.ttrpc"
[plugins.'io.containerd.server.v1.debug']
  address = ""

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = '$c/certs.d' # _default: every registry is 127.0.0.1:9, no pull leaves the machine
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    # Built locally from the k8s pause.c (hack/images.sh imports it); never pulled.
    sandbox = '$PAUSE_IMAGE'

[plugins.'io.containerd.cri.v1.runtime']
  # REQUIRED on this machine: root lacks CAP_SYS_RESOURCE, so lowering a process' oom_score_adj fails and
  # every sandbox would fail with "failed to update /proc/self/oom_score_adj: Permission denied".
  restrict_oom_score_adj = true
  # Pod network namespaces are bind-mounted under the state dir instead of /var/run/netns.
  netns_mounts_under_state_dir = true
  cdi_spec_dirs = ['$NODE_DIR/cdi']
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = '$RUNC'
        # cgroup v1 (hybrid) host without systemd: kubelet uses the cgroupfs driver too.
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['$CNI_BIN_DIR']
    conf_dir = '$NODE_DIR/cni/net.d'
    max_conf_num = 1

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = '127.0.0.1' # exec/attach/port-forward streams, proxied by kubelet
  stream_server_port = '0'

[plugins.'io.containerd.nri.v1.nri']
  disable = true
[plugins.'io.containerd.internal.v1.opt']
  path = '$c/opt'
[plugins.'io.containerd.image-verifier.v1.bindir']
  bin_dir = '$c/image-verifier'
EOF

  # isGateway/ipMasq false: the plugin would otherwise turn on net.ipv4.ip_forward machine-wide and add
  # masquerade rules. The host address 10.88.0.1 is set on the bridge by `up`. portmap (hostPort) uses its
  # own nftables table cni_hostport, which `down` deletes; loopback is used by containerd for lo.
  cat > "$NODE_DIR/cni/net.d/10-moat.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "moat-real",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE", "isGateway": false, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$NODE_DIR/cni/ipam",
        "ranges": [[{"subnet": "$NODE_CIDR", "rangeStart": "10.88.0.2", "rangeEnd": "10.88.255.254"}]]
      }
    },
    {"type": "portmap", "backend": "nftables", "capabilities": {"portMappings": true}}
  ]
}
EOF

  cat > "$NODE_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 (hybrid) host: kubelet refuses cgroup v1 unless told (v1 support is deprecated upstream).
failCgroupV1: false
cgroupDriver: cgroupfs
# Pods under one subtree, $CGROUP_ROOT/kubepods/..., in every hierarchy (down removes it). cgroupRoot only
# takes effect with cgroupsPerQOS: without it kubelet passes no cgroup parent and containerd puts every
# container under /k8s.io/<id> instead.
cgroupsPerQOS: true
cgroupRoot: $CGROUP_ROOT
enforceNodeAllocatable: ["none"] # no node-allocatable limits written on the kubepods cgroup
failSwapOn: false
makeIPTablesUtilChains: false # else kubelet adds KUBE-* chains to the host's iptables
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
podLogsDir: $NODE_DIR/pod-logs
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $NODE_DIR/pki/kubelet-serving.crt
tlsPrivateKeyFile: $NODE_DIR/pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
registerNode: true
registerWithTaints:
- {key: moat.dev/real-node, value: "true", effect: NoSchedule}
# A dev machine's disk is shared with everything else: evict only when it is really full, and never
# garbage-collect images (they are imported locally and cannot be pulled again).
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# No cluster DNS and no route off the pod network: pods get no nameserver rather than the host's.
resolvConf: ""
volumePluginDir: $NODE_DIR/volume-plugins # default /usr/libexec/kubernetes/kubelet-plugins/volume/exec
EOF

  local line
  {
    echo '#!/usr/bin/env bash'
    echo '# Runs under `unshare -m --propagation slave` (hack/local-node.sh up): containerd and kubelet share'
    echo "# this mount namespace, so kubelet's Secret/projected tmpfs mounts are visible to the containers."
    echo 'set -euo pipefail'
    echo '# mount -n: no /run/mount/utab entries on the host'
    for line in "${KUBELET_SYSCTLS[@]}"; do
      set -- $line
      printf "echo %s > '%s/sysctl-masks/%s'; mount -n --bind '%s/sysctl-masks/%s' /proc/sys/%s\n" \
        "$2" "$NODE_DIR" "${1//\//.}" "$NODE_DIR" "${1//\//.}" "$1"
    done
    local p
    for p in "${FIXED_PATHS[@]}"; do
      printf "mount -n --bind '%s/fs/%s' '%s'\n" "$NODE_DIR" "$(fixed_dir "$p")" "$p"
    done
    printf "PATH='%s':\$PATH '%s/containerd' --config '%s/config.toml' >>'%s/containerd.log' 2>&1 &\n" \
      "$CONTAINERD_DIR" "$CONTAINERD_DIR" "$c" "$NODE_DIR"
    printf "echo \$! > '%s/containerd.pid'\n" "$NODE_DIR"
    printf "for _ in \$(seq 120); do [[ -S '%s' ]] && break; sleep 0.25; done\n" "$CONTAINERD_SOCK"
    printf "exec '%s' --config='%s/kubelet.yaml' --kubeconfig='%s/kubelet.kubeconfig' \\\\\n" "$KUBELET" "$NODE_DIR" "$NODE_DIR"
    printf "  --hostname-override=%s --node-ip=%s --node-labels=%s\n" "$NODE_NAME" "$NODE_IP" "$NODE_LABEL"
  } > "$NODE_DIR/node-ns.sh"
}

fixed_dir() { local p=${1#/}; echo "${p//\//-}"; }

prepare_fixed_paths() { # mount points for FIXED_PATHS; records the ones created on the host
  local p
  for p in "${FIXED_PATHS[@]}"; do
    mkdir -p "$NODE_DIR/fs/$(fixed_dir "$p")"
    if [[ ! -e $p ]]; then
      # Record first: a crash between the two still leaves `down` knowing the path is ours.
      echo "$p" >> "$NODE_DIR/created-paths"
      mkdir -p "$p"
    fi
  done
}

# ---------------------------------------------------------- host state ----
BASELINE=$CACHE/node-baseline
VOLATILE_SYSCTL='^(fs\.(dentry-state|file-nr|inode-nr|inode-state|aio-nr|quota\.[a-z_]+)|kernel\.(ns_last_pid|random\.[a-z_]+|pty\.nr)|net\.netfilter\.nf_conntrack_count) ='
host_state() { # dir: what the node could change on the host
  local o=$1 h p
  mkdir -p "$o"
  ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort > "$o/links"
  ip -o addr show | awk '{print $2, $3, $4}' | sort > "$o/addresses"
  { ip -4 route show table all; ip -6 route show table all; } | sort > "$o/routes"
  { ip -4 rule show; ip -6 rule show; } > "$o/rules"
  sysctl -a 2>/dev/null | grep -Ev "$VOLATILE_SYSCTL" | sort > "$o/sysctl"
  if command -v nft >/dev/null; then nft list ruleset > "$o/nftables" 2>&1; else echo "nft not installed" > "$o/nftables"; fi
  : > "$o/iptables"
  for p in iptables-save ip6tables-save iptables-legacy-save ip6tables-legacy-save; do
    command -v "$p" >/dev/null || continue
    { echo "## $p"; "$p" 2>&1 | sed '/^#/d'; } >> "$o/iptables" # drops the timestamped comments
  done
  awk '{print $5, $4}' /proc/self/mountinfo | sort > "$o/mounts"
  for h in /sys/fs/cgroup/*/; do find "$h" -mindepth 1 -maxdepth 1 -type d; done | sort > "$o/cgroups"
  for p in "${FIXED_PATHS[@]}" /var/log/pods /run/netns /run/mount /opt/containerd /opt/cni /etc/cni /etc/cdi \
           /var/run/cdi /var/run/nri /var/lib/containerd /etc/kubernetes /usr/libexec/kubernetes; do
    [[ -e $p ]] && ls -la --time-style=+ "$p" | sed "s|^|$p: |"
  done > "$o/paths" 2>/dev/null || true
}

# check-clean [baseline-dir]: the host equals the snapshot `up` took before it changed anything, and
# nothing of the node is left (processes, cgroups, bridge, run dir).
check_clean() {
  local base=${1:-$BASELINE} now f fail=0 pids
  [[ -d $base ]] || die "no baseline at $base (the node's first \`up\` writes it)"
  now=$(mktemp -d)
  host_state "$now"
  for f in links addresses routes rules sysctl nftables iptables mounts cgroups paths; do
    if ! diff -u --label "$f (before up)" --label "$f (now)" "$base/$f" "$now/$f" >&2; then fail=1; fi
  done
  rm -rf "$now"
  pids=$(node_pids | tr '\n' ' ')
  if [[ -n $pids ]]; then log "check-clean: node processes still running: $pids"; fail=1; fi
  if [[ -n $(cgroup_dirs) ]]; then log "check-clean: cgroups left: $(cgroup_dirs | tr '\n' ' ')"; fail=1; fi
  if [[ -e $NODE_DIR ]]; then log "check-clean: $NODE_DIR still exists"; fail=1; fi
  if grep -q " $RUN_DIR" /proc/self/mountinfo; then log "check-clean: mounts under $RUN_DIR"; fail=1; fi
  if ((fail)); then die "check-clean: the host differs from before \`up\` (diff above)"; fi
  log "check-clean: host state equals the pre-up snapshot (links, addresses, routes, rules, sysctl -a," \
      "nftables, iptables, mounts, cgroups, fixed paths); no node process, cgroup or run dir left;" \
      "net.ipv4.ip_forward=$(cat /proc/sys/net/ipv4/ip_forward)"
}

# ------------------------------------------------------------------- up ----
node_ready() {
  [[ $(kubectl_node get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}

wait_node() { # what timeout_s cmd...
  local what=$1 t=$2 i; shift 2
  for ((i = 0; i < t * 4; i++)); do
    if "$@" >/dev/null 2>&1; then log "$what"; return 0; fi
    alive kubelet || die "kubelet exited (log: $NODE_DIR/kubelet.log)"
    sleep 0.25
  done
  die "timed out after ${t}s waiting for: $what"
}

apiserver_flags_ok() { # the running apiserver was started with the kubelet client flags (local-cluster.sh up)
  local pid; pid=$(cat "$RUN_DIR/kube-apiserver.pid" 2>/dev/null) || return 1
  tr '\0' '\n' < "/proc/$pid/cmdline" | grep -q -- '--kubelet-client-certificate='
}

node_up() {
  need_root
  umask 022 # containerd's snapshot dirs must be enterable by non-root containers
  local b start=$SECONDS
  for b in "$RUNC" "$CTR" "$CONTAINERD_DIR/containerd" "$CONTAINERD_DIR/containerd-shim-runc-v2" "$KUBELET" \
           "${CNI_PLUGINS[@]/#/$CNI_BIN_DIR/}"; do
    [[ -x $b ]] || die "$b missing (run: hack/local-node.sh build)"
  done
  curl_api /readyz >/dev/null 2>&1 || die "the control plane is not up (hack/local-cluster.sh up)"
  if alive kubelet && alive containerd && alive forwarder; then
    log "already running (kubelet pid $(pid_of kubelet), containerd pid $(pid_of containerd))"
    NODE_UP_IN_PROGRESS=false; wait_node "node $NODE_NAME Ready" 60 node_ready
    kubectl_node get node "$NODE_NAME" -o wide
    return 0
  fi
  if [[ -e $NODE_DIR ]] || ip link show "$BRIDGE" >/dev/null 2>&1; then
    log "removing what a previous node left behind"; node_cleanup
  fi
  # The host as it is before the node changes anything; check-clean compares against it after `down`.
  rm -rf "$BASELINE.tmp"; host_state "$BASELINE.tmp"; rm -rf "$BASELINE"; mv "$BASELINE.tmp" "$BASELINE"
  NODE_UP_IN_PROGRESS=true
  mkdir -p "$NODE_DIR"
  apiserver_flags_ok ||
    log "WARNING: kube-apiserver runs without --kubelet-client-certificate (started by an older local-cluster.sh):" \
        "kubectl logs/exec on $NODE_NAME fail until \`make cluster-down && make cluster-up\`"
  pki_node_pieces # the apiserver serving certificate must name $NODE_IP (reloaded by the apiserver)
  node_pki; write_configs; prepare_fixed_paths

  # The bridge and its host address exist before kubelet starts: kubelet binds and registers this IP.
  # A fixed MAC: a bridge otherwise takes the lowest MAC of its ports, so it changes whenever a pod
  # comes or goes, and pods talking to 10.88.0.1 stall on stale ARP entries for seconds.
  ip link add "$BRIDGE" address "$BRIDGE_MAC" type bridge
  ip addr add "$NODE_IP/${NODE_CIDR#*/}" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # Fake addresses go nowhere: kwok's pod IPs and the Service range (no kube-proxy) must never
  # be dialled off the machine by a test or the operator's probe (they would route to the
  # default gateway). `down` removes these routes.
  local net; for net in "$POD_CIDR" "$SERVICE_CIDR"; do ip route replace blackhole "$net"; done

  # kubelet requires its cgroupRoot to exist in every hierarchy; it creates kubepods/... below it.
  local h; for h in /sys/fs/cgroup/*/; do mkdir -p "$h${CGROUP_ROOT#/}"; done

  setsid python3 "$REPO/hack/tcp-forward.py" "$NODE_IP:$FORWARD_PORT" "127.0.0.1:$API_PORT" \
    >"$NODE_DIR/forwarder.log" 2>&1 </dev/null &
  echo $! > "$NODE_DIR/forwarder.pid"
  setsid unshare -m --propagation slave bash "$NODE_DIR/node-ns.sh" >"$NODE_DIR/kubelet.log" 2>&1 </dev/null &
  echo $! > "$NODE_DIR/kubelet.pid"
  log "started containerd + kubelet in one mount namespace (pid $!, logs $NODE_DIR/{containerd,kubelet}.log)"

  wait_node "containerd ready" 30 test -S "$CONTAINERD_SOCK"
  wait_node "kubelet healthy" 60 curl -sf "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz"
  wait_node "node $NODE_NAME Ready" 90 node_ready
  alive forwarder || die "tcp-forward.py exited (log: $NODE_DIR/forwarder.log)"
  wait_node "apiserver reachable for pods at https://$NODE_IP:$FORWARD_PORT" 10 \
    curl -sf --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "https://$NODE_IP:$FORWARD_PORT/readyz"
  NODE_UP_IN_PROGRESS=false
  ctr_ images ls -q | grep -qx "$PAUSE_IMAGE" ||
    log "NOTE: $PAUSE_IMAGE is not in containerd yet: pods stay ContainerCreating until \`hack/images.sh load\`"
  log "node $NODE_NAME up in $((SECONDS - start)) s (label $NODE_LABEL, taint $NODE_TAINT, pods on $BRIDGE $NODE_CIDR)"
  kubectl_node get node "$NODE_NAME" -o wide
}

# ----------------------------------------------------------------- down ----
stop_pid() { # name: TERM, wait up to 10 s, KILL
  local pid; pid=$(pid_of "$1") || return 0
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 40); do pid_alive "$pid" || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
    log "stopped $1 (pid $pid)"
  fi
  rm -f "$NODE_DIR/$1.pid"
}

drain() { # let kubelet tear its pods down (CNI DEL, sandboxes stopped) while it still runs
  alive kubelet || return 0
  curl_api /readyz >/dev/null 2>&1 || { log "apiserver down: skipping the drain"; return 0; }
  kubectl_node cordon "$NODE_NAME" >/dev/null 2>&1 || true
  local sel="spec.nodeName=$NODE_NAME" i
  kubectl_node delete pods -A --field-selector "$sel" --wait=false >/dev/null 2>&1 || true
  for ((i = 0; i < 240; i++)); do
    [[ -z $(kubectl_node get pods -A --field-selector "$sel" -o name 2>/dev/null) ]] && break
    sleep 0.25
  done
  if [[ -n $(kubectl_node get pods -A --field-selector "$sel" -o name 2>/dev/null) ]]; then
    log "pods still bound after 60 s; forcing their deletion"
    kubectl_node delete pods -A --field-selector "$sel" --grace-period=0 --force >/dev/null 2>&1 || true
  else
    log "pods on $NODE_NAME deleted by kubelet ($((i / 4)) s)"
  fi
}

node_cleanup() { # idempotent; works from any partial state
  local pid i l p
  stop_pid kubelet
  # Containers: every process in the node's cgroup subtree; then shims, runc and containerd by executable.
  local dirs
  for ((i = 0; i < 20; i++)); do
    dirs=$(cgroup_dirs); [[ -n $dirs ]] || break
    pid=$(find $dirs -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
    [[ -z $pid ]] && break
    kill -9 $pid 2>/dev/null || true; sleep 0.25
  done
  stop_pid containerd
  for ((i = 0; i < 20; i++)); do
    pid=$(node_pids)
    [[ -z $pid ]] && break
    kill -9 $pid 2>/dev/null || true; sleep 0.25
  done
  stop_pid forwarder
  # The node's mount namespace is gone with its last process; its mounts with it. Detach any left here.
  for p in $(awk -v d="$RUN_DIR/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r); do
    umount -l "$p" 2>/dev/null || true
  done
  # Bridge and veths (the veths also go with their network namespaces).
  for l in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//'); do
    ip link del "$l" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  local net; for net in "$POD_CIDR" "$SERVICE_CIDR"; do ip route del blackhole "$net" 2>/dev/null || true; done
  # portmap's nftables tables, if a hostPort pod created them and they were not there before.
  if command -v nft >/dev/null; then
    for l in ip ip6; do
      if nft list table "$l" cni_hostport >/dev/null 2>&1 && ! grep -q "^table $l cni_hostport" "$BASELINE/nftables" 2>/dev/null; then
        nft delete table "$l" cni_hostport
      fi
    done
  fi
  # cgroups, deepest first; a dir whose processes are still exiting is retried.
  for ((i = 0; i < 40; i++)); do
    [[ -z $(cgroup_dirs) ]] && break
    find $(cgroup_dirs) -depth -type d -exec rmdir {} + 2>/dev/null || true
    [[ -z $(cgroup_dirs) ]] || sleep 0.25
  done
  [[ -z $(cgroup_dirs) ]] || log "WARNING: cgroups not removable: $(cgroup_dirs | tr '\n' ' ')"
  # Fixed paths created as mount points by `up` (empty on the host).
  if [[ -f $NODE_DIR/created-paths ]]; then
    while read -r p; do [[ -n $p && $p == /* ]] && rm -rf "$p"; done < "$NODE_DIR/created-paths"
  fi
  rm -rf "$NODE_DIR"
}

node_down() {
  need_root
  local start=$SECONDS
  drain
  node_cleanup
  if curl_api /readyz >/dev/null 2>&1; then kubectl_node delete node "$NODE_NAME" --ignore-not-found >/dev/null 2>&1 || true; fi
  log "node $NODE_NAME down in $((SECONDS - start)) s"
  if [[ -d $BASELINE ]]; then check_clean; fi
}

node_status() {
  local n
  for n in kubelet containerd forwarder; do
    if alive "$n"; then echo "$n ($NODE_NAME): running (pid $(pid_of "$n"))"; else echo "$n ($NODE_NAME): stopped"; fi
  done
  if node_ready; then echo "node $NODE_NAME: Ready"; fi
}

node_env() {
  cat <<EOF
export MOAT_NODE_NAME=$NODE_NAME
export MOAT_NODE_CTR=$CTR
export MOAT_NODE_CONTAINERD_ADDRESS=$CONTAINERD_SOCK
export MOAT_NODE_CONTAINERD_NAMESPACE=k8s.io
export MOAT_NODE_PAUSE_BIN=$PAUSE_BIN
export MOAT_NODE_PAUSE_IMAGE=$PAUSE_IMAGE
export MOAT_NODE_APISERVER_HOST=$NODE_IP MOAT_NODE_APISERVER_PORT=$FORWARD_PORT
EOF
}

# ---------------------------------------------------------------- smoke ----
# Pod checks with the pause image only: Running/Ready on the node, a 10.88 IP reachable from the host,
# the broker's restricted securityContext, Secret and token volumes populated, kubectl logs and exec, the
# pod network reaching the apiserver through the forwarder, and a pod without the toleration Pending.
smoke() {
  local ns=moat-node-smoke start=$SECONDS
  node_ready || die "node $NODE_NAME is not Ready (hack/local-node.sh up)"
  ctr_ images ls -q | grep -qx "$PAUSE_IMAGE" ||
    die "$PAUSE_IMAGE is not in containerd (hack/images.sh build && hack/images.sh load)"
  kubectl_node delete namespace "$ns" --ignore-not-found --wait=true >/dev/null
  kubectl_node create namespace "$ns" >/dev/null
  trap 'kubectl_local delete namespace '"$ns"' --wait=false >/dev/null 2>&1 || true' EXIT
  kubectl_node -n "$ns" create secret generic smoke --from-literal=hello=moat >/dev/null
  local placement="
  nodeSelector: {moat.dev/node-type: real}
  tolerations: [{key: moat.dev/real-node, operator: Equal, value: \"true\", effect: NoSchedule}]"
  local restricted="
    securityContext:
      readOnlyRootFilesystem: true
      allowPrivilegeEscalation: false
      capabilities: {drop: [ALL]}"
  kubectl_node -n "$ns" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: restricted}
spec:$placement
  shareProcessNamespace: true
  securityContext:
    runAsUser: 1883
    runAsGroup: 1883
    fsGroup: 1883
    runAsNonRoot: true
    seccompProfile: {type: RuntimeDefault}
  containers:
  - name: pause
    image: $PAUSE_IMAGE
    imagePullPolicy: Never$restricted
    volumeMounts:
    - {name: secret, mountPath: /etc/smoke, readOnly: true}
    - {name: scratch, mountPath: /scratch}
  volumes:
  - {name: secret, secret: {secretName: smoke}}
  - {name: scratch, emptyDir: {}}
---
apiVersion: v1
kind: Pod
metadata: {name: version}
spec:$placement
  restartPolicy: Never
  securityContext: {runAsUser: 1883, runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}
  containers:
  - name: pause
    image: $PAUSE_IMAGE
    imagePullPolicy: Never
    args: ["-v"]$restricted
---
apiVersion: v1
kind: Pod
metadata: {name: no-toleration}
spec:
  nodeSelector: {moat.dev/node-type: real}
  containers: [{name: pause, image: $PAUSE_IMAGE, imagePullPolicy: Never}]
EOF
  local ok=true
  kubectl_node -n "$ns" wait --for=condition=Ready pod/restricted --timeout=60s >/dev/null ||
    { kubectl_node -n "$ns" describe pod restricted | tail -20 >&2; die "pod restricted not Ready"; }
  local node ip cid pid
  node=$(kubectl_node -n "$ns" get pod restricted -o jsonpath='{.spec.nodeName}')
  ip=$(kubectl_node -n "$ns" get pod restricted -o jsonpath='{.status.podIP}')
  cid=$(kubectl_node -n "$ns" get pod restricted -o jsonpath='{.status.containerStatuses[0].containerID}')
  cid=${cid#containerd://}
  pid=$(ctr_ tasks ls | awk -v c="$cid" '$1 == c {print $2}')
  [[ -n $pid ]] || die "no task for container $cid"
  report() { if [[ $1 == ok ]]; then log "smoke ok: $2"; else log "smoke FAILED: $2"; ok=false; fi; }
  [[ $node == "$NODE_NAME" ]] && report ok "pod restricted Running and Ready on $node" || report no "pod on $node"
  [[ $ip == 10.88.* ]] && report ok "pod IP $ip" || report no "pod IP $ip not in $NODE_CIDR"
  # A refused TCP connection (pause listens on nothing) proves the host reaches the pod's stack.
  if python3 -c 'import socket,sys
s=socket.socket(); s.settimeout(3)
try: s.connect((sys.argv[1], 9))
except ConnectionRefusedError: sys.exit(0)
except OSError: sys.exit(1)
sys.exit(0)' "$ip"; then report ok "host reaches $ip (TCP RST from the pod)"; else report no "host cannot reach $ip"; fi
  local st; st=$(cat "/proc/$pid/status")
  [[ $(awk '/^Uid:/{print $2}' <<<"$st") == 1883 && $(awk '/^Gid:/{print $2}' <<<"$st") == 1883 ]] &&
    report ok "runs as uid/gid 1883 (groups: $(awk '/^Groups:/{$1=""; print}' <<<"$st" | xargs))" || report no "uid/gid: $(grep -E '^(Uid|Gid)' <<<"$st" | tr '\n' ' ')"
  [[ $(awk '/^Seccomp:/{print $2}' <<<"$st") == 2 && $(awk '/^NoNewPrivs:/{print $2}' <<<"$st") == 1 ]] &&
    report ok "seccomp filter on (Seccomp: 2), NoNewPrivs: 1" || report no "seccomp/no_new_privs: $(grep -E '^(Seccomp|NoNewPrivs)' <<<"$st" | tr '\n' ' ')"
  [[ $(awk '/^CapEff:/{print $2}' <<<"$st") == 0000000000000000 && $(awk '/^CapBnd:/{print $2}' <<<"$st") == 0000000000000000 ]] &&
    report ok "no capabilities (CapEff, CapBnd 0)" || report no "capabilities: $(grep -E '^Cap' <<<"$st" | tr '\n' ' ')"
  awk '$5 == "/" {print $6}' "/proc/$pid/mountinfo" | grep -q '^ro' &&
    report ok "read-only root filesystem" || report no "root filesystem is not read-only"
  [[ $(cat "/proc/$pid/root/etc/smoke/hello" 2>/dev/null) == moat ]] &&
    report ok "Secret volume populated (/etc/smoke/hello)" || report no "Secret volume empty"
  [[ -s /proc/$pid/root/var/run/secrets/kubernetes.io/serviceaccount/token ]] &&
    report ok "service account token projected" || report no "service account token missing"
  [[ $(stat -c %g "/proc/$pid/root/scratch") == 1883 ]] && report ok "fsGroup applied (emptyDir group 1883)" ||
    report no "emptyDir group $(stat -c %g "/proc/$pid/root/scratch")"
  local pidns; pidns=$(ls "/proc/$pid/root/proc" 2>/dev/null | grep -c '^[0-9]*$' || true)
  ((pidns >= 2)) && report ok "shareProcessNamespace: $pidns processes visible in the pod" ||
    report no "shareProcessNamespace: $pidns processes visible"
  local out
  out=$(kubectl_node -n "$ns" exec restricted -- /pause -v 2>&1) && [[ $out == pause.c* ]] &&
    report ok "kubectl exec: $out" || report no "kubectl exec: $out"
  kubectl_node -n "$ns" wait --for=jsonpath='{.status.phase}'=Succeeded pod/version --timeout=60s >/dev/null || true
  out=$(kubectl_node -n "$ns" logs version 2>&1) && [[ $out == pause.c* ]] &&
    report ok "kubectl logs: $out" || report no "kubectl logs: $out"
  # The operator's path to the apiserver, from inside the pod's network namespace.
  out=$(nsenter -t "$pid" -n curl -sS --max-time 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
        "https://$NODE_IP:$FORWARD_PORT/readyz" 2>&1) && [[ $out == ok ]] &&
    report ok "pod network reaches the apiserver at https://$NODE_IP:$FORWARD_PORT (TLS verified)" || report no "apiserver via forwarder: $out"
  local msg=""
  for _ in $(seq 40); do
    msg=$(kubectl_node -n "$ns" get pod no-toleration -o jsonpath='{.status.conditions[?(@.type=="PodScheduled")].message}')
    [[ -n $msg ]] && break; sleep 0.25
  done
  [[ $(kubectl_node -n "$ns" get pod no-toleration -o jsonpath='{.status.phase}') == Pending && $msg == *untolerated* ]] &&
    report ok "pod without the toleration Pending: $msg" || report no "pod without toleration: $msg"
  kubectl_node delete namespace "$ns" --wait=false >/dev/null; trap - EXIT
  $ok || die "smoke test failed"
  log "smoke test passed in $((SECONDS - start)) s"
}

case ${1:-} in
  build) build_node;;
  up) node_up;;
  down) node_down;;
  status) node_status;;
  env) node_env;;
  smoke) smoke;;
  check-clean) need_root; check_clean "${2:-}";;
  *) sed -n '2,15p' "$0"; exit 2;;
esac
