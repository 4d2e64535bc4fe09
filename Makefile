# Gatehouse: `make demo` tells the story, `make test` runs every test,
# `make bench` measures the proxy against PostgreSQL and pgbouncer.
# They install or build what they need and cache it outside the repo
# (GATEHOUSE_CACHE, default ~/.cache/gatehouse).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

export GATEHOUSE_CACHE ?= $(HOME)/.cache/gatehouse
# Builds are cached between runs and clones.
export CARGO_TARGET_DIR ?= $(GATEHOUSE_CACHE)/target
export CARGO_TERM_COLOR ?= never
# Clones build once; incremental data would only fill the shared target folder.
export CARGO_INCREMENTAL ?= 0

CARGO ?= cargo
TOOLS_BIN = $(shell e2e/tools/build.sh)

.PHONY: help test demo bench deps tools crds fmt lint unit e2e

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

test: deps tools fmt lint unit e2e ## Every check: format, clippy, unit tests, end-to-end suite

demo: deps tools ## The whole story live: control plane, PostgreSQL, S3, operator, an agent held for approval, the replay; Ctrl-C stops
	$(CARGO) build --locked -q -p gatehouse-proxy -p kubectl-gatehouse --bins
	GATEHOUSE_TOOLS_BIN=$(TOOLS_BIN) $(CARGO) run --locked -q -p gatehouse-e2e --bin demo

bench: deps tools ## pgbench -S (policy; + recording; + masking + recording), masking, and the operator (1,000 Connections, Policy edit and approval latency) against direct and pgbouncer; ~10 min once built
	$(CARGO) build --locked -q --release -p gatehouse-proxy -p gatehouse-operator --bins
	GATEHOUSE_TOOLS_BIN=$(TOOLS_BIN) $(CARGO) run --locked -q --release -p gatehouse-e2e --bin bench

deps: ## Install missing system packages (PostgreSQL, setpriv), rustup components and the e2e client drivers (cached)
	@e2e/tools/deps.sh

tools: deps ## Build kube-apiserver, etcd, kubectl, versitygw and helm at their pinned versions (cached)
	@e2e/tools/build.sh >/dev/null

crds: ## Regenerate the CRD YAML from crds/src
	$(CARGO) run --locked -q -p gatehouse-crds --bin crdgen

fmt:
	$(CARGO) fmt --all --check

lint:
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --locked --workspace --exclude gatehouse-e2e
	$(CARGO) test --locked -p gatehouse-e2e --lib

e2e: tools
	$(CARGO) build --locked -q -p gatehouse-proxy -p kubectl-gatehouse -p gatehouse-operator --bins
	GATEHOUSE_TOOLS_BIN=$(TOOLS_BIN) $(CARGO) test --locked -p gatehouse-e2e --test e2e
