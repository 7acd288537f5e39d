package render_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
)

// peerBin is one implementation run as a process over the same workload.
type peerBin struct {
	name string
	bin  string
	fork bool // the fork's command form
	// floor: bench/floor, which only reads the keys (onetime only)
	floor bool
}

func (p peerBin) args(ep, dir string, extra ...string) []string {
	if p.floor {
		return []string{"-endpoints", ep, "-prefix", "/bench"}
	}
	if p.fork {
		a := []string{"etcd", "--node", ep, "--confdir", dir, "--log-level", "error"}
		for _, e := range extra {
			a = append(a, "-"+e) // --onetime, --watch …
		}
		return a
	}
	return append([]string{"-backend", "etcdv3", "-node", ep, "-confdir", dir, "-log-level", "error"}, extra...)
}

// peers returns render and the peers given by CONFD / CONFD_FORK; it skips
// when no peer is given (render's own figures come from the other benchmarks).
func peers(b *testing.B) []peerBin {
	if os.Getenv("CONFD") == "" && os.Getenv("CONFD_FORK") == "" {
		b.Skip("CONFD / CONFD_FORK not set: no peer to compare with")
	}
	ps := []peerBin{{name: "render", bin: buildRender(b)}}
	if p := os.Getenv("CONFD"); p != "" {
		ps = append(ps, peerBin{name: "confd", bin: p})
	}
	if p := os.Getenv("CONFD_FORK"); p != "" {
		ps = append(ps, peerBin{name: "confd-fork", bin: p, fork: true})
	}
	return ps
}

// onetimePeers is render, the floor (bench/floor: start, connect, read the
// prefix, exit) and the peers given, if any: the floor runs without peers.
func onetimePeers(b *testing.B) []peerBin {
	ps := []peerBin{{name: "render", bin: buildRender(b)}, {name: "floor", bin: buildFloor(b), floor: true}}
	if p := os.Getenv("CONFD"); p != "" {
		ps = append(ps, peerBin{name: "confd", bin: p})
	}
	if p := os.Getenv("CONFD_FORK"); p != "" {
		ps = append(ps, peerBin{name: "confd-fork", bin: p, fork: true})
	}
	return ps
}

// buildFloor builds bench/floor into a temp dir.
func buildFloor(b *testing.B) string {
	b.Helper()
	bin := filepath.Join(b.TempDir(), "floor")
	if out, err := exec.Command("go", "build", "-o", bin, "../../bench/floor").CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// BenchmarkPeerStart: the process alone (print the version and exit), the
// floor under every onetime figure: loading the binary and running its
// package initialisation (all three link etcd's client, gRPC and protobuf).
func BenchmarkPeerStart(b *testing.B) {
	for _, p := range peers(b) {
		b.Run(p.name, func(b *testing.B) {
			flag := "-version"
			if p.name == "render" || p.fork {
				flag = "--version"
			}
			for b.Loop() {
				if out, err := exec.Command(p.bin, flag).CombinedOutput(); err != nil {
					b.Fatalf("%s %s: %v\n%s", p.name, flag, err, out)
				}
			}
		})
	}
}

// BenchmarkPeerOnetime: a -onetime process over 1k and 10k keys, and the
// floor under it: a process that only reads the same keys.
func BenchmarkPeerOnetime(b *testing.B) {
	ps := onetimePeers(b)
	for _, n := range sizes[:2] {
		srv := etcdtest.New(b)
		loadKeys(b, srv.Client(), n)
		for _, p := range ps {
			b.Run(p.name+"/"+sizeName(n), func(b *testing.B) {
				dir, dest := benchConfdir(b, "")
				var out []byte
				var runs []time.Duration
				for b.Loop() {
					os.Remove(dest)
					var err error
					start := time.Now()
					if out, err = exec.Command(p.bin, p.args(srv.Endpoint(), dir, "-onetime")...).CombinedOutput(); err != nil {
						b.Fatalf("%s: %v\n%s", p.name, err, out)
					}
					runs = append(runs, time.Since(start))
				}
				// The median resists the other load of a shared machine
				// better than the mean (ns/op).
				b.ReportMetric(percentile(runs, 0.50), "p50-ms")
				if p.floor {
					if !strings.HasPrefix(string(out), fmt.Sprintf("%d keys", n)) {
						b.Fatalf("floor read %q, want %d keys", out, n)
					}
					return
				}
				if !strings.Contains(read(dest), benchVal(n-1, "")) {
					b.Fatalf("%s did not render", p.name)
				}
			})
		}
	}
}

// BenchmarkPeerOnetimeResources: a -onetime process over 200 resources ×
// 50 keys, each resource on its own prefix (one haproxy backend per
// service), against Debian's etcd binary with its defaults (--max-txn-ops
// 128: fewer than the resources).
func BenchmarkPeerOnetimeResources(b *testing.B) {
	ps := peers(b)
	const res, keys = 200, 50
	srv := etcdtest.New(b, etcdtest.WithMode(etcdtest.Binary))
	dir := manyResources(b, srv.Client(), res, keys)
	last := filepath.Join(dir, "out", fmt.Sprintf("svc%04d.cfg", res-1))
	for _, p := range ps {
		b.Run(fmt.Sprintf("%s/res=%dx%d", p.name, res, keys), func(b *testing.B) {
			var runs []time.Duration
			for b.Loop() {
				os.Remove(last)
				start := time.Now()
				if out, err := exec.Command(p.bin, p.args(srv.Endpoint(), dir, "-onetime")...).CombinedOutput(); err != nil {
					b.Fatalf("%s: %v\n%s", p.name, err, out)
				}
				runs = append(runs, time.Since(start))
			}
			b.ReportMetric(percentile(runs, 0.50), "p50-ms")
			if !strings.Contains(read(last), benchVal(res*keys-1, "")) {
				b.Fatalf("%s did not render %s", p.name, last)
			}
		})
	}
}

// BenchmarkPeerPutToFile: one put → file, with each implementation watching.
func BenchmarkPeerPutToFile(b *testing.B) {
	ps := peers(b)
	for _, n := range sizes[:2] {
		srv := etcdtest.New(b)
		c := srv.Client()
		loadKeys(b, c, n)
		for _, p := range ps {
			b.Run(p.name+"/"+sizeName(n), func(b *testing.B) {
				dir, dest := benchConfdir(b, "")
				fw := newFileWaiter(b, dest)
				startRender(b, p.bin, p.args(srv.Endpoint(), dir, "-watch")...)
				fw.wait(b, []byte(benchVal(n-1, "")))
				var lat []time.Duration
				i := 0
				for b.Loop() {
					i++
					v := benchVal(0, "-"+p.name+strconv.Itoa(i))
					start := time.Now()
					if _, err := c.Put(context.Background(), benchKey(0), v, 0); err != nil {
						b.Fatal(err)
					}
					fw.wait(b, []byte(v+" check"))
					lat = append(lat, time.Since(start))
				}
				b.ReportMetric(percentile(lat, 0.50), "p50-ms")
				b.ReportMetric(percentile(lat, 0.99), "p99-ms")
			})
		}
	}
}

// BenchmarkPeerBurst: reloads per burst of 200 puts, each implementation
// watching with its defaults (and render with -wait).
func BenchmarkPeerBurst(b *testing.B) {
	ps := peers(b)
	srv := etcdtest.New(b)
	c := srv.Client()
	loadKeys(b, c, 1000)
	ps = append(ps, peerBin{name: "render-wait", bin: ps[0].bin})
	for _, p := range ps {
		b.Run(p.name, func(b *testing.B) {
			reloadsFile := filepath.Join(b.TempDir(), "reloads")
			dir, dest := benchConfdir(b, fmt.Sprintf("reload_cmd = \"echo r >> %s\"", reloadsFile))
			fw := newFileWaiter(b, dest)
			var extra []string
			if p.name == "render-wait" {
				extra = []string{"-wait", "100ms:2s"}
			}
			startRender(b, p.bin, p.args(srv.Endpoint(), dir, append([]string{"-watch"}, extra...)...)...)
			fw.wait(b, []byte(benchVal(999, "")))
			reloads := func() int { return strings.Count(read(reloadsFile), "\n") }
			total, bursts := 0, 0
			for b.Loop() {
				bursts++
				time.Sleep(500 * time.Millisecond)
				before := reloads()
				// Unique across -count repetitions, which reuse etcd's keys: a
				// burst that ended on the values already there would change
				// nothing and, rightly, reload nothing.
				tag := fmt.Sprintf("-%s-%d-b%d-", p.name, time.Now().UnixNano(), bursts)
				putBurst(b, c, fw, tag)
				time.Sleep(2500 * time.Millisecond) // past render's max wait: every reload is in
				total += reloads() - before
			}
			b.ReportMetric(float64(total)/float64(bursts), "reloads/burst")
		})
	}
}

// BenchmarkFloorOnetime: render -onetime and the floor (bench/floor: start,
// connect, read the prefix, exit) over the same 10k keys, one run of each
// in turn, so that the other load of a shared machine falls on both alike.
// It reports each one's median and render's ratio to the floor.
func BenchmarkFloorOnetime(b *testing.B) {
	renderBin, floorBin := buildRender(b), buildFloor(b)
	n := sizes[1]
	srv := etcdtest.New(b)
	loadKeys(b, srv.Client(), n)
	b.Run(sizeName(n), func(b *testing.B) {
		dir, dest := benchConfdir(b, "")
		ren := peerBin{name: "render", bin: renderBin}
		floor := peerBin{name: "floor", bin: floorBin, floor: true}
		var rt, ft []time.Duration
		timed := func(p peerBin) time.Duration {
			start := time.Now()
			if out, err := exec.Command(p.bin, p.args(srv.Endpoint(), dir, "-onetime")...).CombinedOutput(); err != nil {
				b.Fatalf("%s: %v\n%s", p.name, err, out)
			}
			return time.Since(start)
		}
		for b.Loop() {
			os.Remove(dest)
			rt = append(rt, timed(ren))
			ft = append(ft, timed(floor))
		}
		if !strings.Contains(read(dest), benchVal(n-1, "")) {
			b.Fatal("render did not render")
		}
		r, f := percentile(rt, 0.50), percentile(ft, 0.50)
		b.ReportMetric(r, "render-p50-ms")
		b.ReportMetric(f, "floor-p50-ms")
		b.ReportMetric(r/f, "ratio-p50")
		b.ReportMetric(percentile(rt, 0)/percentile(ft, 0), "ratio-best")
	})
}
