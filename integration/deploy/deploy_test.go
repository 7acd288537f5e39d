// Package deploy follows docs/deploy.md on three machines, as an operator
// would: the doc's marked blocks (see step) are its script, so the doc and
// the test cannot drift apart. The machines are network, mount and UTS
// namespaces (machine) on one bridge, with the doc's addresses; what the
// doc installs from packages (haproxy, nginx) is the host's, what it copies
// (the binaries, examples/) comes from this checkout. systemd is the one
// thing they lack: a systemctl stand-in runs the doc's unit files, and the
// scheduler's process executor stands in for its systemd executor.
//
// The test binary plays the stand-ins (systemctl, scp): TestMain looks at
// the name it was run as.
package deploy

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/testmain"
)

func TestMain(m *testing.M) {
	switch filepath.Base(os.Args[0]) {
	case "systemctl":
		os.Exit(systemctlMain(os.Args[1:], os.Stdout, os.Stderr))
	case "scp":
		os.Exit(scpMain(os.Args[1:], os.Stderr))
	}
	testmain.Run(m, "scheduler", "announce", "render")
}

// The doc's machines: machine 1 is the load balancer (it holds the CA and
// the join endpoint), the two others are the workers.
var (
	names = []string{"lb", "worker-1", "worker-2"}
	ips   = map[string]string{"lb": "10.0.0.11", "worker-1": "10.0.0.12", "worker-2": "10.0.0.13"}
)

const docPath = "../../docs/deploy.md"

func TestDeployDoc(t *testing.T) {
	doc, err := os.ReadFile(docPath)
	if err != nil {
		t.Fatal(err)
	}
	steps, err := parseDoc(string(doc))
	if err != nil {
		t.Fatalf("%s: %v", docPath, err)
	}
	checkCoverage(t, steps)
	net := newNetwork(t, names, ips)
	src := checkout(t)
	t.Cleanup(func() {
		if t.Failed() {
			for _, m := range net.machines {
				dumpLogs(t, m)
			}
		}
	})
	var load *requests
	for _, s := range steps {
		switch s.kind {
		case "requests":
			if s.target == "start" {
				load = startRequests(t, net.byName(t, "lb"))
				continue
			}
			if load == nil {
				t.Fatalf("%s:%d: requests stop without start", docPath, s.line)
			}
			load.stop(t, s.line)
			load = nil
		case "file":
			for _, m := range targets(t, net, s) {
				writeFile(t, m, s)
			}
		case "run":
			for _, m := range targets(t, net, s) {
				ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
				out, err := m.sh(ctx, src, s.text)
				cancel()
				t.Logf("%s:%d on %s:\n%s\n%s", docPath, s.line, m.name, indent(s.text, "$ "), indent(out, "  "))
				if err != nil {
					t.Fatalf("%s:%d on %s: %v", docPath, s.line, m.name, err)
				}
			}
		case "poweroff":
			for _, m := range targets(t, net, s) {
				m.powerOff()
				t.Logf("%s:%d: %s powered off (every process killed)", docPath, s.line, m.name)
			}
		case "traffic":
			want := strings.Split(s.target, ",")
			sort.Strings(want)
			traffic(t, net.byName(t, "lb"), want, s.line)
		}
	}
}

// checkCoverage refuses a doc whose marked path no longer shows what the
// test is for: every machine set up, traffic to both workers, the failover.
func checkCoverage(t *testing.T, steps []step) {
	t.Helper()
	var traffics []string
	ran := map[string]bool{}
	poweroff := false
	for _, s := range steps {
		switch s.kind {
		case "poweroff":
			poweroff = true
		case "traffic":
			traffics = append(traffics, s.target)
		case "run":
			for _, m := range strings.Split(s.target, ",") {
				ran[m] = true
			}
		}
	}
	if !slices.Contains(traffics, "worker-1,worker-2") || !slices.Contains(traffics, "worker-1") || !poweroff {
		t.Fatalf("%s: the marked path must check traffic to both workers and, after a worker stops and after one is powered off, to worker-1 alone; it checks %v (power-off: %v)", docPath, traffics, poweroff)
	}
	if !ran["lb"] || !(ran["workers"] || ran["worker-1"] && ran["worker-2"]) {
		t.Fatalf("%s: the marked path must run commands on lb and on the workers; it runs on %v", docPath, ran)
	}
}

// checkout is the directory the doc's commands run in: a flotilla checkout
// after `make build`, i.e. bin/ (the commands TestMain built) and examples/.
func checkout(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	examples, err := filepath.Abs("../../examples")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(examples, filepath.Join(dir, "examples")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Dir(testmain.Bin("scheduler")), filepath.Join(dir, "bin")); err != nil {
		t.Fatal(err)
	}
	return dir
}

func targets(t *testing.T, net *network, s step) []*machine {
	t.Helper()
	var out []*machine
	for _, name := range strings.Split(s.target, ",") {
		switch name {
		case "all":
			out = append(out, net.machines...)
		case "workers":
			for _, m := range net.machines {
				if strings.HasPrefix(m.name, "worker-") {
					out = append(out, m)
				}
			}
		default:
			out = append(out, net.byName(t, name))
		}
	}
	return out
}

var modeNote = regexp.MustCompile(`mode (0[0-7]{3})`)

func writeFile(t *testing.T, m *machine, s step) {
	t.Helper()
	p := filePath(s.text)
	mode := os.FileMode(0o644)
	first, _, _ := strings.Cut(s.text, "\n")
	if sm := modeNote.FindStringSubmatch(first); sm != nil {
		v, _ := strconv.ParseUint(sm[1], 8, 32)
		mode = os.FileMode(v)
	}
	host := m.rootPath(p)
	if err := os.MkdirAll(filepath.Dir(host), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(host, []byte(s.text), mode); err != nil {
		t.Fatalf("%s:%d: write %s on %s: %v", docPath, s.line, p, m.name, err)
	}
	t.Logf("%s:%d on %s: wrote %s", docPath, s.line, m.name, p)
}

// traffic waits until a round of requests to the load balancer, sent from
// lb itself, is answered without error by the instances on exactly the
// machines in want (answers are "nginx@N on HOST IP:8080").
func traffic(t *testing.T, lb *machine, want []string, line int) {
	t.Helper()
	script := fmt.Sprintf(`for i in $(seq 20); do curl -s -f -m 2 http://%s/ || echo ERROR; done`, lb.ip)
	testmain.Eventually(t, 3*time.Minute, 500*time.Millisecond, fmt.Sprintf("%s:%d: traffic through haproxy to %v", docPath, line, want), func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out, _ := lb.sh(ctx, "/", script)
		seen := map[string]int{}
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			f := strings.Fields(l)
			if len(f) < 3 || f[1] != "on" {
				return fmt.Errorf("answer %q in:\n%s", l, out)
			}
			seen[f[2]]++
		}
		var got []string
		for h := range seen {
			got = append(got, h)
		}
		sort.Strings(got)
		if !slices.Equal(got, want) {
			return fmt.Errorf("answered by %v", seen)
		}
		return nil
	})
	t.Logf("%s:%d: 20 requests through haproxy answered by %v", docPath, line, want)
}

// requests is a loop of requests through the load balancer, sent from lb
// one after the other, each answer ("ok" or "error") a line of out.
type requests struct {
	cancel context.CancelFunc
	done   chan struct{}
	out    testmain.SyncBuffer
}

func startRequests(t *testing.T, lb *machine) *requests {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &requests{cancel: cancel, done: make(chan struct{})}
	cmd := lb.command(ctx, "/", "sh", "-c", fmt.Sprintf(`while :; do curl -s -f -m 5 -o /dev/null http://%s/ && echo ok || echo error; done`, lb.ip))
	cmd.Stdout = &r.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { cmd.Wait(); close(r.done) }()
	t.Cleanup(func() { cancel(); <-r.done })
	// Started once the first answer is in.
	testmain.Eventually(t, time.Minute, 50*time.Millisecond, "first request through haproxy", func() error {
		if !strings.Contains(r.out.String(), "\n") {
			return fmt.Errorf("no answer yet")
		}
		return nil
	})
	return r
}

// stop ends the loop and fails the test if a request was not answered.
func (r *requests) stop(t *testing.T, line int) {
	t.Helper()
	r.cancel()
	<-r.done
	lines := strings.Split(strings.TrimSpace(r.out.String()), "\n")
	// The last line may be the request the cancellation interrupted.
	if len(lines) > 1 {
		lines = lines[:len(lines)-1]
	}
	errs := 0
	for _, l := range lines {
		if l != "ok" {
			errs++
		}
	}
	if errs > 0 {
		t.Fatalf("%s:%d: %d of %d requests through haproxy failed", docPath, line, errs, len(lines))
	}
	t.Logf("%s:%d: %d requests through haproxy meanwhile, every one answered", docPath, line, len(lines))
}

// dumpLogs prints the tails of what ran on m: the stand-in's service logs
// and the process executor's unit logs.
func dumpLogs(t *testing.T, m *machine) {
	for _, pattern := range []string{standinDir + "/*.log", "/var/lib/flotilla/*/*.log", "/var/lib/flotilla/*/*/*.log"} {
		files, _ := filepath.Glob(m.rootPath(pattern))
		for _, f := range files {
			b, _ := os.ReadFile(f)
			if len(b) > 3000 {
				b = b[len(b)-3000:]
			}
			t.Logf("--- %s: %s (tail)\n%s", m.name, strings.TrimPrefix(f, m.rootPath("/")), b)
		}
	}
}

func indent(s, prefix string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return ""
	}
	return prefix + strings.ReplaceAll(s, "\n", "\n"+prefix)
}
