#!/usr/bin/env bash
# make demo: the whole product on the local control plane, then the rendered broker for real.
#
#  1. builds moat and (cached) the local control plane, starts it (idempotent)
#  2. helm-installs the chart; the operator Deployment's pod is simulated by kwok (no containers
#     run here), so the demo runs `moat run` on this machine AS THE CHART'S ServiceAccount
#     (impersonation) — the same identity and RBAC the Deployment would use
#  3. applies examples/ (broker, password / certificate / bring-your-own-password users, ACLs,
#     a firewall), waits for Ready and shows `kubectl get moat` and the broker's compliance checks
#  4. exports the broker's applied Secrets, installs them with `moat agent --once` (as in the pod),
#     runs a real Mosquitto on loopback and connects with the generated credentials over TLS and
#     mTLS; shows an anonymous connect and an ACL violation being refused; probes the listener
#  5. cleans up: deletes the demo namespace (the operator releases its finalizers), uninstalls the
#     chart, stops the local broker and operator. The control plane keeps running for a fast second
#     run: `make cluster-down` stops it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
NS=moat-demo
RELEASE=moat-demo
OPNS=moat-demo-system
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
info() { printf '    %s\n' "$*"; }

step "building moat (cargo build)"
cargo build --quiet --bin moat
MOAT=$REPO/target/debug/moat

step "local control plane (first run builds it from the Go module proxy; later runs reuse ~/.cache/moat)"
bash hack/local-cluster.sh build all
bash hack/local-cluster.sh up
eval "$(bash hack/local-cluster.sh env)"
hack/ensure-mosquitto.sh
export KUBECONFIG PATH

WORK=$(mktemp -d /tmp/moat-demo.XXXXXX)
chmod 755 "$WORK"
OP_PID=""
BROKER_PID=""
cleanup() {
  local rc=$?
  step "cleaning up"
  [[ -n $BROKER_PID ]] && kill "$BROKER_PID" 2>/dev/null || true
  if kubectl get ns "$NS" >/dev/null 2>&1; then
    info "deleting namespace $NS (the operator releases the certificate-revocation finalizers)"
    kubectl delete ns "$NS" --wait=true --timeout=90s >/dev/null || true
  fi
  [[ -n $OP_PID ]] && kill "$OP_PID" 2>/dev/null && wait "$OP_PID" 2>/dev/null || true
  helm uninstall "$RELEASE" -n "$OPNS" >/dev/null 2>&1 || true
  rm -rf "$WORK"
  info "the local control plane is still running (make cluster-down stops it)"
  exit $rc
}
trap cleanup EXIT

step "installing the Helm chart (release $RELEASE in $OPNS)"
kubectl apply --server-side --force-conflicts -f crds/ >/dev/null
helm upgrade --install "$RELEASE" charts/moat --namespace "$OPNS" --create-namespace --wait --timeout 120s >/dev/null
kubectl -n "$OPNS" get deploy,sa,role -l app.kubernetes.io/instance="$RELEASE"
info "kwok simulates the operator pod above (no container runs on fake nodes), so the demo"
info "runs the operator here, impersonating the chart's ServiceAccount:"
info "  moat run --as system:serviceaccount:$OPNS:moat --watch-namespaces $NS"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
"$MOAT" run --as "system:serviceaccount:$OPNS:moat" --operator-namespace "$OPNS" --watch-namespaces "$NS" \
  --http-addr 127.0.0.1:0 --lease-name moat-demo >"$WORK/operator.log" 2>&1 &
OP_PID=$!

step "applying examples/ into namespace $NS"
kubectl -n "$NS" apply -f examples/broker-production.yaml -f examples/user-password.yaml \
  -f examples/user-certificate.yaml -f examples/user-byo-password.yaml -f examples/acl-per-user.yaml \
  -f examples/acl-pattern.yaml -f examples/firewall.yaml
info "waiting for Ready (broker rollout on kwok nodes, credentials, ACLs, policies)..."
for kind in mqb mqu mqacl mqfw; do
  kubectl -n "$NS" wait --for=condition=Ready "$kind" --all --timeout=180s >/dev/null
done
kubectl -n "$NS" wait --for=condition=Compliant mqb/plant-b --timeout=60s >/dev/null || true

step "kubectl get moat"
kubectl -n "$NS" get moat
step "compliance checks of plant-b"
kubectl -n "$NS" get mqb plant-b -o jsonpath='{range .status.compliance.checks[*]}{.result}{"\t"}{.id}{"\t"}{.measure}{"\t"}{.message}{"\n"}{end}' | column -t -s $'\t' | cut -c1-160
info "(Unknown = the active probe cannot reach pods on kwok's fake nodes: never counted as a pass)"

step "running the broker moat rendered, with a real Mosquitto on loopback"
secret() { kubectl -n "$NS" get secret "$1" -o jsonpath="{.data.$2}" | base64 -d; }
SRC=$WORK/secrets RUN=$WORK/run
mkdir -p "$SRC"/{config,tls,acl} "$RUN"
# the only changes to the applied files: paths of the pod's run directory and loopback ports
secret plant-b-config 'mosquitto\.conf' | sed -e "s#/moat/run#$RUN#g" -e 's/^listener \([0-9]*\)$/listener 2\1 127.0.0.1/' >"$SRC/config/mosquitto.conf"
for k in tls.crt tls.key ca.crt crl.pem; do secret plant-b-tls "${k//./\\.}" >"$SRC/tls/$k"; done
secret plant-b-acl acl >"$SRC/acl/acl"
for s in $(kubectl -n "$NS" get secret -l mqtt.moat.dev/broker=plant-b,app.kubernetes.io/component=passwd -o name); do
  n=${s##*-}; mkdir -p "$SRC/passwd/$n"
  secret "${s#secret/}" passwd >"$SRC/passwd/$n/passwd"; secret "${s#secret/}" manifest >"$SRC/passwd/$n/manifest"
done
"$MOAT" agent --once --source "$SRC" --target "$RUN" --owner "$(id -u mosquitto):$(id -g mosquitto)"
chown -R mosquitto:mosquitto "$RUN"
info "moat agent validated and installed: $(cd "$RUN" && ls -R | tr '\n' ' ')"
stdbuf -oL /usr/sbin/mosquitto -c "$RUN/mosquitto.conf" >"$WORK/broker.log" 2>&1 &
BROKER_PID=$!
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/28883) 2>/dev/null && break; sleep 0.1; done

CA=$WORK/ca.crt; secret plant-b-tls 'ca\.crt' >"$CA"
PW=$(secret sensor-17-mqtt-credentials password)
CERT=$WORK/gw.crt KEY=$WORK/gw.key
secret gateway-1-mqtt-tls 'tls\.crt' >"$CERT"; secret gateway-1-mqtt-tls 'tls\.key' >"$KEY"
pub() { mosquitto_pub -h 127.0.0.1 --cafile "$CA" --insecure -V mqttv5 -q 1 "$@" 2>&1; }
info "(--insecure only skips the host-name check because the demo dials 127.0.0.1; the chain is verified against moat's CA)"

mosquitto_sub -h 127.0.0.1 -p 28883 --cafile "$CA" --insecure -u dashboard -P 'c0rrect-Horse-battery-staple-Plant-B' \
  -t 'plant/b/sensors/+/telemetry' -C 1 -W 10 -v >"$WORK/sub.out" 2>&1 &
SUB=$!
sleep 0.5
printf '    %-58s' "sensor-17 (generated password, TLS) publishes telemetry:"
out=$(pub -p 28883 -u sensor-17 -P "$PW" -t plant/b/sensors/sensor-17/telemetry -m '21.5C') && echo "sent ${out:+($out)}"
wait "$SUB" && printf '    %-58s%s\n' "dashboard (bring-your-own password) received:" "$(cat "$WORK/sub.out")"
printf '    %-58s' "gateway-1 (client certificate, mTLS, TLS 1.3):"
pub -p 28884 --cert "$CERT" --key "$KEY" -t devices/gateway-1/status -m online >/dev/null && echo "connected and published as gateway-1"
printf '    %-58s' "anonymous client:"
if out=$(mosquitto_pub -h 127.0.0.1 -p 28883 --cafile "$CA" --insecure -t x -m y 2>&1); then echo "ACCEPTED (unexpected)"; exit 1; else echo "refused: ${out##*: }"; fi
printf '    %-58s' "sensor-17 publishes to plant/b/commands/admin/reboot:"
out=$(pub -p 28883 -u sensor-17 -P "$PW" -t plant/b/commands/admin/reboot -m now)
if [[ $out == *"Not authorized"* ]]; then echo "refused by the ACL (Not authorized)"; else echo "NOT refused: $out"; exit 1; fi
step "moat probe against the local broker (as the operator's compliance probe does)"
"$MOAT" probe --host 127.0.0.1 --port 28883 --server-name "plant-b.$NS.svc" --ca "$CA" || true
step "the broker's own connection log"
grep -E 'New client connected|not authorised|Denied' "$WORK/broker.log" | sed 's/^/    /' | head -8

step "demo complete"
