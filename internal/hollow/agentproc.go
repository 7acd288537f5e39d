package hollow

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/flotilla/flotilla/internal/agent"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/store"
)

// AgentNice is how much lower than its parent's an agents process sets the
// priority (nice value) of its threads, capped at 19: the hollow machines
// stand for other hosts, so the engines, etcd and the checker get the CPU
// first, as a host of their own would give them.
const AgentNice = 10

// agentsSpec is what an agents process is told on its first line: its
// machines (id, IP, metadata each) and how they reach etcd.
type agentsSpec struct {
	Name     string
	Store    store.Config
	Prefix   string
	TTL      time.Duration
	Dir      string
	Machines []registry.Machine
}

// agentsLine is one line an agents process writes on its stdout: Ready once
// every machine has its client and agent, then one reply per request
// (Lost, Stats, or Err).
type agentsLine struct {
	Ready bool        `json:",omitempty"`
	Lost  string      `json:",omitempty"`
	Stats *AgentStats `json:",omitempty"`
	Err   string      `json:",omitempty"`
}

// AgentStats is what an agents process reports of itself.
type AgentStats struct {
	// Name is the process's ("agents-0"), Pid its id.
	Name string
	Pid  int
	// Machines is how many hollow machines it runs.
	Machines int
	// CPU is the CPU time (user and system) it has used so far; RunDelay
	// how long its threads have waited for a CPU so far (from schedstat,
	// zero where it cannot be read).
	CPU, RunDelay time.Duration
	// HeapInuse is its Go heap in use (runtime.MemStats.HeapInuse), bytes.
	HeapInuse uint64
}

// hollowMachine is one machine of an agents process.
type hollowMachine struct {
	registry.Machine
	client *store.Client
	lost   atomic.Bool
}

// runAgents is the body of an agents process (RunProcess). It lowers the
// priority of its threads (AgentNice), opens one etcd client per machine,
// starts every machine's agent with an in-memory executor, writes a ready
// line, then answers requests on stdin, a line each, with a JSON line on
// stdout: "lose <id>" closes that machine's client (nothing revoked: its
// leases run out), "stats" reports AgentStats. At the end of stdin, or when
// ctx is done, it stops every agent and returns.
func runAgents(ctx context.Context, spec []byte, stdin *bufio.Reader, stdout, stderr io.Writer) error {
	var s agentsSpec
	if err := json.Unmarshal(spec, &s); err != nil {
		return fmt.Errorf("hollow agents: decode its spec: %w", err)
	}
	nice, threads, err := lowerPriority(AgentNice)
	if err != nil {
		return fmt.Errorf("hollow %s: %w", s.Name, err)
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	log.Info("hollow agents: priority lowered", "process", s.Name, "nice", nice, "threads", threads, "machines", len(s.Machines), "pid", os.Getpid())
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ms := make([]*hollowMachine, len(s.Machines))
	// Clients open in parallel: a few hundred dials one by one take a while.
	var g errgroup.Group
	g.SetLimit(32)
	for i, m := range s.Machines {
		g.Go(func() error {
			cl, err := store.Open(ctx, s.Store)
			if err != nil {
				return fmt.Errorf("hollow %s: %w", m.ID, err)
			}
			ms[i] = &hollowMachine{Machine: m, client: cl}
			return nil
		})
	}
	err = g.Wait()
	defer func() {
		for _, m := range ms {
			if m != nil {
				m.client.Close()
			}
		}
	}()
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	byID := map[string]*hollowMachine{}
	for _, m := range ms {
		a, err := agent.New(agent.Options{
			Registry: registry.New(m.client, s.Prefix), Executor: NewExecutor(), TTL: s.TTL, Machine: m.Machine,
			EnvFile: filepath.Join(s.Dir, m.ID+".env"), Logger: log.With("machine", m.ID),
		})
		if err != nil {
			return fmt.Errorf("hollow %s: %w", m.ID, err)
		}
		byID[m.ID] = m
		wg.Go(func() {
			if err := a.Run(ctx); err != nil && !m.lost.Load() {
				log.Error("hollow machine ended", "machine", m.ID, "err", err)
			}
		})
	}
	return serveAgents(ctx, s.Name, byID, stdin, json.NewEncoder(stdout))
}

// serveAgents writes the ready line, then answers requests until stdin's
// end or ctx's.
func serveAgents(ctx context.Context, name string, byID map[string]*hollowMachine, stdin *bufio.Reader, enc *json.Encoder) error {
	if err := enc.Encode(agentsLine{Ready: true}); err != nil {
		return fmt.Errorf("hollow %s: write to the parent: %w", name, err)
	}
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdin)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	for {
		var line string
		var ok bool
		select {
		case <-ctx.Done():
			return nil
		case line, ok = <-lines:
			if !ok {
				return nil
			}
		}
		var reply agentsLine
		switch cmd, arg, _ := strings.Cut(line, " "); cmd {
		case "lose":
			if m := byID[arg]; m != nil {
				m.lost.Store(true)
				m.client.Close()
				reply.Lost = arg
			} else {
				reply.Err = fmt.Sprintf("lose %q: no such machine here", arg)
			}
		case "stats":
			reply.Stats = ownStats(name, len(byID))
		default:
			reply.Err = fmt.Sprintf("%q: no such request", line)
		}
		if err := enc.Encode(reply); err != nil {
			return fmt.Errorf("hollow %s: write to the parent: %w", name, err)
		}
	}
}

// ownStats reports this process's figures.
func ownStats(name string, machines int) *AgentStats {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	var mem runtime.MemStats
	runtime.ReadMemStats(&mem)
	_, delay := procTimes()
	return &AgentStats{
		Name: name, Pid: os.Getpid(), Machines: machines,
		CPU: time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), RunDelay: delay, HeapInuse: mem.HeapInuse,
	}
}

// lowerPriority raises the nice value of every thread of this process by
// more (capped at 19; raising it needs no privilege). Threads created
// later inherit the value of the thread that creates them; the threads
// are listed again until no new one appears, for those created meanwhile.
// It returns the nice value set and on how many threads.
func lowerPriority(more int) (nice, threads int, err error) {
	// Getpriority returns 20 - nice (the raw system call).
	p, err := syscall.Getpriority(syscall.PRIO_PROCESS, 0)
	if err != nil {
		return 0, 0, fmt.Errorf("lower priority: %w", err)
	}
	nice = min(20-p+more, 19)
	done := map[int]bool{}
	for {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return 0, 0, fmt.Errorf("lower priority: %w", err)
		}
		fresh := 0
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil || done[tid] {
				continue
			}
			if err := syscall.Setpriority(syscall.PRIO_PROCESS, tid, nice); err != nil && !errors.Is(err, syscall.ESRCH) {
				return 0, 0, fmt.Errorf("lower priority of thread %d to nice %d: %w", tid, nice, err)
			}
			done[tid] = true
			fresh++
		}
		if fresh == 0 {
			return nice, len(done), nil
		}
	}
}

// startAgents starts the agents process name for machines [lo, hi) and
// returns once every machine there has its client and agent (they register
// on their own).
func (c *Cluster) startAgents(ctx context.Context, name string, lo, hi int) (*proc, error) {
	s := agentsSpec{Name: name, Store: c.cfg.Store, Prefix: c.cfg.Prefix, TTL: c.cfg.TTL, Dir: c.cfg.Dir}
	for i := lo; i < hi; i++ {
		m := registry.Machine{ID: c.Machines[i].ID, IP: fmt.Sprintf("127.1.%d.%d", i/250, i%250+1)}
		if c.cfg.Metadata != nil {
			m.Metadata = c.cfg.Metadata(i)
		}
		s.Machines = append(s.Machines, m)
	}
	return c.startProc(ctx, name, roleAgents, s, func(p *proc, b []byte) bool {
		var l agentsLine
		if err := json.Unmarshal(b, &l); err != nil {
			c.cfg.Logger.Warn("hollow agents: a line that is not its own", "process", name, "line", string(b))
			return false
		}
		if l.Ready {
			return true
		}
		select {
		case p.replies <- l:
		default:
			c.cfg.Logger.Warn("hollow agents: a reply to nothing asked", "process", name, "line", string(b))
		}
		return false
	})
}

// request sends an agents process one request line and returns its reply.
// It blocks until the reply or the process's end.
func (p *proc) request(line string) (agentsLine, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, err := io.WriteString(p.stdin, line+"\n"); err != nil {
		return agentsLine{}, fmt.Errorf("hollow %s: %s: %w", p.name, line, err)
	}
	select {
	case l := <-p.replies:
		if l.Err != "" {
			return l, fmt.Errorf("hollow %s: %s", p.name, l.Err)
		}
		return l, nil
	case <-p.done:
		return agentsLine{}, fmt.Errorf("hollow %s: %s: it ended (%v)", p.name, line, p.err)
	}
}

// AgentStats asks every agents process for its figures. It blocks until
// each has answered (or ended); it is safe for concurrent use.
func (c *Cluster) AgentStats() ([]AgentStats, error) {
	out := make([]AgentStats, 0, len(c.agents))
	for _, p := range c.agents {
		l, err := p.request("stats")
		if err != nil {
			return nil, err
		}
		if l.Stats == nil {
			return nil, fmt.Errorf("hollow %s: stats: a reply without them", p.name)
		}
		out = append(out, *l.Stats)
	}
	return out, nil
}
