#!/usr/bin/env bash
# with-cluster.sh CMD...: runs CMD against the local control plane.
# Reuses a cluster that is already up (e.g. from `make cluster-up`) and leaves it running;
# otherwise builds (cached) and starts one, and always stops it afterwards, also on failure.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cluster=$here/local-cluster.sh
# (the status is read whole first: `status | grep -q` under pipefail fails when grep exits early)
status=$(bash "$cluster" status 2>/dev/null || true)
if [[ $status == *'kube-apiserver: running'* ]]; then
  echo "[with-cluster] reusing the running local control plane" >&2
else
  bash "$cluster" build all
  trap 'echo "[with-cluster] stopping the local control plane" >&2; bash "$cluster" down' EXIT
  bash "$cluster" up
fi
eval "$(bash "$cluster" env)"
"$@"
