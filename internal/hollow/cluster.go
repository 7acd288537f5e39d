package hollow

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/flotilla/flotilla/internal/agent"
	"github.com/flotilla/flotilla/internal/engine"
	"github.com/flotilla/flotilla/internal/netcut"
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
	// TTL of the presence and leadership leases; default 10s.
	TTL time.Duration
	// MoveGrace is the engines' (engine.Options.MoveGrace: zero is its
	// default, negative none).
	MoveGrace time.Duration
	// Metadata gives machine i its metadata; may be nil.
	Metadata func(i int) map[string]string
	// Dir holds the machines' facts files.
	Dir string
	// Logger receives the agents' and engines' logs; nil discards them.
	Logger *slog.Logger
}

// Cluster is a running set of hollow machines and engine candidates.
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
}

// Node is one hollow machine or engine candidate: its own etcd client and
// the goroutine that runs it.
type Node struct {
	ID     string
	client *store.Client
	// proxies are how an engine reaches each etcd member: Lose cuts them.
	proxies []*netcut.Proxy
	cancel  context.CancelFunc
	done    chan struct{}
	lost    bool
}

// Lost reports whether Lose was called on the node.
func (n *Node) Lost() bool { return n.lost }

// Start opens a client per node and starts every agent and engine; it
// returns once each has its client (they register and campaign on their own).
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
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
	for i := range c.Machines {
		g.Go(func() error {
			n, err := c.open(ctx, fmt.Sprintf("hollow-%04d", i))
			c.Machines[i] = n
			return err
		})
	}
	for i := range c.Engines {
		g.Go(func() error {
			n, err := c.openProxied(ctx, fmt.Sprintf("engine-%d", i))
			c.Engines[i] = n
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
	for _, n := range c.Engines {
		id := n.ID
		e, err := engine.New(engine.Options{
			Registry: registry.New(n.client, cfg.Prefix), ID: id, TTL: cfg.TTL, MoveGrace: cfg.MoveGrace,
			Logger: cfg.Logger.With("engine", id),
			OnPass: func(ps engine.PassStats) {
				c.mu.Lock()
				c.passes = append(c.passes, Pass{PassStats: ps, Engine: id, At: time.Now()})
				c.lastPass[id] = time.Now()
				c.mu.Unlock()
			},
		})
		if err != nil {
			c.Close()
			return nil, err
		}
		c.run(ctx, n, e.Run)
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

// openProxied opens a client that reaches every endpoint through a proxy
// that Lose can sever (one member down leaves it the others, as a direct
// client has).
func (c *Cluster) openProxied(ctx context.Context, id string) (*Node, error) {
	n := &Node{ID: id, done: make(chan struct{})}
	closeAll := func() {
		for _, p := range n.proxies {
			p.Close()
		}
	}
	cfg := c.cfg.Store
	cfg.Endpoints = nil
	for _, ep := range c.cfg.Store.Endpoints {
		u, err := url.Parse(ep)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("hollow %s: %w", id, err)
		}
		p, err := netcut.New(u.Host)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("hollow %s: %w", id, err)
		}
		n.proxies = append(n.proxies, p)
		cfg.Endpoints = append(cfg.Endpoints, u.Scheme+"://"+p.Addr())
	}
	cl, err := store.Open(ctx, cfg)
	if err != nil {
		closeAll()
		return nil, fmt.Errorf("hollow %s: %w", id, err)
	}
	n.client = cl
	return n, nil
}

func (c *Cluster) run(ctx context.Context, n *Node, run func(context.Context) error) {
	ctx, n.cancel = context.WithCancel(ctx)
	go func() {
		defer close(n.done)
		if err := run(ctx); err != nil && !n.lost {
			c.cfg.Logger.Error("hollow node ended", "node", n.ID, "err", err)
		}
	}()
}

// Lose cuts a node off as a machine that died would be: nothing it sends
// reaches etcd any more, so its leases expire after their TTL. An engine's
// proxy is cut (closing its client would let its resignation through); a
// machine's client is closed (an agent revokes nothing on the way: its
// units are its to keep).
func (c *Cluster) Lose(n *Node) {
	n.lost = true
	if len(n.proxies) > 0 {
		for _, p := range n.proxies {
			p.Cut(true)
		}
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

// Close stops every node (a graceful stop for those not lost) and waits.
func (c *Cluster) Close() {
	for _, ns := range [][]*Node{c.Machines, c.Engines} {
		for _, n := range ns {
			if n != nil && n.cancel != nil {
				n.cancel()
			}
		}
	}
	for _, ns := range [][]*Node{c.Machines, c.Engines} {
		for _, n := range ns {
			if n == nil {
				continue
			}
			if n.cancel != nil {
				<-n.done
			}
			n.client.Close()
			for _, p := range n.proxies {
				p.Close()
			}
		}
	}
}
