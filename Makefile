# flotilla — the README's two commands are `make demo` and `make test`.
# Every target that needs Debian packages runs `make deps` first.

GO      ?= go
BIN     := bin
CMDS    := announce render scheduler
# Debian packages the tests and the demo use: a real etcd (3.4, as CoreOS-era
# clusters run), haproxy and nginx for the load balancer, systemd and a user bus
# for the systemd executor, iproute2 for network namespaces.
DEBS    := etcd-server etcd-client haproxy nginx-light systemd dbus-user-session iproute2 procps util-linux curl ca-certificates chromium
TESTFLAGS ?=
export GOFLAGS ?= -mod=mod

.PHONY: all build test unit store-binary vet fmt-check deps demo bench faults scale clean

all: build

build:
	@mkdir -p $(BIN)
	$(GO) build -trimpath -ldflags "-s -w" -o $(BIN)/ $(addprefix ./cmd/,$(CMDS))

deps:
	@./scripts/deps.sh $(DEBS)

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

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
	FLOTILLA_SCALE=$(SCALE) FLOTILLA_SCALE_JSON=bench/results/scale.jsonl $(GO) test -count=1 -timeout 40m -v -run TestScale ./integration/scale/ >bench/results/scale.log 2>&1; \
	rc=$$?; grep -E '^(--- |ok|FAIL)|FIGURE|scale:' bench/results/scale.log; echo "full log: bench/results/scale.log"; exit $$rc

# The long fault suite: a 30 s etcd outage, 50 kill iterations, a 30 s partition.
# (`make test` runs the same suite in its short form.)
faults: deps build
	@mkdir -p $(BIN)
	FLOTILLA_FAULTS_LONG=1 $(GO) test -race -count=1 -timeout 30m -v ./integration/faults/ >$(BIN)/faults.log 2>&1; \
	rc=$$?; grep -E '^(--- |ok|FAIL)|FIGURE' $(BIN)/faults.log; echo "full log: $(BIN)/faults.log"; exit $$rc
