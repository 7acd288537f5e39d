package hollow_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/hollow"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/testmain"
)

// threadNices returns the nice value of each thread of process pid, by
// thread id, from /proc/<pid>/task/*/stat (field 19).
func threadNices(t *testing.T, pid int) map[string]int {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, task := range tasks {
		b, err := os.ReadFile(filepath.Join(dir, task.Name(), "stat"))
		if err != nil {
			continue // a thread that ended meanwhile
		}
		// The fields after the command (which may hold spaces) start at
		// the third, the state.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
		nice, err := strconv.Atoi(f[19-3])
		if err != nil {
			t.Fatalf("%s/%s/stat: nice %q: %v", dir, task.Name(), f[19-3], err)
		}
		out[task.Name()] = nice
	}
	return out
}

// lowered returns what agents process pid's log (in dir) says of its
// priority lowered at its start: how many threads it had then.
func lowered(t *testing.T, dir string, pid int) string {
	logs, _ := filepath.Glob(filepath.Join(dir, "agents-*.log"))
	for _, l := range logs {
		b, err := os.ReadFile(l)
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.Lines(string(b)) {
			if strings.Contains(line, "priority lowered") && slices.Contains(strings.Fields(line), fmt.Sprintf("pid=%d", pid)) {
				return strings.TrimSpace(line[strings.Index(line, "msg="):])
			}
		}
	}
	return "no note of its priority lowered"
}

// startAgents starts a cluster of 4 machines in 2 agents processes (zone
// metadata, TTL 2 s) and one engine.
func startAgents(t *testing.T, srv *etcdtest.Server, dir string) *hollow.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	hc, err := hollow.Start(ctx, hollow.Config{
		Store: srv.Config(), Prefix: "/hollow/", Machines: 4, AgentProcs: 2, Engines: 1, TTL: 2 * time.Second, MoveGrace: -1,
		Metadata: func(i int) map[string]string { return map[string]string{"zone": fmt.Sprintf("z%d", i%3)} },
		Command:  command, Dir: dir,
	})
	if err != nil {
		t.Fatal(err)
	}
	return hc
}

// TestAgentProcesses runs 4 machines in 2 agents processes: each machine
// registers with its metadata from its process (not this one), every
// thread of those processes is niced and the engine's are not, the
// processes report their figures, a lost machine's presence key goes after
// its TTL while the others' stay, and Close stops every process.
func TestAgentProcesses(t *testing.T) {
	srv := etcdtest.New(t)
	dir := t.TempDir()
	hc := startAgents(t, srv, dir)
	closed := false
	defer func() {
		if !closed {
			hc.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pids := map[int][]string{}
	for _, m := range hc.Machines {
		pids[m.Pid()] = append(pids[m.Pid()], m.ID)
	}
	if len(pids) != 2 || pids[0] != nil || pids[os.Getpid()] != nil || pids[hc.Machines[0].Pid()][1] != "hollow-0001" {
		t.Fatalf("machines by process: %v; want two processes other than this one, hollow-0000 and -0001 in one", pids)
	}
	reg := registry.New(srv.Client(), "/hollow/")
	testmain.Eventually(t, 30*time.Second, 20*time.Millisecond, "every machine registered", func() error {
		ms, err := reg.Machines(ctx)
		if err != nil || len(ms) != 4 {
			return fmt.Errorf("%d machines registered (%v)", len(ms), err)
		}
		for i, n := range hc.Machines {
			if m := ms[n.ID]; m.Metadata["zone"] != fmt.Sprintf("z%d", i%3) || m.IP != fmt.Sprintf("127.1.0.%d", i+1) {
				t.Fatalf("machine %s registered as %+v", n.ID, m)
			}
		}
		return nil
	})

	// The agents run niced, every thread, those created after the process
	// lowered its priority too (a process starts with a few threads; its
	// clients and agents need more); this process and the engine do not.
	own := threadNices(t, os.Getpid())
	base := own[strconv.Itoa(os.Getpid())]
	want := min(base+hollow.AgentNice, 19)
	for pid, ms := range pids {
		nices := threadNices(t, pid)
		for tid, nice := range nices {
			if nice != want {
				t.Errorf("agents process %d (%v): thread %s at nice %d; want %d", pid, ms, tid, nice, want)
			}
		}
		t.Logf("agents process %d: %d threads now, %s", pid, len(nices), lowered(t, dir, pid))
	}
	for tid, nice := range threadNices(t, hc.Engines[0].Pid()) {
		if nice != base {
			t.Errorf("engine process: thread %s at nice %d; want %d, as this process", tid, nice, base)
		}
	}

	stats, err := hc.AgentStats()
	if err != nil {
		t.Fatal(err)
	}
	if len(stats) != 2 {
		t.Fatalf("AgentStats: %+v; want 2 processes", stats)
	}
	for _, s := range stats {
		if s.Machines != 2 || s.CPU <= 0 || s.HeapInuse == 0 || pids[s.Pid] == nil {
			t.Errorf("AgentStats: %+v; want 2 machines, some CPU and heap, a pid of the agents processes", s)
		}
	}

	lost := hc.Machines[2]
	if err := hc.Lose(lost); err != nil {
		t.Fatal(err)
	}
	if !lost.Lost() || hc.Machines[3].Lost() {
		t.Fatalf("Lost: %v %v; want true for the lost machine only", lost.Lost(), hc.Machines[3].Lost())
	}
	start := time.Now()
	testmain.Eventually(t, 30*time.Second, 20*time.Millisecond, "the lost machine's presence key gone", func() error {
		ms, err := reg.Machines(ctx)
		if err != nil {
			return err
		}
		if _, ok := ms[lost.ID]; ok {
			return fmt.Errorf("%s still registered", lost.ID)
		}
		if len(ms) != 3 {
			t.Fatalf("machines registered after %s was lost: %v; want the other 3", lost.ID, ms)
		}
		return nil
	})
	t.Logf("%s's presence key gone %s after Lose (TTL 2s)", lost.ID, time.Since(start).Round(time.Millisecond))

	closed = true
	if err := hc.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for pid := range pids {
		if !gone(pid) {
			t.Errorf("agents process %d still running after Close", pid)
		}
	}
}

// TestAgentProcessEnds: an agents process that ends (killed here) fails
// Lose on its machines and Close, which names it.
func TestAgentProcessEnds(t *testing.T) {
	srv := etcdtest.New(t)
	hc := startAgents(t, srv, t.TempDir())
	victim := hc.Machines[0]
	if err := syscall.Kill(victim.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testmain.Eventually(t, 10*time.Second, 10*time.Millisecond, "the agents process reaped", func() error {
		if _, err := hc.AgentStats(); err == nil {
			return errors.New("AgentStats: no error")
		}
		return nil
	})
	if err := hc.Lose(victim); err == nil || !strings.Contains(err.Error(), "agents-0") {
		t.Errorf("Lose of a machine of the killed process: %v; want an error naming agents-0", err)
	}
	if err := hc.Lose(hc.Machines[3]); err != nil {
		t.Errorf("Lose of a machine of the other process: %v", err)
	}
	err := hc.Close()
	if err == nil || !strings.Contains(err.Error(), "hollow agents-0: signal: killed") || strings.Contains(err.Error(), "agents-1") {
		t.Errorf("Close: %v; want agents-0 killed, nothing on agents-1", err)
	}
}
