// Command table prints bench results (JSON lines on stdin, as bench/run.sh
// writes them) as an aligned table on stdout: one row per name and unit (the
// last line wins when a figure was recorded twice), ns/op shown as ms, the
// goal of the issue that asks for the figure marked met / NOT MET, and, for a
// peer run (…/confd/…, …/confd-fork/…), how many times render is ahead.
// B/op and allocs/op rows are left to the results file unless -all is given.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"text/tabwriter"
)

func main() {
	fs := flag.NewFlagSet("table", flag.ExitOnError)
	all := fs.Bool("all", false, "also show B/op and allocs/op")
	fs.Parse(os.Args[1:])
	if err := run(os.Stdin, os.Stdout, *all); err != nil {
		fmt.Fprintln(os.Stderr, "table:", err)
		os.Exit(1)
	}
}

// row is one figure.
type row struct {
	Name  string  `json:"name"`
	Unit  string  `json:"unit"`
	Value float64 `json:"value"`
	Note  string  `json:"note"`
}

// goal is a target an issue sets for one figure: the value must be below (or,
// with atLeast, at least) limit.
type goal struct {
	name    *regexp.Regexp
	unit    string
	limit   float64
	atLeast bool
	issue   string
}

// goals are the issues' targets, matched against names without the /etcd=…
// suffix.
func goals() []goal {
	g := func(re, unit string, limit float64, atLeast bool, issue string) goal {
		return goal{regexp.MustCompile(re), unit, limit, atLeast, issue}
	}
	return []goal{
		g(`^cmd/announce\.StartToVisible`, "p50-ms", 50, false, "#3"),
		g(`^cmd/announce\.IdleProcess`, "RSS-MB", 15, false, "#3"),
		g(`^cmd/announce\.IdleProcess`, "idle-CPU-%", 1, false, "#3 (~0)"),
		g(`^internal/announce\.Hold10k`, "alive-after-ttl", 10000, true, "#3"),
		g(`^integration/render\.PutToFile/keys=1k`, "p50-ms", 5, false, "#4"),
		g(`^integration/render\.RSS100k`, "rss-MB", 100, false, "#5"),
		g(`^integration/render\.CPUEtcdDown`, "cpu-%", 1, false, "#5 (~0)"),
		g(`^integration/render\.BurstReloads/wait=[0-9]`, "reloads/burst", 1, false, "#5 (one, with -wait)"),
		g(`^integration/render\.FloorOnetime/keys=10k`, "ratio-p50", 1.3, false, "#18"),
		g(`^placement/units=10000/machines=1000/`, "ms/place", 1000, false, "#6"),
		g(`^integration/scheduler\.MachineLossToRunning`, "loss-to-running-s", 3, false, "#6 (TTL 2s + 1 reconcile)"),
	}
}

// timingIsNoise matches benchmarks whose ns/op is the length of a scripted
// scenario (a window, a whole series of runs), not a figure: their own
// metrics say what they measure, so the ms/op row is left out.
var timingIsNoise = regexp.MustCompile(`\.(StartToVisible|IdleProcess|Hold10k|BurstReloads|PeerBurst|RSS100k|CPUEtcdDown|MachineLossToRunning|StoreMemory|FloorOnetime)\b`)

// notes explain figures whose name does not say enough.
var notes = []struct {
	name *regexp.Regexp
	unit string
	text string
}{
	{regexp.MustCompile(`\.EnginePass`), "ms/op", "steady-state pass (nothing to change)"},
	{regexp.MustCompile(`\.EnginePass`), "steady-pass-requests", "etcd requests per steady pass"},
	{regexp.MustCompile(`\.EnginePass`), "first-pass-requests", "etcd requests placing all 10k (batched txns)"},
	{regexp.MustCompile(`\.EnginePass`), "loss-pass-requests", "etcd requests after one machine is lost"},
	{regexp.MustCompile(`\.PeerOnetime/`), "ms/op", "a process per run"},
	{regexp.MustCompile(`\.PeerStart/`), "ms/op", "process start alone (--version)"},
	{regexp.MustCompile(`\.FloorOnetime/`), "ratio-p50", "render -onetime / floor (start, connect, read), runs in turn"},
	{regexp.MustCompile(`\.Onetime/`), "ms/op", "in-process"},
	{regexp.MustCompile(`^etcdload/`), "req/s", "gRPC messages, idle etcd subtracted"},
	{regexp.MustCompile(`^machine\.GoProcessStart`), "ms", "a Go program that exits at once"},
	{regexp.MustCompile(`^machine\.PageFault`), "us/page", "first touch of fresh memory"},
}

var suffix = regexp.MustCompile(`/etcd=[^/]+$`)

// peer matches a peer benchmark: prefix, implementation, rest.
var peer = regexp.MustCompile(`^(.*\.Peer[A-Za-z]+)/(confd|confd-fork|floor)(/.*)?$`)

func run(r io.Reader, w io.Writer, all bool) error {
	var rows []row
	index := map[[2]string]int{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var x row
		if json.Unmarshal(sc.Bytes(), &x) != nil || x.Name == "" {
			continue
		}
		if x.Unit == "ns/op" {
			x.Unit, x.Value = "ms/op", x.Value/1e6
		}
		k := [2]string{x.Name, x.Unit}
		if i, ok := index[k]; ok {
			rows[i] = x
			continue
		}
		index[k] = len(rows)
		rows = append(rows, x)
	}
	if err := sc.Err(); err != nil {
		return err
	}
	gs := goals()
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "BENCHMARK\tVALUE\tUNIT\tGOAL / NOTE")
	for _, x := range rows {
		if !all && (x.Unit == "B/op" || x.Unit == "allocs/op") {
			continue
		}
		if x.Unit == "ms/op" && timingIsNoise.MatchString(x.Name) {
			continue
		}
		note := x.Note
		for _, n := range notes {
			if n.unit == x.Unit && n.name.MatchString(x.Name) {
				note = strings.TrimSpace(n.text + " " + note)
			}
		}
		base := suffix.ReplaceAllString(x.Name, "")
		for _, g := range gs {
			if g.unit != x.Unit || !g.name.MatchString(base) {
				continue
			}
			met := x.Value <= g.limit
			op := "≤"
			if g.atLeast {
				met, op = x.Value >= g.limit, "≥"
			}
			verdict := "met"
			if !met {
				verdict = "NOT MET"
			}
			note = strings.TrimSpace(fmt.Sprintf("goal %s %s %s: %s %s", op, fmtv(g.limit), g.issue, verdict, note))
		}
		if m := peer.FindStringSubmatch(x.Name); m != nil {
			if i, ok := index[[2]string{m[1] + "/render" + m[3], x.Unit}]; ok && rows[i].Value > 0 && x.Unit != "B/op" && x.Unit != "allocs/op" {
				ratio := x.Value / rows[i].Value
				if m[2] == "floor" {
					note = strings.TrimPrefix(note+"; ", "; ") + floorNote(rows[i].Value/x.Value, m[3])
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", x.Name, fmtv(x.Value), x.Unit, note)
					continue
				}
				rel := fmt.Sprintf("render %s× ahead of %s", fmtv(ratio), m[2])
				if ratio < 1 {
					rel = fmt.Sprintf("render %s× behind %s", fmtv(1/ratio), m[2])
				}
				note = strings.TrimPrefix(note+"; ", "; ") + rel
				if strings.HasPrefix(m[3], "/keys=10k") && m[2] == "confd" && !strings.Contains(x.Name, "Burst") {
					verdict := "met"
					if ratio < 10 {
						verdict = "NOT MET"
					}
					note += " (goal ≥ 10× #4: " + verdict + ")"
				}
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", x.Name, fmtv(x.Value), x.Unit, note)
	}
	return tw.Flush()
}

// floorNote says how far render is above the floor (bench/floor: start,
// connect, read the keys), with issue 18's goal at 10k keys.
func floorNote(ratio float64, rest string) string {
	note := fmt.Sprintf("render at %s× the floor", fmtv(ratio))
	if strings.HasPrefix(rest, "/keys=10k") {
		verdict := "met"
		if ratio > 1.3 {
			verdict = "NOT MET"
		}
		note += " (goal ≤ 1.3× #18: " + verdict + ")"
	}
	return note
}

func fmtv(v float64) string {
	switch {
	case v >= 1000 || v == float64(int64(v)):
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
}
