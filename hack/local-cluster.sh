#!/usr/bin/env bash
# local-cluster.sh — build (from the Go module proxy) and run a real local Kubernetes control plane
# on 127.0.0.1 only: etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok fake nodes.
# No Docker, no downloads outside the registries, nothing built inside the repository.
#
#   hack/local-cluster.sh build [k8s|etcd|kwok|helm|policyreport|openreports|promtool|cert-manager|node|netpol|all]  build/fetch and cache (skips what is cached)
#   hack/local-cluster.sh up                              start everything (idempotent), create fake nodes,
#                                                         then the real node (hack/local-node.sh; MOAT_REAL_NODE=0 skips it)
#                                                         and NetworkPolicy enforcement on it (hack/netpol.sh; MOAT_NETPOL=0 skips it)
#   hack/local-cluster.sh down                            stop NetworkPolicy enforcement and the real node, then what `up`
#                                                         started (by PID), delete state
#   hack/local-cluster.sh status | env | bin-dir | policyreport-crd | openreports-crd | promtool | cert-manager | cert-manager-crds (paths of cached upstream parts)
#
# Environment:
#   MOAT_CACHE   cache root (default ~/.cache/moat): binaries, GOMODCACHE, GOCACHE
#   LOCAL_CLUSTER_DIR  run dir (default <repo>/.local-cluster): pki, kubeconfig, logs, pids, etcd data
#   K8S_VERSION ETCD_VERSION KWOK_VERSION HELM_VERSION   component versions (see hack/README.md)
#   KWOK_NODES   number of fake nodes (default 2)
#   MOAT_REAL_NODE  1 (default): `up` also starts the real kubelet node moat-real-0; 0: control plane + kwok only
#   MOAT_NETPOL  1 (default): `build all` builds and `up` starts kube-router's network policy controller for the
#                real node (NetworkPolicies enforced there); 0: policies are stored but not enforced
# What really worked and what changed from the reference recipe: hack/README.md.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
K8S_VERSION=${K8S_VERSION:-v1.36.3}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
KWOK_VERSION=${KWOK_VERSION:-v0.8.0}
HELM_VERSION=${HELM_VERSION:-v3.21.4}
# The upstream wgpolicyk8s.io/v1alpha2 PolicyReport CRD, as Kyverno publishes it in its Go module.
KYVERNO_VERSION=${KYVERNO_VERSION:-v1.13.4}
# The upstream openreports.io/v1alpha1 Report CRD, from the OpenReports API module.
OPENREPORTS_VERSION=${OPENREPORTS_VERSION:-v0.2.1}
# Prometheus's promtool, to unit-test the chart's alert rules (module tag v0.316.0 = Prometheus 3.x).
PROMETHEUS_VERSION=${PROMETHEUS_VERSION:-v0.316.0}
# cert-manager's controller (CA and self-signed issuers) for the issuerRef test; v1.21.x is all the proxy serves.
CERT_MANAGER_VERSION=${CERT_MANAGER_VERSION:-v1.21.2}

CACHE=${MOAT_CACHE:-$HOME/.cache/moat}
BIN_DIR=$CACHE/bin/k8s-$K8S_VERSION
SRC_DIR=$CACHE/src
RUN_DIR=${LOCAL_CLUSTER_DIR:-$REPO/.local-cluster}
PKI=$RUN_DIR/pki
KWOK_NODES=${KWOK_NODES:-2}

ETCD_CLIENT_PORT=${ETCD_CLIENT_PORT:-12379}
ETCD_PEER_PORT=${ETCD_PEER_PORT:-12380}
API_PORT=${API_PORT:-16443}
KCM_PORT=${KCM_PORT:-20257}
SCHED_PORT=${SCHED_PORT:-20259}
KWOK_PORT=${KWOK_PORT:-20263}
SERVICE_CIDR=${SERVICE_CIDR:-10.96.0.0/16}
POD_CIDR=${POD_CIDR:-10.244.0.0/16}

COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

LOG_TAG=${LOG_TAG:-local-cluster}
log() { printf '[%s %s] %s\n' "$LOG_TAG" "$(date +%H:%M:%S)" "$*" >&2; }
UP_IN_PROGRESS=false
STARTED_NOW=()
# On a failed `up`, stop only what this invocation started (a running cluster is left alone).
die() { log "ERROR: $*"; if $UP_IN_PROGRESS && ((${#STARTED_NOW[@]})); then stop_all "${STARTED_NOW[@]}"; fi; exit 1; }

# ---------------------------------------------------------------- build ----
go_env() {
  command -v go >/dev/null || die "go not found: a Go toolchain and the Go module proxy are needed"
  export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=${GOTOOLCHAIN:-local}
  export GOMODCACHE=$CACHE/go/mod GOCACHE=$CACHE/go/build GOPATH=$CACHE/go/path
  mkdir -p "$GOMODCACHE" "$GOCACHE" "$GOPATH" "$BIN_DIR"
}

# Runs a long command, printing a progress line every minute so CI logs are never silent.
with_progress() { # label cmd...
  local label=$1; shift
  local start=$SECONDS
  "$@" &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null && log "$label: still building ($((SECONDS - start)) s)"
  done
  wait "$pid" || die "$label failed"
  log "$label: done in $((SECONDS - start)) s"
}

version_ldflags() { # stamps both version packages like kubernetes' hack/lib/version.sh
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local pkg ld=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X '$pkg.gitVersion=$K8S_VERSION' -X '$pkg.gitMajor=1' -X '$pkg.gitMinor=$minor'"
    ld+=" -X '$pkg.gitTreeState=clean' -X '$pkg.buildDate=1970-01-01T00:00:00Z'"
  done
  printf '%s' "$ld"
}

build_k8s() {
  # kubelet is for the real node (hack/local-node.sh); built in the same module graph as the servers.
  local want=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet) b missing=false
  for b in "${want[@]}"; do [[ -x $BIN_DIR/$b ]] || missing=true; done
  $missing || { log "kubernetes $K8S_VERSION: cached in $BIN_DIR"; return 0; }
  go_env
  local staging="v0.${K8S_VERSION#v1.}" d=$SRC_DIR/k8s-$K8S_VERSION
  mkdir -p "$d"; cd "$d"
  log "kubernetes $K8S_VERSION: resolving the staging modules from k8s.io/kubernetes' go.mod"
  local gomod
  gomod=$(cd "$(mktemp -d)" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
          sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [[ -f $gomod ]] || die "could not download k8s.io/kubernetes@$K8S_VERSION"
  local mods
  mods=$(sed -n 's|^[[:space:]]*\(k8s\.io/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\./staging/.*|\1|p' "$gomod")
  [[ -n $mods ]] || die "no staging replace lines found in $gomod"
  # Wrapper module: require kubernetes, replace every staging module (required at v0.0.0) by its tag.
  printf 'module local.invalid/k8sbin\n\ngo 1.24\n' > go.mod
  local args=() m
  for m in $mods; do args+=("-replace=$m=$m@$staging"); done
  go mod edit "${args[@]}" -require="k8s.io/kubernetes@$K8S_VERSION"
  local gd; gd=$(sed -n 's/^godebug default=\(go[0-9.]*\)$/\1/p' "$gomod" | head -1)
  if [[ -n $gd ]]; then go mod edit -godebug=default="$gd"; fi
  cat > tools.go <<'EOF'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
EOF
  with_progress "kubernetes $K8S_VERSION: go mod tidy (downloads ~1 GB of modules on a cold cache)" go mod tidy
  local p
  for p in "${want[@]}"; do
    [[ -x $BIN_DIR/$p ]] && continue
    with_progress "kubernetes $K8S_VERSION: go build $p" \
      go build -trimpath -ldflags "-s -w $(version_ldflags)" -o "$BIN_DIR/$p" "k8s.io/kubernetes/cmd/$p"
  done
  "$BIN_DIR/kube-apiserver" --version
}

build_etcd() {
  [[ -x $BIN_DIR/etcd ]] && { log "etcd $ETCD_VERSION: cached"; return 0; }
  go_env
  local d=$SRC_DIR/etcd-$ETCD_VERSION; mkdir -p "$d"; cd "$d"
  # `go install go.etcd.io/etcd/server/v3@...` is refused (its go.mod has replace directives);
  # as a dependency those replaces are ignored, so build its main package from a wrapper module.
  printf 'module local.invalid/etcdbin\n\ngo 1.24\n' > go.mod
  printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > tools.go
  go mod edit -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  with_progress "etcd $ETCD_VERSION: go mod tidy" go mod tidy
  with_progress "etcd $ETCD_VERSION: go build" \
    go build -trimpath -ldflags "-s -w" -o "$BIN_DIR/etcd" go.etcd.io/etcd/server/v3
  "$BIN_DIR/etcd" --version | head -1
}

build_kwok() {
  local stages=$CACHE/kwok-stages/kwok-$KWOK_VERSION-moat1.yaml
  if [[ -x $BIN_DIR/kwok && -s $stages ]]; then log "kwok $KWOK_VERSION: cached"; return 0; fi
  go_env; mkdir -p "$CACHE/kwok-stages"
  GOBIN=$BIN_DIR with_progress "kwok $KWOK_VERSION: go install" \
    go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  # kwok >= v0.8.0 has no built-in stages: take the upstream "fast" stages from the module cache.
  local m f; m=$GOMODCACHE/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage
  : > "$stages.tmp"
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
           pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    printf -- '---\n' >> "$stages.tmp"; cat "$m/$f" >> "$stages.tmp"
  done
  # Test hook: broker pods running the marker image eclipse-mosquitto:2.0.99 never become Ready
  # (the upgrade tests use it for a target version whose pods fail their health gate).
  python3 - "$stages.tmp" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
anchor = "  name: pod-ready\n"
head, tail = s.split(anchor, 1)
old = "    matchExpressions:\n"
new = old + ("    - key: '.spec.containers.[] | select( .name == \"mosquitto\" ) | .image'\n"
             "      operator: 'NotIn'\n"
             "      values:\n"
             "      - 'eclipse-mosquitto:2.0.99'\n")
assert old in tail
open(p, "w").write(head + anchor + tail.replace(old, new, 1))
PY
  mv "$stages.tmp" "$stages"
}

# helm is stamped like its upstream Makefile does for a release: the version, a clean tree, and the
# Kubernetes version it assumes when no cluster is asked (--kube-version unset: `helm template`), which
# upstream derives from its client-go requirement (v0.X.Y -> 1.X). Without the last two flags helm
# assumes v1.20 and charts with a kubeVersion constraint fail. The marker makes caches holding a binary
# built with other flags rebuild it once.
HELM_STAMP=moat2
build_helm() {
  local marker=$BIN_DIR/.helm-$HELM_VERSION-$HELM_STAMP
  if [[ -x $BIN_DIR/helm && -f $marker ]]; then log "helm $HELM_VERSION: cached"; return 0; fi
  go_env
  local major=${HELM_VERSION%%.*} gomod cgo k8s_major k8s_minor
  gomod=$(cd "$(mktemp -d)" && go mod download -json "helm.sh/helm/$major@$HELM_VERSION" |
          sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  cgo=$(sed -n 's|^[[:space:]]*k8s\.io/client-go v\([0-9]*\)\.\([0-9]*\)\..*|\1 \2|p' "$gomod" | head -1)
  [[ -n $cgo ]] || die "helm $HELM_VERSION: no k8s.io/client-go requirement in $gomod"
  k8s_major=$(( ${cgo% *} + 1 )); k8s_minor=${cgo#* }
  local pkg ld="-s -w -X helm.sh/helm/$major/internal/version.version=$HELM_VERSION"
  ld+=" -X helm.sh/helm/$major/internal/version.metadata= -X helm.sh/helm/$major/internal/version.gitTreeState=clean"
  for pkg in pkg/lint/rules pkg/chartutil; do
    ld+=" -X helm.sh/helm/$major/$pkg.k8sVersionMajor=$k8s_major -X helm.sh/helm/$major/$pkg.k8sVersionMinor=$k8s_minor"
  done
  rm -f "$BIN_DIR"/.helm-*
  GOBIN=$BIN_DIR with_progress "helm $HELM_VERSION: go install (assumes Kubernetes v$k8s_major.$k8s_minor)" \
    go install -trimpath -ldflags "$ld" "helm.sh/helm/$major/cmd/helm@$HELM_VERSION"
  touch "$marker"
}

# A file of a Go module, copied into the cache: dest module@version path-in-module label.
fetch_module_file() {
  local dest=$1 module=$2 file=$3 label=$4
  [[ -s $dest ]] && { log "$label ($module): cached"; return 0; }
  go_env; mkdir -p "$(dirname "$dest")"
  with_progress "$label: go mod download $module" go mod download "$module"
  install -m 0644 "$GOMODCACHE/$module/$file" "$dest.tmp"
  mv "$dest.tmp" "$dest"
}

# The PolicyReport CRD (wgpolicyk8s.io/v1alpha2) of the Kubernetes Policy WG for the compliance
# tests. Kyverno ships it in its module (config/crds/policyreport/), so the Go module proxy serves it.
POLICYREPORT_CRD=$CACHE/crds/wgpolicyk8s.io_policyreports-kyverno-$KYVERNO_VERSION.yaml
fetch_policyreport() {
  fetch_module_file "$POLICYREPORT_CRD" "github.com/kyverno/kyverno@$KYVERNO_VERSION" \
    config/crds/policyreport/wgpolicyk8s.io_policyreports.yaml "PolicyReport CRD"
}

# The OpenReports Report CRD (openreports.io/v1alpha1), the policy WG's successor of PolicyReport,
# from its own API module (config/crd/), which the Go module proxy serves.
OPENREPORTS_CRD=$CACHE/crds/openreports.io_reports-$OPENREPORTS_VERSION.yaml
fetch_openreports() {
  fetch_module_file "$OPENREPORTS_CRD" "github.com/openreports/reports-api@$OPENREPORTS_VERSION" \
    config/crd/openreports.io_reports.yaml "OpenReports CRD"
}

# promtool, built from the Prometheus module (no replace directives, so `go install` works).
PROMTOOL=$CACHE/bin/promtool-$PROMETHEUS_VERSION/promtool
build_promtool() {
  [[ -x $PROMTOOL ]] && { log "promtool ($PROMETHEUS_VERSION): cached"; return 0; }
  go_env
  GOBIN=$(dirname "$PROMTOOL") with_progress "promtool $PROMETHEUS_VERSION: go install" \
    go install -trimpath -ldflags "-s -w -X github.com/prometheus/common/version.Version=$PROMETHEUS_VERSION" \
    "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION"
}

# cert-manager's controller. Upstream's main package (module .../controller-binary in cmd/controller)
# is not on the module proxy, and its Venafi issuer needs github.com/Venafi/vcert, which the proxy
# refuses, so a small main of ours runs the library's certificate controllers and the CA and
# self-signed issuers (no ACME, Vault, Venafi; no webhook or cainjector: nothing here needs them).
CERT_MANAGER=$CACHE/bin/cert-manager-$CERT_MANAGER_VERSION/controller
CERT_MANAGER_CRDS=$CACHE/crds/cert-manager-$CERT_MANAGER_VERSION.yaml
build_cert_manager() {
  [[ -x $CERT_MANAGER && -s $CERT_MANAGER_CRDS ]] && { log "cert-manager ($CERT_MANAGER_VERSION): cached"; return 0; }
  go_env
  local dir=$SRC_DIR/cert-manager-$CERT_MANAGER_VERSION
  mkdir -p "$dir" "$(dirname "$CERT_MANAGER")" "$(dirname "$CERT_MANAGER_CRDS")"
  printf 'module moat.local/cert-manager-controller\n\ngo 1.26.0\n\nrequire github.com/cert-manager/cert-manager %s\n' \
    "$CERT_MANAGER_VERSION" > "$dir/go.mod"
  cat > "$dir/main.go" <<'GO'
// The cert-manager controllers moat's tests need, run from cert-manager's library packages.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/cert-manager/cert-manager/pkg/controller"
	"k8s.io/apimachinery/pkg/api/resource"

	// each registers itself (controller.Register) in init
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/selfsigned"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
	_ "github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	_ "github.com/cert-manager/cert-manager/pkg/controller/issuers"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/selfsigned"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig file")
	clusterNs := flag.String("cluster-resource-namespace", "cert-manager", "namespace of ClusterIssuers' Secrets")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	q := resource.MustParse
	f, err := controller.NewContextFactory(ctx, controller.ContextOptions{
		Kubeconfig: *kubeconfig, KubernetesAPIQPS: 20, KubernetesAPIBurst: 50,
		IssuerOptions: controller.IssuerOptions{ClusterResourceNamespace: *clusterNs},
		ACMEOptions: controller.ACMEOptions{
			HTTP01SolverResourceRequestCPU: q("10m"), HTTP01SolverResourceRequestMemory: q("64Mi"),
			HTTP01SolverResourceLimitsCPU: q("100m"), HTTP01SolverResourceLimitsMemory: q("64Mi"),
		},
		SchedulerOptions: controller.SchedulerOptions{MaxConcurrentChallenges: 1},
		CertificateOptions: controller.CertificateOptions{
			CertificateRequestMinimumBackoffDuration: time.Second,
			CertificateRequestMaximumBackoffDuration: time.Minute,
		},
	})
	must(err)
	cctx, err := f.Build()
	must(err)
	for name, ctor := range controller.Known() {
		c, err := ctor(f)
		must(err)
		fmt.Fprintln(os.Stderr, "starting controller", name)
		go func() { must(c.Run(2, ctx)) }()
	}
	cctx.SharedInformerFactory.Start(ctx.Done())
	cctx.KubeSharedInformerFactory.Start(ctx.Done())
	cctx.HTTP01ResourceMetadataInformersFactory.Start(ctx.Done())
	<-ctx.Done()
}

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
GO
  (cd "$dir" && with_progress "cert-manager $CERT_MANAGER_VERSION: go mod tidy" go mod tidy &&
    with_progress "cert-manager $CERT_MANAGER_VERSION: go build" \
      go build -trimpath -ldflags "-s -w" -o "$CERT_MANAGER.tmp" . && mv "$CERT_MANAGER.tmp" "$CERT_MANAGER")
  local crds=$GOMODCACHE/github.com/cert-manager/cert-manager@$CERT_MANAGER_VERSION/deploy/crds
  for kind in certificates certificaterequests issuers clusterissuers; do
    printf -- '---\n'; cat "$crds/cert-manager.io_$kind.yaml"
  done > "$CERT_MANAGER_CRDS.tmp"
  mv "$CERT_MANAGER_CRDS.tmp" "$CERT_MANAGER_CRDS"
}

# ------------------------------------------------------------------ pki ----
# The real node's bridge address (hack/local-node.sh): pods reach the apiserver through a TCP forwarder
# on it, so the serving certificate names it too.
NODE_BRIDGE_IP=10.88.0.1
APISERVER_KUBELET_CLIENT_USER=moat-local:apiserver-kubelet-client

pki_sign() { # path-prefix subject ext: key + certificate signed by the cluster CA
  openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
  printf '%b' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -CAserial "$PKI/ca.srl" -out "$1.crt" -days 3650 -extfile "$1.ext" 2>/dev/null
  rm -f "$1.csr" "$1.ext"; chmod 600 "$1.key"
}

client_kubeconfig() { # file user cert-prefix: a kubeconfig (mode 600) for a client certificate of the cluster CA
  (umask 077; cat > "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: moat-local
  cluster: {server: "https://127.0.0.1:$API_PORT", certificate-authority: "$PKI/ca.crt"}
users:
- name: $2
  user: {client-certificate: "$3.crt", client-key: "$3.key"}
contexts:
- name: $2
  context: {cluster: moat-local, user: $2}
current-context: $2
EOF
  )
}

sign_apiserver() {
  local svc_ip
  svc_ip=$(python3 -c "import ipaddress,sys;print(next(ipaddress.ip_network(sys.argv[1]).hosts()))" "$SERVICE_CIDR")
  pki_sign "$PKI/apiserver" "/CN=kube-apiserver" \
    "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,IP:$svc_ip,IP:$NODE_BRIDGE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n"
}

# Pieces added for the real node, also into a run dir made before it existed: the apiserver's serving
# certificate gains the bridge IP (kube-apiserver reloads the files by itself), and the apiserver gets a
# client certificate for kubelets (kubectl logs/exec), bound to system:kubelet-api-admin in `up`.
pki_node_pieces() {
  if ! openssl x509 -in "$PKI/apiserver.crt" -noout -ext subjectAltName 2>/dev/null | grep -q "IP Address:$NODE_BRIDGE_IP\b"; then
    sign_apiserver
  fi
  if [[ ! -f $PKI/apiserver-kubelet-client.crt ]]; then
    pki_sign "$PKI/apiserver-kubelet-client" "/CN=$APISERVER_KUBELET_CLIENT_USER" \
      "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n"
  fi
}

pki() {
  if [[ -f $PKI/admin.crt && -f $RUN_DIR/kubeconfig ]]; then pki_node_pieces; return 0; fi
  mkdir -p "$PKI"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$PKI/ca.key" -out "$PKI/ca.crt" -days 3650 \
    -subj "/CN=moat-local-ca" 2>/dev/null
  sign_apiserver
  pki_sign "$PKI/admin" "/O=system:masters/CN=kubernetes-admin" \
    "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n"
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  chmod 600 "$PKI"/*.key
  pki_node_pieces
  local b64ca b64crt b64key
  b64ca=$(base64 -w0 < "$PKI/ca.crt"); b64crt=$(base64 -w0 < "$PKI/admin.crt"); b64key=$(base64 -w0 < "$PKI/admin.key")
  # umask only for this file: a process-wide 077 would reach everything `up` starts (containerd then
  # unpacks image layers into 0700 snapshot dirs that non-root containers cannot enter).
  (umask 077; cat > "$RUN_DIR/kubeconfig") <<EOF
apiVersion: v1
kind: Config
clusters:
- name: moat-local
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $b64ca
users:
- name: admin
  user:
    client-certificate-data: $b64crt
    client-key-data: $b64key
contexts:
- name: moat-local
  context: {cluster: moat-local, user: admin}
current-context: moat-local
EOF
}

# ------------------------------------------------------------ processes ----
# A process that exited stays a zombie until its parent (here mostly init) reaps it, and kill -0 still
# succeeds on a zombie: look at its state instead, so `down` does not wait seconds for the dead.
pid_alive() { local st; st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1); [[ -n $st && $st != Z ]]; }
running() { [[ -f $RUN_DIR/$1.pid ]] && pid_alive "$(cat "$RUN_DIR/$1.pid")"; }

start() { # name cmd...
  local name=$1; shift
  if running "$name"; then log "$name already running (pid $(cat "$RUN_DIR/$name.pid"))"; return 0; fi
  [[ -x $1 ]] || die "$name binary not found: $1 (run: make cluster-build)"
  setsid "$@" >"$RUN_DIR/$name.log" 2>&1 < /dev/null &
  echo $! > "$RUN_DIR/$name.pid"
  STARTED_NOW+=("$name")
  log "started $name (pid $!, log $RUN_DIR/$name.log)"
}

wait_for() { # name timeout_s cmd...
  local name=$1 t=$2 i; shift 2
  for ((i = 0; i < t * 4; i++)); do
    if "$@" >/dev/null 2>&1; then log "$name ready"; return 0; fi
    if ! running "$name"; then
      log "$name exited; last lines of $RUN_DIR/$name.log:"; tail -25 "$RUN_DIR/$name.log" >&2 || true
      die "$name exited"
    fi
    sleep 0.25
  done
  log "$name not ready after ${t}s; last lines of $RUN_DIR/$name.log:"; tail -25 "$RUN_DIR/$name.log" >&2 || true
  die "$name not ready after ${t}s"
}

curl_api() { curl -sf --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "https://127.0.0.1:$API_PORT$1"; }
# --cache-dir: kubectl's discovery/http cache stays in the run dir instead of ~/.kube/cache.
kubectl_local() { "$BIN_DIR/kubectl" --kubeconfig="$RUN_DIR/kubeconfig" --cache-dir="$RUN_DIR/kube-cache" "$@"; }

audit_policy() { # writes and single-object reads are logged (metadata only): tests count an operator's API calls per namespace
  cat > "$RUN_DIR/audit-policy.yaml" <<'EOF2'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  resources: [{group: coordination.k8s.io, resources: [leases]}]
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection, get]
- level: None
EOF2
}

up() {
  mkdir -p "$RUN_DIR"; pki; audit_policy; UP_IN_PROGRESS=true
  start etcd "$BIN_DIR/etcd" --name=moat-local --data-dir="$RUN_DIR/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="moat-local=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync --quota-backend-bytes=4294967296 --log-level=warn
  wait_for etcd 30 curl -sf "http://127.0.0.1:$ETCD_CLIENT_PORT/health"

  start kube-apiserver "$BIN_DIR/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$API_PORT" \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --authorization-mode=Node,RBAC --allow-privileged=true \
    --endpoint-reconciler-type=none --max-requests-inflight=1600 --max-mutating-requests-inflight=800 \
    --audit-policy-file="$RUN_DIR/audit-policy.yaml" --audit-log-path="$RUN_DIR/audit.log" \
    --audit-log-maxsize=200 --audit-log-maxbackup=3 --audit-log-mode=blocking \
    --kubelet-preferred-address-types=InternalIP,Hostname --kubelet-certificate-authority="$PKI/ca.crt" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" --kubelet-client-key="$PKI/apiserver-kubelet-client.key"
  wait_for kube-apiserver 120 curl_api /readyz
  # kubelets authorize the apiserver's calls (logs, exec, port-forward) by webhook: allow its client user.
  kubectl_local create clusterrolebinding moat-local:apiserver-kubelet-api-admin --clusterrole=system:kubelet-api-admin \
    --user="$APISERVER_KUBELET_CLIENT_USER" --dry-run=client -o yaml | kubectl_local apply -f - >/dev/null

  start kube-controller-manager "$BIN_DIR/kube-controller-manager" \
    --kubeconfig="$RUN_DIR/kubeconfig" --bind-address=127.0.0.1 --secure-port="$KCM_PORT" \
    --authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics --leader-elect=false \
    --use-service-account-credentials=false \
    --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --controllers='*' --kube-api-qps=200 --kube-api-burst=400 \
    --flex-volume-plugin-dir="$RUN_DIR/flex-volume" # default: it creates /usr/libexec/kubernetes/... on the host
  start kube-scheduler "$BIN_DIR/kube-scheduler" \
    --kubeconfig="$RUN_DIR/kubeconfig" --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" \
    --authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics --leader-elect=false
  wait_for kube-controller-manager 90 curl -sfk "https://127.0.0.1:$KCM_PORT/healthz"
  wait_for kube-scheduler 90 curl -sfk "https://127.0.0.1:$SCHED_PORT/healthz"

  start kwok "$BIN_DIR/kwok" --kubeconfig="$RUN_DIR/kubeconfig" \
    --config="$CACHE/kwok-stages/kwok-$KWOK_VERSION-moat1.yaml" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --cidr="$POD_CIDR" --node-ip=10.255.0.1 --node-lease-duration-seconds=40 \
    --server-address="127.0.0.1:$KWOK_PORT"
  wait_for kwok 60 curl -sf "http://127.0.0.1:$KWOK_PORT/healthz"
  nodes "$KWOK_NODES"
  wait_nodes_ready "$KWOK_NODES"
  wait_default_sa
  UP_IN_PROGRESS=false
  log "control plane up: export KUBECONFIG=$RUN_DIR/kubeconfig (kubectl: $BIN_DIR/kubectl)"
  # The real node has its own clean-up on failure; the control plane stays up either way.
  if [[ ${MOAT_REAL_NODE:-1} != 0 ]]; then
    bash "$NODE_SCRIPT" up
    if [[ ${MOAT_NETPOL:-1} != 0 ]]; then bash "$NETPOL_SCRIPT" up; fi
  fi
}

nodes() {
  local n=$1 i
  for ((i = 0; i < n; i++)); do
    kubectl_local apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations: {node.alpha.kubernetes.io/ttl: "0", kwok.x-k8s.io/node: fake}
  labels: {kubernetes.io/hostname: kwok-node-$i, kubernetes.io/os: linux, kubernetes.io/arch: amd64, type: kwok}
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "250"}
  capacity: {cpu: "32", memory: 256Gi, pods: "250"}
EOF
  done
}

wait_nodes_ready() {
  local n=$1 i ready
  for ((i = 0; i < 240; i++)); do
    ready=$(kubectl_local get nodes -l type=kwok \
      -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null | grep -c True || true)
    if ((ready >= n)); then log "$ready kwok node(s) Ready"; return 0; fi
    sleep 0.5
  done
  die "kwok nodes not Ready after 120 s (kwok log: $RUN_DIR/kwok.log)"
}

wait_default_sa() { # the ServiceAccount controller must have created `default` before pods can be created
  local i
  for ((i = 0; i < 240; i++)); do
    kubectl_local -n default get serviceaccount default >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  die "default ServiceAccount never appeared (kube-controller-manager log: $RUN_DIR/kube-controller-manager.log)"
}

stop_all() { # [names...] stops processes (default: all) in reverse start order; keeps the run dir (logs)
  local i name pid only=("$@")
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    name=${COMPONENTS[i]}
    if ((${#only[@]})) && [[ " ${only[*]} " != *" $name "* ]]; then continue; fi
    [[ -f $RUN_DIR/$name.pid ]] || continue
    pid=$(cat "$RUN_DIR/$name.pid")
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 60); do pid_alive "$pid" || break; sleep 0.25; done
      kill -9 "$pid" 2>/dev/null || true
      log "stopped $name (pid $pid)"
    fi
    rm -f "$RUN_DIR/$name.pid"
  done
}

down() {
  # NetworkPolicy enforcement first (its rules name the node's pods), then the node: it drains its pods
  # through the apiserver and removes its host state.
  if [[ -d $RUN_DIR/netpol ]]; then
    bash "$NETPOL_SCRIPT" down || log "WARNING: NetworkPolicy enforcement's down failed (see above); continuing"
  fi
  if [[ -d $RUN_DIR/node ]] || ip link show moatbr0 >/dev/null 2>&1; then
    bash "$NODE_SCRIPT" down || log "WARNING: the real node's down failed (see above); stopping the control plane anyway"
  fi
  stop_all
  if [[ ${KEEP_LOCAL_CLUSTER:-} != 1 ]]; then rm -rf "$RUN_DIR"; fi
}

status() {
  local name
  for name in "${COMPONENTS[@]}"; do
    if running "$name"; then echo "$name: running (pid $(cat "$RUN_DIR/$name.pid"))"; else echo "$name: stopped"; fi
  done
  if [[ -d $RUN_DIR/node ]]; then bash "$NODE_SCRIPT" status; fi
  if [[ -d $RUN_DIR/netpol ]]; then bash "$NETPOL_SCRIPT" status; fi
}

NODE_SCRIPT=$REPO/hack/local-node.sh
NETPOL_SCRIPT=$REPO/hack/netpol.sh
# hack/local-node.sh sources this file for its helpers and settings; only a direct run dispatches.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  case ${1:-} in
    build) shift
           case ${1:-all} in
             k8s) build_k8s;; etcd) build_etcd;; kwok) build_kwok;; helm) build_helm;; policyreport) fetch_policyreport;;
             openreports) fetch_openreports;;
             promtool) build_promtool;;
             cert-manager) build_cert_manager;;
             node) bash "$NODE_SCRIPT" build;;
             netpol) bash "$NETPOL_SCRIPT" build;;
             all) build_etcd; build_k8s; build_kwok; build_helm; fetch_policyreport; fetch_openreports; bash "$NODE_SCRIPT" build
                  if [[ ${MOAT_NETPOL:-1} != 0 ]]; then bash "$NETPOL_SCRIPT" build; fi;;
             *) die "unknown build target ${1:-}";;
           esac;;
    up) up;;
    down) down;;
    status) status;;
    env) echo "export KUBECONFIG=$RUN_DIR/kubeconfig PATH=$BIN_DIR:\$PATH";;
    bin-dir) echo "$BIN_DIR";;
    policyreport-crd) echo "$POLICYREPORT_CRD";;
    openreports-crd) echo "$OPENREPORTS_CRD";;
    promtool) echo "$PROMTOOL";;
    cert-manager) echo "$CERT_MANAGER";;
    cert-manager-crds) echo "$CERT_MANAGER_CRDS";;
    *) sed -n '2,18p' "$0"; exit 2;;
  esac
fi
