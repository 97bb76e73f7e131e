# Membrane. `make` alone lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash
GO ?= go
BIN := bin
PKGS := ./...

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*?## "} /^[a-zA-Z0-9_-]+:.*?## / {printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build bin/membrane and bin/membrane-cni (no clang needed: eBPF objects are committed)
	$(GO) build -o $(BIN)/membrane ./cmd/membrane
	@if [ -d cmd/membrane-cni ]; then $(GO) build -o $(BIN)/membrane-cni ./cmd/membrane-cni; fi

.PHONY: generate
generate: ## Rebuild the eBPF objects and their Go bindings with clang (bpf2go)
	$(GO) generate ./pkg/datapath/...

.PHONY: check-generate
check-generate: ## Fail if the committed eBPF objects are not what `make generate` produces
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	cp pkg/datapath/bpf_bpfel.go pkg/datapath/bpf_bpfel.o $$tmp/; \
	$(GO) generate ./pkg/datapath/... ; \
	if ! cmp -s $$tmp/bpf_bpfel.go pkg/datapath/bpf_bpfel.go || ! cmp -s $$tmp/bpf_bpfel.o pkg/datapath/bpf_bpfel.o; then \
		cp $$tmp/bpf_bpfel.go $$tmp/bpf_bpfel.o pkg/datapath/; \
		echo "eBPF objects are stale: run 'make generate' and commit the result"; exit 1; \
	fi; echo "eBPF objects are current"

.PHONY: lint
lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '_bpfel.go$$')); if [ -n "$$out" ]; then echo "gofmt:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

# Debian packages the tests and benchmarks use; make deps installs the missing ones.
DEB_PKGS := clang llvm libbpf-dev linux-libc-dev bpftool iproute2 iptables nftables iperf3 wrk \
	nginx-light busybox-static docker.io podman containernetworking-plugins runc catatonit \
	etcd-server etcd-client curl
.PHONY: deps
deps: ## Install what a fresh machine lacks (Debian packages, cnitool); needs root
	@missing=$$(for p in $(DEB_PKGS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@command -v cnitool >/dev/null || [ -x "$$($(GO) env GOPATH)/bin/cnitool" ] || $(GO) install github.com/containernetworking/cni/cnitool@v1.3.1

.PHONY: test
test: deps ## The whole suite, as CI runs it (needs root): lint, generated objects, unit, race, privileged, conformance, benchmarks once
	$(MAKE) lint
	$(MAKE) check-generate
	$(MAKE) test-race
	$(MAKE) test-all
	$(MAKE) conformance
	$(MAKE) bench-smoke

.PHONY: test-race
test-race: ## Unprivileged tests with the race detector (privileged ones run in test-all)
	$(GO) test -race -count=1 -skip '^TestPrivileged' ./pkg/labels/... ./pkg/identity/... ./pkg/policy/... ./pkg/ipcache/... ./pkg/ipam/... \
		./pkg/monitor/... ./pkg/api/... ./pkg/docker/... ./pkg/cni/... ./pkg/conformance/... ./pkg/proxy/...

.PHONY: test-all
test-all: ## Every test, privileged ones included (root; with CI=true a missing privilege fails)
	$(GO) test -count=1 -timeout 40m -p 1 $(PKGS)

.PHONY: conformance
conformance: build ## Run the NetworkPolicy/CiliumNetworkPolicy conformance cases with real packets
	@if $(BIN)/membrane conformance --help >/dev/null 2>&1; then \
		$(BIN)/membrane conformance run $${CONFORMANCE_DIR:-test/conformance/cases}; \
	else echo "conformance runner not built yet"; fi

.PHONY: bench-smoke
bench-smoke: ## Run every Go benchmark once so they cannot rot
	$(GO) test -run '^$$' -bench . -benchtime 1x -benchmem $(PKGS)

.PHONY: bench
bench: build ## Side-by-side benchmarks (eBPF vs iptables/nftables, proxy vs nginx); writes bench/results/latest.md
	@if [ -x bench/run.sh ]; then bench/run.sh; else echo "bench/run.sh not written yet"; exit 1; fi

.PHONY: demo
demo: ## Run `membrane demo` (root)
	$(GO) run ./cmd/membrane demo

.PHONY: clean
clean: ## Remove build output
	rm -rf $(BIN)
