#!/usr/bin/env bash
# bench/run.sh — `make bench`: every figure the issues ask for, one results file.
#
# Runs the plan below: Go Benchmark* functions (through bench/gobench: the
# median over COUNT runs of each metric), then the bench/<area>.sh scripts that
# print JSON lines {"name","unit","value"} themselves. Every line goes to
# bench/results/results.jsonl with the machine description; a table (with the
# goals of the issues marked met / NOT MET and peer ratios) is printed on stdout,
# progress and logs on stderr. Each plan step runs once (a package covered by a
# script is not benchmarked again) and under a timeout (STEP_TIMEOUT).
#
# Modes:  default — every figure, medians of 3 (≈ 10 min on 2 shared cores)
#         QUICK=1 — every figure once, shorter windows (a smoke run, ≈ 4 min)
#         LONG=1  — medians of 5, 10k held registrations, longer windows
# Environment: COUNT (override repetitions), STEP_TIMEOUT (seconds, default 900),
# ONLY=regex (run only the plan steps whose name matches, adding to the last
# results instead of starting a new file), CONFD=/path/to/confd
# and CONFD_FORK=/path/to/abtreece-confd (peers run on the same workload in the
# same run: ratios in the table), FLOTILLA_BENCH_ETCD_BIN (default: etcd on PATH,
# used for the "etcd=binary" runs).
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/results
mkdir -p "$out"
results="$out/results.jsonl"
# A partial run (ONLY=…) adds to the last results: the table shows the newest
# line of each figure.
[ -n "${ONLY:-}" ] || : >"$results"

mode=default count=3
[ -n "${QUICK:-}" ] && mode=quick count=1
[ -n "${LONG:-}" ] && mode=long count=5
count="${COUNT:-$count}"
step_timeout="${STEP_TIMEOUT:-900}"
etcd_bin="${FLOTILLA_BENCH_ETCD_BIN:-$(command -v etcd || true)}"
export QUICK LONG COUNT="$count"
export CONFD="${CONFD:-}" CONFD_FORK="${CONFD_FORK:-}"

json_str() { sed 's/\\/\\\\/g;s/"/\\"/g' <<<"$1" | tr -d '\n'; }
machine=$(printf '{"cpus":%s,"cpu":"%s","mem_kb":%s,"kernel":"%s","go":"%s","etcd_embedded":"%s","etcd_binary":"%s","load1":"%s","mode":"%s","count":%s,"commit":"%s","date":"%s"}' \
	"$(nproc)" \
	"$(json_str "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')")" \
	"$(awk '/MemTotal/{print $2}' /proc/meminfo)" \
	"$(uname -r)" \
	"$(go env GOVERSION)" \
	"$(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3 2>/dev/null)" \
	"$([ -n "$etcd_bin" ] && "$etcd_bin" --version 2>/dev/null | awk '/etcd Version/{print $3}')" \
	"$(cut -d' ' -f1 /proc/loadavg)" \
	"$mode" "$count" \
	"$(git rev-parse --short HEAD 2>/dev/null)" \
	"$(date -u +%FT%TZ)")
echo "bench: machine $machine" >&2

record() { # stdin: JSON lines from a producer; adds the machine description
	while IFS= read -r line; do
		case "$line" in
		\{*\}) printf '%s\n' "${line%\}},\"machine\":$machine}" >>"$results" ;;
		*) printf '%s\n' "$line" >&2 ;;
		esac
	done
}

failed=()
# step NAME 'COMMAND': one plan step (a bash command line), skipped unless NAME
# matches ONLY, bounded by the step timeout; its JSON lines are recorded, a
# failure is reported and the run goes on (listed at the end).
step() {
	local name=$1 cmd=$2
	if [ -n "${ONLY:-}" ] && ! [[ $name =~ $ONLY ]]; then
		return 0
	fi
	echo "bench: [$name] $cmd" >&2
	local t0=$SECONDS
	if ! timeout --kill-after=30 "$step_timeout" bash -c "set -o pipefail; $cmd" | record; then
		echo "bench: [$name] FAILED (or timed out after ${step_timeout}s)" >&2
		failed+=("$name")
	fi
	echo "bench: [$name] $((SECONDS - t0))s" >&2
}

# gobench PKG REGEX BENCHTIME COUNT [SUFFIX]: go test -bench over one package,
# medians as JSON lines; the raw output is kept in gotest.log.
go build -o "$out/gobench" ./bench/gobench
go build -o "$out/table" ./bench/table
[ -n "${ONLY:-}" ] || : >"$out/gotest.log"
gobench() {
	local pkg=$1 re=$2 bt=$3 n=$4 suffix=${5:-}
	go test -run '^$' -bench "$re" -benchmem -benchtime "$bt" -count "$n" \
		-timeout "$((step_timeout - 10))s" "./$pkg" 2>&1 |
		tee -a "$out/gotest.log" | "$out/gobench" -suffix "$suffix" "$pkg"
}
export -f gobench
export out step_timeout

case $mode in
quick)
	micro=100ms hold_n=1000 heavy=1
	export RUNS="${RUNS:-1}" # bench/seed.sh: one demo
	;;
long) micro=1s hold_n=10000 heavy=$count ;;
*) micro=300ms hold_n=10000 heavy=$count ;;
esac

# --- the machine: a bare Go process start and a minor page fault, the floor
# under every process-level figure below
step machine 'go build -o "$out/machine" ./bench/machine && "$out/machine"'

# --- announce (issue 3): start→visible p50/p99, RSS, idle CPU, held registrations
step announce-process "gobench cmd/announce 'Benchmark(StartToVisible|IdleProcess)\$' 1x $heavy"
step announce-hold "ANNOUNCE_BENCH_N=$hold_n gobench internal/announce 'BenchmarkHold10k\$' 1x 1"

# --- render (issues 4, 5): onetime 1k/10k/100k, put→file, bursts, RSS, CPU etcd down
step render-embedded "gobench integration/render 'Benchmark(Onetime|PutToFile)\$' 1s $heavy"
if [ -n "$etcd_bin" ]; then
	step render-binary "FLOTILLA_TEST_ETCD_BIN=$etcd_bin gobench integration/render 'Benchmark(Onetime|PutToFile)\$' 1s $heavy etcd=binary"
fi
step render-burst "gobench integration/render 'BenchmarkBurstReloads\$' 3x $heavy"
step render-process "gobench integration/render 'Benchmark(RSS100k|CPUEtcdDown)\$' 1x $heavy"
# onetime beside the floor (bench/floor: start, connect, read the prefix),
# and beside confd and the fork when given
if [ -n "$CONFD$CONFD_FORK" ]; then
	step render-peers "gobench integration/render 'BenchmarkPeer' 1s $heavy"
else
	step render-floor "gobench integration/render 'BenchmarkPeerOnetime\$' 1s $heavy"
fi
step render-floor-turns "gobench integration/render 'BenchmarkFloorOnetime\$' 40x $heavy"
if [ -n "$etcd_bin" ]; then
	step render-floor-turns-binary "FLOTILLA_TEST_ETCD_BIN=$etcd_bin gobench integration/render 'BenchmarkFloorOnetime\$' 40x $heavy etcd=binary"
	step render-floor-binary "FLOTILLA_TEST_ETCD_BIN=$etcd_bin gobench integration/render 'BenchmarkPeerOnetime\$' 1s $heavy etcd=binary"
fi
step template "gobench template . $micro $count"

# --- scheduler (issue 6): placement, engine pass, machine loss
step placement "bash bench/placement.sh"
step unit-parse "gobench internal/unit . $micro $count"
step engine-pass "gobench internal/engine 'BenchmarkEnginePass10kUnits1kMachines\$' 3x $heavy"
step machine-loss "gobench integration/scheduler 'BenchmarkMachineLossToRunning\$' 1x $heavy"
step embedetcd-start "gobench internal/embedetcd . 1x $count"

# --- etcd load (issue 9) and the other bench/<area>.sh scripts
step etcdload "bash bench/etcdload.sh"
for s in bench/*.sh; do
	case $s in bench/run.sh | bench/placement.sh | bench/etcdload.sh) continue ;; esac
	step "$(basename "$s" .sh)" "bash $s"
done

"$out/table" <"$results"
if [ ${#failed[@]} -gt 0 ]; then
	echo "bench: steps that failed: ${failed[*]} (go test output in $out/gotest.log)" >&2
fi
echo "bench: results in $results ($mode mode, medians of $count)" >&2
