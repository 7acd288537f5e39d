#!/usr/bin/env bash
# bench/render.sh — render against confd and the fork, on the same workload.
#
# render's own figures (onetime at 1k/10k/100k keys, watch put→file p50/p99,
# reloads per 200-put burst with and without -wait, RSS at 100k keys, CPU while
# etcd is down) are Go benchmarks in integration/render, run by bench/run.sh.
# With CONFD=/path/to/confd and/or CONFD_FORK=/path/to/abtreece-confd set, the
# Peer* benchmarks there run render and the peers as processes over the same
# etcd and keys; this script prints their figures and the ratios
# (peer / render: above 1 means render is faster or reloads less; for the
# floor, bench/floor, render / floor: how far above it render is) as JSON lines.
# It never builds a peer: bring your own binary.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${CONFD:-}" ] && [ -z "${CONFD_FORK:-}" ]; then
	echo "bench/render.sh: CONFD / CONFD_FORK not set: no peer comparison (render's figures come from the Go benchmarks)" >&2
	exit 0
fi
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
# bench/run.sh already ran the Peer benchmarks (they run whenever CONFD is
# set); reuse its results when present, else run them here.
if [ -s bench/results/results.jsonl ] && grep -q '"integration/render.Peer' bench/results/results.jsonl; then
	grep '"integration/render.Peer' bench/results/results.jsonl | sed 's/,"machine":.*}$/}/' >"$tmp"
else
	go test -run '^$' -bench 'Peer' -benchtime "${BENCHTIME:-10x}" -count "${COUNT:-1}" ./integration/render 2>/dev/null |
		go run ./bench/gobench integration/render >"$tmp"
	cat "$tmp"
fi
# Ratios: for every peer figure, the same figure of render.
awk -F'"' '
	{ name=$4; sub(/^[^.]*\./, "", name); unit=$8; if (unit !~ /^(ns\/op|p50-ms|p99-ms|reloads\/burst)$/) next; match($0, /"value":[0-9.e+-]+/); v=substr($0, RSTART+8, RLENGTH-8)
	  split(name, p, "/"); impl=p[2]; key=p[1] "|" (p[3] != "" ? p[3] : "") "|" unit
	  val[impl "|" key]=v; impls[impl]=1; keys[key]=1 }
	END {
		for (k in keys) for (b in impls) {
			if (b != "render" && b != "render-wait") continue
			r = val[b "|" k]; if (r == "" || r == 0) continue
			for (i in impls) {
				if (i == "render" || i == "render-wait") continue
				x = val[i "|" k]; if (x == "") continue
				split(k, f, "|")
				if (i == "floor") { # how far above the floor render is
					if (x > 0) printf "{\"name\":\"%s/%s-vs-floor%s\",\"unit\":\"x (%s)\",\"value\":%.2f}\n", f[1], b, (f[2] != "" ? "/" f[2] : ""), f[3], r / x
					continue
				}
				printf "{\"name\":\"%s/%s-vs-%s%s\",\"unit\":\"x (%s)\",\"value\":%.2f}\n", f[1], i, b, (f[2] != "" ? "/" f[2] : ""), f[3], x / r
			}
		}
	}' "$tmp"
