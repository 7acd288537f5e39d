package hollow

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/flotilla/flotilla/internal/agent"
	"github.com/flotilla/flotilla/internal/engine"
	"github.com/flotilla/flotilla/internal/registry"
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
	// EngineCommand is the program (and its arguments) each engine
	// candidate runs as, in its own process as a `scheduler serve` holds
	// one: a program that, when EnvEngine is set, calls RunEngineProcess
	// first thing (a test binary re-executed with -test.run=^$, its
	// TestMain holding the hook). Required.
	EngineCommand []string
	// TTL of the presence and leadership leases; default 10s.
	TTL time.Duration
	// MoveGrace is the engines' (engine.Options.MoveGrace: zero is its
	// default, negative none).
	MoveGrace time.Duration
	// Metadata gives machine i its metadata; may be nil.
	Metadata func(i int) map[string]string
	// Dir holds the machines' facts files and the engines' logs
	// (<engine id>.log).
	Dir string
	// Logger receives the agents' logs and this process's notes on the
	// engines; nil discards them.
	Logger *slog.Logger
}

// Cluster is a running set of hollow machines (goroutines of this process)
// and engine candidates (a process each).
type Cluster struct {
	cfg      Config
	Machines []*Node
	Engines  []*Node

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

// Node is one hollow machine (its own etcd client and the goroutine that
// runs its agent) or engine candidate (its process).
type Node struct {
	ID string
	// A machine's.
	client *store.Client
	cancel context.CancelFunc
	// An engine's: its process, the pipe whose end stops it, its log; err
	// is how it ended (set before done closes).
	cmd     *exec.Cmd
	stdin   io.Closer
	logPath string
	err     error

	done chan struct{}
	lost atomic.Bool
}

// Lost reports whether Lose was called on the node.
func (n *Node) Lost() bool { return n.lost.Load() }

// Pid returns an engine's process id (for its figures in /proc); 0 for a
// machine, which runs in this process.
func (n *Node) Pid() int {
	if n.cmd == nil || n.cmd.Process == nil {
		return 0
	}
	return n.cmd.Process.Pid
}

// Start starts every engine process and opens a client per machine, then
// starts every agent; it returns once each engine is ready and each agent
// has its client (they register and campaign on their own). Close stops
// them.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	if len(cfg.EngineCommand) == 0 {
		return nil, errors.New("hollow: no EngineCommand to run the engines with")
	}
	if cfg.Engines == 0 {
		cfg.Engines = 2
	}
	if cfg.TTL == 0 {
		cfg.TTL = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	c := &Cluster{cfg: cfg, lastPass: map[string]time.Time{}}
	c.Machines = make([]*Node, cfg.Machines)
	c.Engines = make([]*Node, cfg.Engines)
	// Clients open in parallel: a thousand dials one by one take a while.
	var g errgroup.Group
	g.SetLimit(32)
	for i := range c.Engines {
		g.Go(func() error {
			n, err := c.startEngine(ctx, fmt.Sprintf("engine-%d", i))
			c.Engines[i] = n
			return err
		})
	}
	for i := range c.Machines {
		g.Go(func() error {
			n, err := c.open(ctx, fmt.Sprintf("hollow-%04d", i))
			c.Machines[i] = n
			return err
		})
	}
	if err := g.Wait(); err != nil {
		c.Close()
		return nil, err
	}
	for i, n := range c.Machines {
		var md map[string]string
		if cfg.Metadata != nil {
			md = cfg.Metadata(i)
		}
		a, err := agent.New(agent.Options{
			Registry: registry.New(n.client, cfg.Prefix), Executor: NewExecutor(), TTL: cfg.TTL,
			Machine: registry.Machine{ID: n.ID, IP: fmt.Sprintf("127.1.%d.%d", i/250, i%250+1), Metadata: md},
			EnvFile: filepath.Join(cfg.Dir, n.ID+".env"), Logger: cfg.Logger.With("machine", n.ID),
		})
		if err != nil {
			c.Close()
			return nil, err
		}
		c.run(ctx, n, a.Run)
	}
	return c, nil
}

func (c *Cluster) open(ctx context.Context, id string) (*Node, error) {
	cl, err := store.Open(ctx, c.cfg.Store)
	if err != nil {
		return nil, fmt.Errorf("hollow %s: %w", id, err)
	}
	return &Node{ID: id, client: cl, done: make(chan struct{})}, nil
}

func (c *Cluster) run(ctx context.Context, n *Node, run func(context.Context) error) {
	ctx, n.cancel = context.WithCancel(ctx)
	go func() {
		defer close(n.done)
		if err := run(ctx); err != nil && !n.lost.Load() {
			c.cfg.Logger.Error("hollow node ended", "node", n.ID, "err", err)
		}
	}()
}

// Lose cuts a node off as a machine that died would be: nothing it sends
// reaches etcd any more, so its leases expire after their TTL. An engine's
// process is killed (SIGKILL: no resignation) and Lose waits for its end; a
// machine's client is closed (an agent revokes nothing on the way: its
// units are its to keep).
func (c *Cluster) Lose(n *Node) {
	n.lost.Store(true)
	if n.cmd != nil {
		n.cmd.Process.Kill()
		<-n.done
		return
	}
	n.client.Close()
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

// engineStopGrace is how long Close waits for an engine process after
// SIGTERM before it kills it.
const engineStopGrace = 10 * time.Second

// Close stops every node (a graceful stop for those not lost: SIGTERM for
// an engine process, killed if still there after a while) and waits for
// each. It returns what went wrong with an engine process that was not
// lost: an exit status other than 0 (a data race its race detector found,
// say) or a kill. Closing twice is safe.
func (c *Cluster) Close() error {
	for _, n := range c.Engines {
		if n != nil {
			n.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	for _, n := range c.Machines {
		if n != nil && n.cancel != nil {
			n.cancel()
		}
	}
	for _, n := range c.Machines {
		if n == nil {
			continue
		}
		if n.cancel != nil {
			<-n.done
		}
		n.client.Close()
	}
	var errs []error
	for _, n := range c.Engines {
		if n != nil {
			errs = append(errs, n.stopEngine(engineStopGrace))
		}
	}
	return errors.Join(errs...)
}
