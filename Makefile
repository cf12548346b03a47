# moat — the two set-up commands are `make demo` and `make test` (see README.md).
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CLUSTER := hack/local-cluster.sh
export MOAT_CACHE ?= $(HOME)/.cache/moat
CARGO ?= cargo

.PHONY: help test lint unit e2e cluster-test demo bench crds cluster-build cluster-up cluster-down

help:
	@echo "make demo          the whole product on a local control plane (builds it on first run)"
	@echo "make test          fmt, clippy, unit tests, broker e2e (real Mosquitto), cluster tests (real apiserver)"
	@echo "make bench         scale benchmark (not part of make test), writes bench/results.md"
	@echo "make cluster-up    start the local control plane; KUBECONFIG=.local-cluster/kubeconfig"
	@echo "make cluster-down  stop it and delete its state"
	@echo "make crds          regenerate crds/ from the Rust types"

## Everything CI runs: static checks, unit tests, broker e2e, then the cluster tests.
test: lint unit e2e cluster-test
	@echo "[make test] all green"

lint:
	@echo "[make test] cargo fmt --check"
	$(CARGO) fmt --all -- --check
	@echo "[make test] cargo clippy --all-targets --all-features -- -D warnings"
	$(CARGO) clippy --all-targets --all-features -- -D warnings

unit:
	@echo "[make test] unit tests (pure core, CRD drift; the probe's tests use a real Mosquitto)"
	hack/ensure-mosquitto.sh
	$(CARGO) test --lib --bins

e2e:
	@echo "[make test] broker e2e tests against a real Mosquitto"
	hack/ensure-mosquitto.sh
	$(CARGO) test --test e2e

cluster-test:
	@echo "[make test] cluster tests against the local control plane"
	hack/with-cluster.sh bash -c '$(CARGO) test --features cluster-tests --test cluster -- --test-threads 4 && \
	  echo "[make test] control-plane restart tests (alone)" && \
	  $(CARGO) test --features cluster-tests --test disruptive -- --test-threads 1'

demo:
	hack/demo.sh

bench:
	hack/bench.sh

crds:
	$(CARGO) run --quiet --bin moat -- crds --out-dir crds
	$(CARGO) run --quiet --bin moat -- crds --out-dir charts/moat/crds

cluster-build:
	bash $(CLUSTER) build all

cluster-up: cluster-build
	bash $(CLUSTER) up

cluster-down:
	bash $(CLUSTER) down
