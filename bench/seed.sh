#!/usr/bin/env bash
# bench/seed.sh — figures of the seed's scenario (scripts/demo.sh, run RUNS
# times, default 3): seconds from a worker's kill -9 to its instance active
# elsewhere, to the new haproxy.cfg, to both instances answering through
# haproxy; errors and requests through haproxy during the reschedule; the
# demo's total time. Prints the median of each as JSON lines
# {"name","unit","value"} on stdout; the demo's own output goes to stderr.
# Needs root and `make build` (as make demo).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-3}
all=$(mktemp)
trap 'rm -f "$all"' EXIT
for i in $(seq "$runs"); do
	echo "bench/seed: demo run $i/$runs" >&2
	if ! ./scripts/demo.sh >&2; then
		echo "bench/seed: demo run $i failed" >&2
		exit 1
	fi
	cat .demo/figures.jsonl >>"$all"
done
# Median per name (lower median for an even count).
for name in $(sed 's/.*"name":"\([^"]*\)".*/\1/' "$all" | sort -u); do
	grep "\"name\":\"$name\"" "$all" | sed 's/.*"unit":"\([^"]*\)","value":\([0-9.]*\).*/\2 \1/' | sort -n |
		awk -v n="$name" '{v[NR]=$1; u=$2} END {printf "{\"name\":\"%s\",\"unit\":\"%s\",\"value\":%s}\n", n, u, v[int((NR+1)/2)]}'
done
