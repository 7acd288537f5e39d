package hollow

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/flotilla/flotilla/internal/engine"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/store"
)

// engineSpec is what an engine process is told on its first line.
type engineSpec struct {
	Store     store.Config
	Prefix    string
	ID        string
	TTL       time.Duration
	MoveGrace time.Duration
}

// engineLine is one line an engine process writes on its stdout: Ready once
// it has its client and engine, then one per pass with its process's use
// of the CPU since the line before (Pass's Since, CPU and RunDelay).
type engineLine struct {
	Ready bool              `json:",omitempty"`
	Pass  *engine.PassStats `json:",omitempty"`
	At    time.Time

	Since, CPU, RunDelay time.Duration
}

// runEngine is the body of an engine process (RunProcess): it opens its own
// etcd client and runs the engine candidate until ctx is done or stdin
// reaches its end, then resigns and returns. It writes a JSON line on
// stdout when ready and after every pass (its figures and end time), and
// logs to stderr.
func runEngine(ctx context.Context, spec []byte, stdin io.Reader, stdout, stderr io.Writer) error {
	var s engineSpec
	if err := json.Unmarshal(spec, &s); err != nil {
		return fmt.Errorf("hollow engine: decode its spec: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The parent holds stdin's other end: its end (closed, or the parent
	// gone) stops the engine.
	go func() {
		io.Copy(io.Discard, stdin)
		cancel()
	}()
	log := slog.New(slog.NewTextHandler(stderr, nil)).With("engine", s.ID)
	cl, err := store.Open(ctx, s.Store)
	if err != nil {
		return fmt.Errorf("hollow engine %s: %w", s.ID, err)
	}
	defer cl.Close()
	var mu sync.Mutex
	enc := json.NewEncoder(stdout)
	var prev engineLine
	emit := func(l engineLine) {
		mu.Lock()
		defer mu.Unlock()
		l.At = time.Now()
		cpu, delay := procTimes()
		if !prev.At.IsZero() {
			l.Since, l.CPU, l.RunDelay = l.At.Sub(prev.At), cpu-prev.CPU, delay-prev.RunDelay
		}
		prev = engineLine{At: l.At, CPU: cpu, RunDelay: delay}
		if err := enc.Encode(l); err != nil {
			log.Error("hollow engine: write to the parent; stopping", "err", err)
			cancel()
		}
	}
	e, err := engine.New(engine.Options{
		Registry: registry.New(cl, s.Prefix), ID: s.ID, TTL: s.TTL, MoveGrace: s.MoveGrace, Logger: log,
		OnPass: func(ps engine.PassStats) { emit(engineLine{Pass: &ps}) },
	})
	if err != nil {
		return fmt.Errorf("hollow engine %s: %w", s.ID, err)
	}
	emit(engineLine{Ready: true})
	if err := e.Run(ctx); err != nil {
		return fmt.Errorf("hollow engine %s: %w", s.ID, err)
	}
	log.Info("hollow engine: stopped")
	return nil
}

// startEngine starts engine candidate id in its own process and returns
// once it is ready (it has its client; it campaigns on its own). Its
// passes reach c.passes as their lines come.
func (c *Cluster) startEngine(ctx context.Context, id string) (*proc, error) {
	spec := engineSpec{Store: c.cfg.Store, Prefix: c.cfg.Prefix, ID: id, TTL: c.cfg.TTL, MoveGrace: c.cfg.MoveGrace}
	return c.startProc(ctx, id, roleEngine, spec, func(p *proc, b []byte) bool {
		var l engineLine
		if err := json.Unmarshal(b, &l); err != nil {
			c.cfg.Logger.Warn("hollow engine: a line that is not its own", "node", id, "line", string(b))
			return false
		}
		if l.Pass != nil {
			c.mu.Lock()
			c.passes = append(c.passes, Pass{PassStats: *l.Pass, Engine: id, At: l.At, Since: l.Since, CPU: l.CPU, RunDelay: l.RunDelay})
			c.lastPass[id] = l.At
			c.mu.Unlock()
		}
		return l.Ready
	})
}
