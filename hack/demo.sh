#!/usr/bin/env bash
# make demo: the whole product on the local cluster, with real containers on its real node.
#
#  1. builds moat and (cached) the local cluster: control plane, kwok nodes and the real kubelet
#     node moat-real-0 (hack/local-node.sh: needs root); builds and loads the images (the brokers
#     from Debian's mosquitto packages, moat from this tree: hack/images.sh)
#  2. helm-installs the chart; the operator Deployment's pod runs on the real node
#  3. applies examples/ (broker, password / certificate / bring-your-own-password users, ACLs,
#     a firewall) with the broker placed on the real node; waits for Ready and Compliant (every
#     check passes, the live probe reached each replica) and shows `kubectl get moat`
#  4. connects to a broker pod with the generated credentials over TLS and mTLS; shows an
#     anonymous connect and an ACL violation being refused, the connection log in `kubectl logs`
#  5. attacks: an allow-everything NetworkPolicy fails MOAT-FW-001 with its remediation (and
#     passes again when removed); a deleted user's live session is ended without a restart; 25
#     guessed passwords raise a SuspiciousActivity Event, counted by the agent from the broker log
#  6. cleans up: deletes the demo namespace and uninstalls the chart. The cluster keeps running for
#     a fast second run: `make cluster-down` stops it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
NS=moat-demo
RELEASE=moat-demo
OPNS=moat-demo-system
step() { printf '\n\033[1m==> %s\033[0m (%ss)\n' "$1" "$SECONDS"; }
info() { printf '    %s\n' "$*"; }
[[ $(id -u) == 0 ]] || { echo "make demo needs root: the real node runs kubelet, containerd and runc here" >&2; exit 1; }

step "building moat and the kubectl plugin (cargo build)"
cargo build --quiet --bin moat --bin kubectl-moat
MOAT=$PWD/target/debug/moat

step "local cluster with a real node (the first run builds it from the Go module proxy into ~/.cache/moat)"
bash hack/local-cluster.sh build all
bash hack/local-cluster.sh up
eval "$(bash hack/local-cluster.sh env)"
PATH=$PWD/target/debug:$PATH # kubectl-moat: `kubectl moat` finds it there
hack/ensure-mosquitto.sh
export KUBECONFIG PATH

step "images for the real node (Debian's mosquitto packages; moat from this tree)"
export MOAT_BINARY=$MOAT
hack/images.sh build all
hack/images.sh load
IMAGE=$(hack/images.sh ref moat)
info "moat image: $IMAGE"

WORK=$(mktemp -d /tmp/moat-demo.XXXXXX)
SUB=""
cleanup() {
  local rc=$?
  step "cleaning up"
  [[ -n $SUB ]] && kill "$SUB" 2>/dev/null || true
  if kubectl get ns "$NS" >/dev/null 2>&1; then
    info "deleting namespace $NS"
    kubectl delete ns "$NS" --wait=true --timeout=90s >/dev/null || true
  fi
  helm uninstall "$RELEASE" -n "$OPNS" --wait >/dev/null 2>&1 || true
  rm -rf "$WORK"
  info "the local cluster is still running (make cluster-down stops it)"
  exit $rc
}
trap cleanup EXIT

# the real node's label and taint: only pods that ask for it run there (kwok nodes take the rest)
PLACEMENT='{"nodeSelector":{"moat.dev/node-type":"real"},"tolerations":[{"key":"moat.dev/real-node","operator":"Equal","value":"true","effect":"NoSchedule"}]}'

step "installing the Helm chart (release $RELEASE in $OPNS): the operator runs on the real node"
kubectl apply --server-side --force-conflicts -f crds/ >/dev/null
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
helm upgrade --install "$RELEASE" charts/moat --namespace "$OPNS" --create-namespace \
  --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" --set image.pullPolicy=Never \
  --set "watchNamespaces={$NS}" \
  --set kubernetesApi.host=10.88.0.1 --set kubernetesApi.port=16443 \
  --set-string 'nodeSelector.moat\.dev/node-type=real' \
  --set 'tolerations[0].key=moat.dev/real-node,tolerations[0].operator=Equal,tolerations[0].effect=NoSchedule' \
  --set-string 'tolerations[0].value=true' \
  --wait --timeout 180s >/dev/null
kubectl -n "$OPNS" get pods -o wide -l app.kubernetes.io/instance="$RELEASE"
info "(the apiserver listens on 127.0.0.1 only: kubernetesApi points pods at the node's bridge address,"
info " forwarded to it by hack/tcp-forward.py)"

step "applying examples/ into namespace $NS (the broker placed on the real node, Debian's 2.0.21)"
kubectl patch --local -f examples/broker-production.yaml --type merge -o yaml -p \
  "{\"spec\":{\"version\":\"2.0.21\",\"image\":{\"repository\":\"moat.local/mosquitto\",\"pullPolicy\":\"Never\"},\"pod\":$PLACEMENT}}" \
  | kubectl -n "$NS" apply -f - >/dev/null
kubectl -n "$NS" apply -f examples/user-password.yaml -f examples/user-certificate.yaml \
  -f examples/user-byo-password.yaml -f examples/acl-per-user.yaml -f examples/acl-pattern.yaml \
  -f examples/firewall.yaml >/dev/null
info "waiting for Ready (3 broker pods started by the kubelet, credentials, ACLs, policies)..."
for kind in mqb mqu mqacl mqfw; do
  kubectl -n "$NS" wait --for=condition=Ready "$kind" --all --timeout=180s >/dev/null
done
info "waiting for Compliant (the operator's probe reaches every replica)..."
kubectl -n "$NS" wait --for=condition=Compliant mqb/plant-b --timeout=120s >/dev/null

step "kubectl get moat; pods"
kubectl -n "$NS" get moat
kubectl -n "$NS" get pods -o wide
step "kubectl moat status (the plugin: compliance by measure)"
kubectl moat status -n "$NS"
step "compliance checks of plant-b"
checks() { kubectl -n "$NS" get mqb plant-b -o jsonpath='{range .status.compliance.checks[*]}{.result}{"\t"}{.id}{"\t"}{.measure}{"\t"}{.message}{"\n"}{end}'; }
checks | column -t -s $'\t' | cut -c1-150

step "clients on a broker pod (TLS to the pod IP; the chain is verified against moat's CA)"
secret() { kubectl -n "$NS" get secret "$1" -o jsonpath="{.data.$2}" | base64 -d; }
POD=plant-b-0
IP=$(kubectl -n "$NS" get pod "$POD" -o jsonpath='{.status.podIP}')
CA=$WORK/ca.crt; secret plant-b-tls 'ca\.crt' >"$CA"
PW=$(secret sensor-17-mqtt-credentials password)
CERT=$WORK/gw.crt KEY=$WORK/gw.key
secret gateway-1-mqtt-tls 'tls\.crt' >"$CERT"; secret gateway-1-mqtt-tls 'tls\.key' >"$KEY"
info "$POD is $IP; its certificate names $POD.plant-b-headless.$NS.svc (no cluster DNS here, so"
info "mosquitto_pub dials the IP with --insecure: only the host-name check is skipped)"
pub() { mosquitto_pub -h "$IP" --cafile "$CA" --insecure -V mqttv5 -q 1 "$@" 2>&1; }
logins() { kubectl -n "$NS" logs "$POD" -c mosquitto | grep -c "New client connected.* u'$1'" || true; }
until_login() { # user, logins before: waits for the broker's log line of a new login
  local deadline=$((SECONDS + 20))
  until (( $(logins "$1") > $2 )); do ((SECONDS < deadline)) || { echo "no login of $1" >&2; exit 1; }; sleep 0.2; done
}
# Ready means moat wrote the credentials; the kubelet and moat's agent load them into each pod
# within seconds (moat nudges the kubelet; the agent coalesces updates for 3 s)
info "waiting until $POD has loaded the users' credentials..."
deadline=$((SECONDS + 30))
until pub -p 8883 -u sensor-17 -P "$PW" -t plant/b/sensors/sensor-17/telemetry -m warmup >/dev/null; do
  ((SECONDS < deadline)) || { echo "sensor-17 never logged in" >&2; exit 1; }; sleep 0.3
done
n=$(logins dashboard)
mosquitto_sub -h "$IP" -p 8883 --cafile "$CA" --insecure -u dashboard -P 'c0rrect-Horse-battery-staple-Plant-B' \
  -t 'plant/b/sensors/+/telemetry' -C 1 -W 15 -v >"$WORK/sub.out" 2>&1 &
SUB=$!
until_login dashboard "$n"
printf '    %-58s' "sensor-17 (generated password, TLS) publishes telemetry:"
out=$(pub -p 8883 -u sensor-17 -P "$PW" -t plant/b/sensors/sensor-17/telemetry -m '21.5C') || { echo "FAILED: $out"; exit 1; }
echo "sent${out:+ ($out)}"
wait "$SUB" || { echo "dashboard received nothing: $(cat "$WORK/sub.out")"; exit 1; }
SUB=""
printf '    %-58s%s\n' "dashboard (bring-your-own password) received:" "$(cat "$WORK/sub.out")"
printf '    %-58s' "gateway-1 (client certificate, mTLS, TLS 1.3):"
pub -p 8884 --cert "$CERT" --key "$KEY" -t devices/gateway-1/status -m online >/dev/null && echo "connected and published as gateway-1"
printf '    %-58s' "anonymous client:"
if out=$(mosquitto_pub -h "$IP" -p 8883 --cafile "$CA" --insecure -t x -m y 2>&1); then echo "ACCEPTED (unexpected)"; exit 1; else echo "refused: ${out##*: }"; fi
printf '    %-58s' "sensor-17 publishes to plant/b/commands/admin/reboot:"
out=$(pub -p 8883 -u sensor-17 -P "$PW" -t plant/b/commands/admin/reboot -m now)
if [[ $out == *"Not authorized"* ]]; then echo "refused by the ACL (Not authorized)"; else echo "NOT refused: $out"; exit 1; fi
step "the broker's connection log (kubectl logs $POD -c mosquitto)"
kubectl -n "$NS" logs "$POD" -c mosquitto | grep -E 'New client connected|not authorised|Denied' | sed 's/^/    /' | tail -6

step "attack 1: someone opens the broker pods with their own NetworkPolicy"
kubectl -n "$NS" apply -f - >/dev/null <<'EOF'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-everything}
spec:
  podSelector: {matchLabels: {app.kubernetes.io/instance: plant-b}}
  policyTypes: [Ingress]
  ingress: [{}]
EOF
# the next audit (asked for now, once kube-router enforces the new policy) sends moat's outsider
# at every listener of every pod: the network lets it in
audit() { # round: asks for an audit and waits until it ran
  kubectl -n "$NS" annotate mqb plant-b "mqtt.moat.dev/audit=$1" --overwrite >/dev/null
  local deadline=$((SECONDS + 60))
  until [[ $(kubectl -n "$NS" get mqb plant-b -o jsonpath='{.status.auditRequest}') == "$1" ]]; do
    ((SECONDS < deadline)) || { echo "audit $1 never ran" >&2; exit 1; }; sleep 0.5
  done
}
bash hack/netpol.sh wait-policy "$NS" allow-everything present >/dev/null
audit attack-1
kubectl -n "$NS" wait --for=condition=Compliant=False mqb/plant-b --timeout=60s >/dev/null
kubectl moat status -n "$NS"
kubectl -n "$NS" delete networkpolicy allow-everything >/dev/null
bash hack/netpol.sh wait-policy "$NS" allow-everything absent >/dev/null
audit attack-1-over
kubectl -n "$NS" wait --for=condition=Compliant mqb/plant-b --timeout=60s >/dev/null
info "policy removed: Compliant again ($(kubectl -n "$NS" get mqb plant-b -o jsonpath='{.status.compliance.summary}'))"

step "attack 2: a user is removed while its client is connected"
n=$(logins sensor-17)
mosquitto_sub -h "$IP" -p 8883 --cafile "$CA" --insecure -u sensor-17 -P "$PW" -t 'plant/b/commands/#' >"$WORK/live.out" 2>&1 &
SUB=$!
until_login sensor-17 "$n"
restarts() { kubectl -n "$NS" get pod "$POD" -o jsonpath='{.status.containerStatuses[?(@.name=="mosquitto")].restartCount}'; }
RESTARTS=$(restarts)
start=$(date +%s%N)
kubectl -n "$NS" delete mqttuser sensor-17 >/dev/null
wait "$SUB" || true   # mosquitto_sub reconnects after the broker drops it, is refused and exits
SUB=""
ms=$((($(date +%s%N) - start) / 1000000))
printf '    %-58s%d.%d s (%s)\n' "kubectl delete mqttuser sensor-17 -> live session ended:" $((ms / 1000)) $((ms % 1000 / 100)) "$(tail -1 "$WORK/live.out")"
printf '    %-58s' "sensor-17 connects again:"
if out=$(pub -p 8883 -u sensor-17 -P "$PW" -t plant/b/sensors/sensor-17/telemetry -m x); then echo "ACCEPTED (unexpected)"; exit 1; else echo "refused: ${out##*: }"; fi
info "broker container restarts: $RESTARTS before, $(restarts) after (the agent reloaded the password file)"

step "attack 3: someone guesses passwords"
for i in $(seq 25); do
  mosquitto_pub -h "$IP" -p 8883 --cafile "$CA" --insecure -u "admin$i" -P "guess-$i" -t x -m x >/dev/null 2>&1 || true
done
info "25 wrong logins sent; the agent reads them in Mosquitto's log, the operator asks it every 15 s"
deadline=$((SECONDS + 60))
until kubectl -n "$NS" get events --field-selector reason=SuspiciousActivity -o name | grep -q .; do
  ((SECONDS < deadline)) || { echo "no SuspiciousActivity Event" >&2; exit 1; }; sleep 1
done
kubectl -n "$NS" get events --field-selector reason=SuspiciousActivity | sed 's/^/    /'
info "the agent's metrics (port 9884; NetworkPolicy plant-b-moat-metrics admits only chart-named namespaces):"
curl -s "http://$IP:9884/metrics" | grep '^moat_broker_auth_failures_total' | sed 's/^/    /'

step "demo complete"
