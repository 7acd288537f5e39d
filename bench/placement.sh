#!/usr/bin/env bash
# bench/placement.sh — headline figures of pure placement (internal/schedule):
# one schedule.Place call over 10k units on 1k machines (plain, Conflicts,
# MachineMetadata, MachineOf, MachineID, Global), fresh, steady state, after
# a machine loss, and overloaded (10k mutually conflicting instances: 9k
# cannot be placed). Goal: < 1000 ms a call (fleet documents 1000 units on
# 100 machines as its limit). Prints JSON lines {"name","unit","value"}:
# medians over COUNT runs (default 5).
set -euo pipefail
cd "$(dirname "$0")/.."
go test -run '^$' -bench '^BenchmarkPlace(MachineLoss|Overloaded)?$' -benchmem -count "${COUNT:-5}" ./internal/schedule |
	awk '
	/^BenchmarkPlace/ {
		name = $1; sub(/-[0-9]+$/, "", name); sub(/^BenchmarkPlace/, "", name)
		if (name == "MachineLoss") name = "units=10000/machines=1000/machine-loss"
		if (name == "Overloaded") name = "units=10000/machines=1000/overloaded-9000-unplaced"
		else sub(/^\//, "", name)
		if (name !~ /units=10000/) next
		for (i = 3; i < NF; i += 2) {
			if ($(i+1) == "ns/op") ms[name] = ms[name] " " $i / 1e6
			if ($(i+1) == "allocs/op") al[name] = al[name] " " $i
		}
	}
	function median(s,   a, n, i, j, t) {
		n = split(s, a, " ")
		for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] > a[j]; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
		return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2
	}
	END {
		for (k in ms) {
			printf "{\"name\":\"placement/%s\",\"unit\":\"ms/place\",\"value\":%.3f}\n", k, median(ms[k])
			printf "{\"name\":\"placement/%s\",\"unit\":\"allocs/place\",\"value\":%d}\n", k, median(al[k])
		}
		printf "{\"name\":\"placement/goal\",\"unit\":\"ms/place\",\"value\":1000}\n"
	}'
