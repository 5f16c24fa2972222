# mqtt-dsp-operator — build, test and generate. `make help` lists the targets.
CARGO ?= cargo
BIN   := target/debug/mqtt-dsp-operator

.PHONY: help build test fmt fmt-check lint unit systems crds crds-check chart-check run demo e2e bench chaos deploy

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## Build the operator
	$(CARGO) build --workspace --locked

test: fmt-check lint unit ## Everything CI runs: format check, clippy -D warnings, all tests, the chart
	$(MAKE) chart-check

fmt: ## Format the code
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

lint: ## clippy on every target, warnings are errors
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

TEST_LOG := $(CURDIR)/target/test-logs/tracing.log

systems: ## Install the real systems the tests run against (brokers, etcd, kube-apiserver, helm, Keycloak, EDC; cached: fast when done)
	bash scripts/install-deps.sh
	bash scripts/install-systems.sh

unit: systems ## All tests of the workspace, then a check that no secret reached a log line
	rm -rf target/test-logs && mkdir -p target/test-logs
	MQTT_DSP_TEST_LOG=$(TEST_LOG) $(CARGO) test --workspace --locked --no-fail-fast
	e2e/check-log-secrets.sh $(TEST_LOG)

crds: ## Regenerate crds/*.yaml and docs/crd-reference.md from the Rust types
	$(CARGO) run -q -p mqtt-dsp-operator -- crdgen --out crds
	$(CARGO) run -q -p mqtt-dsp-operator -- crdgen --reference > docs/crd-reference.md

crds-check: crds ## Fail when the committed CRDs differ from the types
	git diff --exit-code -- crds docs/crd-reference.md

chart-check: ## Lint, render and validate the Helm chart (charts/check.sh; a venv in target/)
	bash charts/check.sh

run: build ## Run the operator against the current kube-context with examples/operator-config.yaml
	$(BIN) run --config examples/operator-config.yaml --listen 127.0.0.1:8080

BENCH_OUT := target/bench/transfers.md

bench: systems ## Benchmarks (release build; a few minutes): MqttTransfer provisioning (operator as its own process) in target/bench/transfers.md, the refresh endpoint in target/bench/refresh.md, data-plane start latency (100 concurrent starts) in target/bench/dataplane.md
	$(CARGO) build --release --locked -p mqtt-dsp-operator -p e2e --bin mqtt-dsp-operator --bin bench-transfers --bin bench-refresh
	target/release/bench-transfers --operator target/release/mqtt-dsp-operator --out $(BENCH_OUT)
	target/release/bench-refresh --out target/bench/refresh.md
	rm -f target/bench/dataplane.md
	$(CARGO) test --locked -p e2e --test dataplane -- --ignored --nocapture bench_100_concurrent

CHAOS_OUT  := target/chaos/results.md
CHAOS_ARGS ?=

chaos: systems ## Fault survival (release build; a few minutes): 500 transfers with churn under a seeded fault schedule (operator SIGKILLs, lost answers, broker restart, watch resets), then orphans, duplicates, working Secrets and time to converge in target/chaos/results.md (CHAOS_ARGS="--seed N --transfers N --duration S"; docs/reliability.md)
	$(CARGO) build --release --locked -p mqtt-dsp-operator -p e2e --bin mqtt-dsp-operator --bin chaos
	target/release/chaos --operator target/release/mqtt-dsp-operator --out $(CHAOS_OUT) $(CHAOS_ARGS)

demo: systems ## The operator end to end in one command: real Kubernetes, Keycloak, EDC and brokers, operator as its own process, examples/ applied with kubectl, a live message through the issued DataAddress (DEMO_ARGS=--doubles for the Keycloak/EDC doubles; --help)
	@# --test demo: features resolve as in `make test` (dev-dependencies included), so the two share artifacts.
	$(CARGO) build --locked -p mqtt-dsp-operator -p e2e --bin mqtt-dsp-operator --bin demo --test demo
	target/debug/demo --operator $(BIN) $(DEMO_ARGS)

NAMESPACE ?= mqtt-dsp-operator
IMAGE     ?=
VALUES    ?=

deploy: ## helm upgrade --install of the chart into the current kube-context (NAMESPACE, IMAGE, VALUES; DRY_RUN=1 prints the manifests); docs/operations.md
	@NAMESPACE="$(NAMESPACE)" IMAGE="$(IMAGE)" VALUES="$(VALUES)" bash deploy/deploy.sh $(if $(DRY_RUN),--dry-run)

E2E_LOG := $(CURDIR)/target/e2e-logs/tracing.log

e2e: systems ## The user stories as scenarios (docs/e2e.md): against the KUBECONFIG cluster when set, else the dev stack
	rm -rf target/e2e-logs && mkdir -p target/e2e-logs
	MQTT_DSP_TEST_LOG=$(E2E_LOG) $(CARGO) test -p e2e --locked --test scenarios
	MQTT_DSP_TEST_LOG=$(E2E_LOG) $(CARGO) test -p e2e --locked --test dataplane
	MQTT_DSP_TEST_LOG=$(E2E_LOG) $(CARGO) test -p mqtt-dsp-operator --locked --test leader_election
	e2e/check-log-secrets.sh $(E2E_LOG)
