#!/usr/bin/env bash
# make bench: the scale benchmark (not part of make test). Writes bench/results.md and .json.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
echo "[bench] building the release binary and the benchmark"
cargo build --release --bin moat
hack/ensure-mosquitto.sh
hack/with-cluster.sh cargo bench --features cluster-tests --bench scale
