package hollow

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/flotilla/flotilla/internal/engine"
	"github.com/flotilla/flotilla/internal/store"
)

// Config sizes a hollow cluster.
type Config struct {
	// Store is how every machine and engine reaches etcd (each opens its own
	// client from it).
	Store store.Config
	// Prefix is the scheduler's key prefix.
	Prefix string
	// Machines is how many hollow machines run; Engines how many engine
	// candidates (default 2).
	Machines, Engines int
	// AgentProcs is how many processes the machines' agents share, each
	// running a contiguous share of them at a lower priority (AgentNice);
	// default one per 50 machines, at most 4. It is capped at Machines.
	AgentProcs int
	// Command is the program (and its arguments) each of the cluster's
	// processes runs (an engine candidate, or a share of the machines): a
	// program that, when EnvProcess is set, calls RunProcess first thing
	// (a test binary re-executed with -test.run=^$, its TestMain holding
	// the hook). Required.
	Command []string
	// TTL of the presence and leadership leases; default 10s.
	TTL time.Duration
	// MoveGrace is the engines' (engine.Options.MoveGrace: zero is its
	// default, negative none).
	MoveGrace time.Duration
	// Metadata gives machine i its metadata; may be nil. It is called in
	// Start, and its result sent to the machine's process.
	Metadata func(i int) map[string]string
	// Dir holds the machines' facts files and the processes' logs
	// (<engine id>.log, agents-<n>.log).
	Dir string
	// Logger receives this process's notes on the others; nil discards
	// them. The engines and the agents log to their own logs (Dir).
	Logger *slog.Logger
}

// Cluster is a running set of hollow machines (their agents in a few
// processes, AgentProcs) and engine candidates (a process each).
type Cluster struct {
	cfg      Config
	Machines []*Node
	Engines  []*Node
	// agents are the processes running the machines.
	agents []*proc

	mu     sync.Mutex
	passes []Pass
	// lastPass is when each engine last finished a pass.
	lastPass map[string]time.Time
}

// Pass is one engine pass: its figures, its engine and when it ended.
type Pass struct {
	engine.PassStats
	Engine string
	At     time.Time
	// Since is the time from the engine's previous pass (or its start) to
	// the end of this one; CPU and RunDelay are how long its process's
	// threads spent in that time on a CPU and waiting for one (zero where
	// /proc/self/task/*/schedstat cannot be read).
	Since, CPU, RunDelay time.Duration
}

// Node is one hollow machine (its agent, with its own etcd client, in one
// of the agents processes) or engine candidate (its process).
type Node struct {
	ID string
	// proc is the engine's process, or the one the machine's agent runs in.
	proc   *proc
	engine bool
	lost   atomic.Bool
}

// Lost reports whether Lose was called on the node.
func (n *Node) Lost() bool { return n.lost.Load() }

// Pid returns the id of the node's process: an engine's own, or the agents
// process a machine runs in (for its figures in /proc); 0 if it has none.
func (n *Node) Pid() int {
	if n.proc == nil {
		return 0
	}
	return n.proc.pid()
}

// defaultAgentProcs is AgentProcs' default for machines: one process per
// 50 machines, at most 4.
func defaultAgentProcs(machines int) int {
	return min((machines+49)/50, 4)
}

// Start starts every engine process and every agents process, and returns
// once each engine is ready and each machine has its client and agent
// (they register and campaign on their own). ctx bounds the start only:
// the processes run until Close stops them.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	if len(cfg.Command) == 0 {
		return nil, errors.New("hollow: no Command to run the engines and agents with")
	}
	if cfg.Engines == 0 {
		cfg.Engines = 2
	}
	if cfg.AgentProcs <= 0 {
		cfg.AgentProcs = defaultAgentProcs(cfg.Machines)
	}
	cfg.AgentProcs = min(cfg.AgentProcs, cfg.Machines)
	if cfg.TTL == 0 {
		cfg.TTL = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	c := &Cluster{cfg: cfg, lastPass: map[string]time.Time{}}
	c.Machines = make([]*Node, cfg.Machines)
	for i := range c.Machines {
		c.Machines[i] = &Node{ID: fmt.Sprintf("hollow-%04d", i)}
	}
	c.Engines = make([]*Node, cfg.Engines)
	c.agents = make([]*proc, cfg.AgentProcs)
	var g errgroup.Group
	for i := range c.Engines {
		g.Go(func() error {
			n := &Node{ID: fmt.Sprintf("engine-%d", i), engine: true}
			p, err := c.startEngine(ctx, n.ID)
			if p != nil {
				n.proc = p
				c.Engines[i] = n
			}
			return err
		})
	}
	for k := range c.agents {
		lo, hi := k*cfg.Machines/cfg.AgentProcs, (k+1)*cfg.Machines/cfg.AgentProcs
		g.Go(func() error {
			p, err := c.startAgents(ctx, fmt.Sprintf("agents-%d", k), lo, hi)
			if p != nil {
				c.agents[k] = p
				for _, n := range c.Machines[lo:hi] {
					n.proc = p
				}
			}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Lose cuts a node off as a machine that died would be: nothing it sends
// reaches etcd any more, so its leases expire after their TTL. An engine's
// process is killed (SIGKILL: no resignation) and Lose waits for its end; a
// machine's client is closed by its process (its agent revokes nothing on
// the way: its units are its to keep), and Lose waits for that. It fails
// only if the machine's process cannot be asked (it ended).
func (c *Cluster) Lose(n *Node) error {
	n.lost.Store(true)
	if n.engine {
		n.proc.cmd.Process.Kill()
		<-n.proc.done
		return nil
	}
	_, err := n.proc.request("lose " + n.ID)
	return err
}

// Passes returns the engine passes so far.
func (c *Cluster) Passes() []Pass {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Pass(nil), c.passes...)
}

// LastPass returns when engine id last finished a pass (zero if never).
func (c *Cluster) LastPass(id string) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastPass[id]
}

// engineStopGrace and agentsStopGrace are how long Close waits for an
// engine process after SIGTERM, and an agents process after the end of its
// stdin (its agents stop their units and revoke their leases), before it
// kills them.
const (
	engineStopGrace = 10 * time.Second
	agentsStopGrace = 30 * time.Second
)

// Close stops every process gracefully (SIGTERM to an engine's; the end of
// its stdin to an agents process), kills those still there after a while,
// and waits for each. It returns what went wrong with a process other than
// a lost engine's: an exit status other than 0 (a data race its race
// detector found, say) or a kill. Closing twice is safe.
func (c *Cluster) Close() error {
	for _, n := range c.Engines {
		if n != nil {
			n.proc.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	for _, p := range c.agents {
		if p != nil {
			p.stdin.Close()
		}
	}
	now := time.Now()
	var errs []error
	for _, p := range c.agents {
		if p != nil {
			errs = append(errs, p.wait(now.Add(agentsStopGrace), false))
		}
	}
	for _, n := range c.Engines {
		if n != nil {
			errs = append(errs, n.proc.wait(now.Add(engineStopGrace), n.Lost()))
		}
	}
	return errors.Join(errs...)
}
