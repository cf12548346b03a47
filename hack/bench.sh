#!/usr/bin/env bash
# make bench: the scale benchmark (not part of make test). Writes bench/results.md and .json.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
echo "[bench] building the release binary and the benchmark"
cargo build --release --bin moat
hack/ensure-mosquitto.sh
# MOAT_BENCH_ONLY=convergence,scale,real,broker selects sections (results.md is then not written)
hack/with-cluster.sh cargo bench --features cluster-tests --bench scale
