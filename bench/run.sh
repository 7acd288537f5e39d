#!/usr/bin/env bash
# bench/run.sh — `make bench`: every benchmark of the project, one results file.
#
# Runs the Go Benchmark* functions of every package that has them and every
# bench/<area>.sh script. Scripts print JSON lines {"name","unit","value"} on
# stdout (anything else on stderr). Results go to bench/results/results.jsonl
# (one JSON object per line, with the machine description), and a table is
# printed on stdout.
#
# Environment: BENCHTIME (go test -benchtime, default 1x for the heavy ones is
# set by each package), COUNT (repetitions, default 5: medians are reported),
# CONFD=/path/to/confd to compare render with confd, FLEET=… likewise.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/results
mkdir -p "$out"
results="$out/results.jsonl"
: >"$results"
count="${COUNT:-5}"
machine=$(printf '{"cpus":%s,"cpu":"%s","mem_kb":%s,"kernel":"%s","go":"%s","etcd_embedded":"%s","etcd_binary":"%s"}' \
	"$(nproc)" \
	"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//;s/"/ /g')" \
	"$(grep MemTotal /proc/meminfo | awk '{print $2}')" \
	"$(uname -r)" \
	"$(go env GOVERSION)" \
	"$(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)" \
	"$(etcd --version 2>/dev/null | head -1 | awk '{print $3}')")
echo "machine: $machine" >&2

record() { # stdin: JSON lines from a producer; adds machine info
	while IFS= read -r line; do
		case "$line" in
		\{*) printf '%s\n' "${line%\}},\"machine\":$machine}" >>"$results" ;;
		esac
	done
}

# Go benchmarks: medians over $count runs, converted to JSON lines.
pkgs=$(grep -rl --include='*_test.go' '^func Benchmark' . | xargs -r -n1 dirname | sort -u | sed 's#^\./##')
for p in $pkgs; do
	echo "bench: go test -bench ./$p (count $count)" >&2
	go test -run '^$' -bench . -benchmem -count "$count" "./$p" 2>&2 |
		go run ./bench/gobench "$p" | record
done

# Scripted benchmarks (processes, real etcd, peers).
for s in bench/*.sh; do
	echo "bench: $s" >&2
	bash "$s" | record || echo "bench: $s failed" >&2
done

go run ./bench/table <"$results"
echo "results: $results" >&2
