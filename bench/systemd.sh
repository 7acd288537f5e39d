#!/usr/bin/env bash
# bench/systemd.sh — the systemd executor against a real user-mode systemd
# (started by the benchmarks themselves in private namespaces; needs root):
# first start of a new unit (no daemon-reload), start of a changed body +
# stop (daemon-reload + two jobs), Start of an already running unit (the
# agent's steady state), States over 100 running units.
# Prints JSON lines {"name","unit","value"}: medians over COUNT runs (default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
go test -run '^$' -bench '^Benchmark' -benchtime "${BENCHTIME:-2s}" -count "${COUNT:-3}" ./internal/systemd |
	awk '
	/^Benchmark/ {
		name = $1; sub(/-[0-9]+$/, "", name); sub(/^Benchmark/, "", name)
		for (i = 3; i < NF; i += 2) if ($(i+1) == "ns/op") ms[name] = ms[name] " " $i / 1e6
	}
	function median(s,   a, n, i, j, t) {
		n = split(s, a, " ")
		for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] > a[j]; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
		return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2
	}
	END {
		split("StartNew StartStop StartRunning States100", order, " ")
		for (k = 1; k <= 4; k++) if (order[k] in ms)
			printf "{\"name\":\"systemd/%s\",\"unit\":\"ms/op\",\"value\":%.3f}\n", order[k], median(ms[order[k]])
	}'
