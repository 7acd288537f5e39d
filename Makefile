# flotilla — the README's two commands are `make demo` and `make test`.
# Every target that needs Debian packages runs `make deps` first.

GO      ?= go
BIN     := bin
CMDS    := announce render scheduler
# Debian packages the tests and the demo use: a real etcd (3.4, as CoreOS-era
# clusters run), haproxy and nginx for the load balancer, systemd and a user bus
# for the systemd executor, iproute2 for network namespaces.
DEBS    := etcd-server etcd-client haproxy nginx-light systemd dbus-user-session iproute2 procps util-linux curl ca-certificates chromium
# Packaging: lintian checks the .deb files, debootstrap builds the clean Debian
# the package test installs them into (make package-test).
DEBS    += lintian debootstrap
TESTFLAGS ?=
export GOFLAGS ?= -mod=mod
# Release version stamped into --version (internal/version); unset: "devel".
VERSION ?=
# The commit too, for checkouts the go command does not stamp (git worktrees).
VERSION_PKG := github.com/flotilla/flotilla/internal/version
GIT_COMMIT  := $(shell git rev-parse HEAD 2>/dev/null)
GIT_DIRTY   := $(shell git status --porcelain 2>/dev/null | head -1)
LDFLAGS := -s -w $(if $(VERSION),-X $(VERSION_PKG).version=$(VERSION)) \
	$(if $(GIT_COMMIT),-X $(VERSION_PKG).commit=$(GIT_COMMIT)) $(if $(GIT_DIRTY),-X $(VERSION_PKG).modified=true)
DIST    ?= $(BIN)/dist

.PHONY: all build test unit store-binary vet fmt-check deps demo bench faults scale scale-serve clean dist image package-test

all: build

# Static binaries (no cgo, no glibc), as docs/deploy.md says.
build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/ $(addprefix ./cmd/,$(CMDS))

deps:
	@./scripts/deps.sh $(DEBS)

# gofmt, goimports' grouping (the project's imports after the others),
# staticcheck (staticcheck.conf), at pinned versions from the module proxy, and
# no function over 120 lines outside the tests (scripts/funclen).
GOIMPORTS   := golang.org/x/tools/cmd/goimports@v0.52.0
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
fmt-check:
	@files=$$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'); \
	out=$$(gofmt -l $$files); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi; \
	out=$$($(GO) run $(GOIMPORTS) -l -local github.com/flotilla/flotilla $$files); \
	if [ -n "$$out" ]; then echo "goimports -local github.com/flotilla/flotilla needed on:"; echo "$$out"; exit 1; fi
	$(GO) run $(STATICCHECK) ./...
	$(GO) run ./scripts/funclen

vet:
	$(GO) vet ./...

# The whole suite with the race detector: unit tests, real etcd (embedded),
# integration with real haproxy/nginx/systemd; then the store suite again against
# Debian's etcd server binary.
test: deps fmt-check vet build
	$(GO) test -race -count=1 -timeout 20m $(TESTFLAGS) ./...
	$(MAKE) store-binary

store-binary:
	FLOTILLA_TEST_ETCD_BIN=$$(command -v etcd) $(GO) test -count=1 -timeout 5m $(TESTFLAGS) ./internal/store/...

demo: deps build
	@./scripts/demo.sh

bench: deps build
	@./bench/run.sh

clean:
	rm -rf $(BIN) bench/results

# The scheduler at size: hollow machines (real agents, in-memory executor)
# and two engines on a 3-member etcd; every figure beside its goal (met /
# NOT MET), JSON lines in bench/results/scale.jsonl. SCALE=MACHINESxUNITS.
# (`make test` runs 100x1000, asserting the invariants only.)
SCALE ?= 1000x10000
scale: deps
	@mkdir -p bench/results
	FLOTILLA_SCALE=$(SCALE) FLOTILLA_SCALE_JSON=$(CURDIR)/bench/results/scale.jsonl $(GO) test -count=1 -timeout 40m -v -run 'TestScale$$' ./integration/scale/ >bench/results/scale.log 2>&1; \
	rc=$$?; grep -E '^(--- |ok|FAIL)|FIGURE|scale:' bench/results/scale.log; echo "full log: bench/results/scale.log"; exit $$rc

# The same scenarios at SCALE_SERVE (default 50x500) twice: hollow machines,
# then real `scheduler serve` processes (process executor) started by
# `scheduler start`, to hold the hollow figures against real ones.
SCALE_SERVE ?= 50x500
scale-serve: deps
	@mkdir -p bench/results
	FLOTILLA_SCALE=$(SCALE_SERVE) FLOTILLA_SCALE_SERVE=1 FLOTILLA_SCALE_JSON=$(CURDIR)/bench/results/scale.jsonl $(GO) test -count=1 -timeout 40m -v -run 'TestScale$$|TestScaleServe' ./integration/scale/ >bench/results/scale-serve.log 2>&1; \
	rc=$$?; grep -E '^(--- |ok|FAIL)|FIGURE|scale:' bench/results/scale-serve.log; echo "full log: bench/results/scale-serve.log"; exit $$rc

# The long fault suite: a 30 s etcd outage, 50 kill iterations, a 30 s partition.
# (`make test` runs the same suite in its short form.)
faults: deps build
	@mkdir -p $(BIN)
	FLOTILLA_FAULTS_LONG=1 $(GO) test -race -count=1 -timeout 30m -v ./integration/faults/ >$(BIN)/faults.log 2>&1; \
	rc=$$?; grep -E '^(--- |ok|FAIL)|FIGURE' $(BIN)/faults.log; echo "full log: $(BIN)/faults.log"; exit $$rc

# A release in $(DIST): static linux/amd64 and linux/arm64 binaries, tarballs,
# the Debian packages (flotilla-scheduler, flotilla-render, flotilla-announce)
# and SHA256SUMS.
dist: deps
	@test -n "$(VERSION)" || { echo "make dist: set VERSION=x.y.z" >&2; exit 2; }
	./scripts/dist.sh $(VERSION) $(DIST)

# The container image flotilla:$(VERSION) (FROM scratch, non-root) from the
# release's amd64 binaries; no registry needed.
image: dist
	./scripts/image.sh $(VERSION) $(DIST)/flotilla_$(VERSION)_linux_$$($(GO) env GOARCH)

# The packages installed, upgraded and purged in a clean Debian (debootstrap,
# cached in $(BIN)/package-test; docker import); `make test` runs the light part.
package-test: deps build
	FLOTILLA_PACKAGE_TEST=1 $(GO) test -count=1 -timeout 30m -v ./integration/packaging/
