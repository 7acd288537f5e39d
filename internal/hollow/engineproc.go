package hollow

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/flotilla/flotilla/internal/engine"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/store"
)

// EnvEngine names the environment variable that makes a process started by
// Start an engine candidate; its value is the candidate's spec (JSON). The
// program named by Config.EngineCommand checks it before anything else and,
// when it is set, hands over to RunEngineProcess.
const EnvEngine = "FLOTILLA_HOLLOW_ENGINE"

// engineSpec is what an engine process is told through EnvEngine.
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

// RunEngineProcess is the body of an engine process: spec is EnvEngine's
// value. It opens its own etcd client and runs the engine candidate until
// ctx is done (the caller's SIGTERM) or stdin reaches its end (the parent
// closed it, or died), then resigns and returns. It writes a JSON line on
// stdout when ready and after every pass (its figures and end time), and
// logs to stderr. It blocks; the read of stdin may outlive it, so the
// process should exit once it returns.
func RunEngineProcess(ctx context.Context, spec string, stdin io.Reader, stdout, stderr io.Writer) error {
	var s engineSpec
	if err := json.Unmarshal([]byte(spec), &s); err != nil {
		return fmt.Errorf("hollow engine: decode %s: %w", EnvEngine, err)
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

// startEngine starts engine candidate id in its own process
// (Config.EngineCommand) and returns once it is ready (it has its client;
// it campaigns on its own). Its stderr goes to Dir/<id>.log.
func (c *Cluster) startEngine(ctx context.Context, id string) (*Node, error) {
	spec, err := json.Marshal(engineSpec{Store: c.cfg.Store, Prefix: c.cfg.Prefix, ID: id, TTL: c.cfg.TTL, MoveGrace: c.cfg.MoveGrace})
	if err != nil {
		return nil, fmt.Errorf("hollow %s: %w", id, err)
	}
	n := &Node{ID: id, logPath: filepath.Join(c.cfg.Dir, id+".log"), done: make(chan struct{})}
	logf, err := os.Create(n.logPath)
	if err != nil {
		return nil, fmt.Errorf("hollow %s: %w", id, err)
	}
	defer logf.Close()
	n.cmd = exec.Command(c.cfg.EngineCommand[0], c.cfg.EngineCommand[1:]...)
	n.cmd.Env = append(os.Environ(), EnvEngine+"="+string(spec))
	n.cmd.Stderr = logf
	// The engine dies with this process: SIGKILL as parent-death signal,
	// and its stdin ends.
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if n.stdin, err = n.cmd.StdinPipe(); err != nil {
		return nil, fmt.Errorf("hollow %s: %w", id, err)
	}
	stdout, err := n.cmd.StdoutPipe()
	if err != nil {
		n.stdin.Close()
		return nil, fmt.Errorf("hollow %s: %w", id, err)
	}
	if err := n.cmd.Start(); err != nil {
		n.stdin.Close()
		return nil, fmt.Errorf("hollow %s: start %s: %w", id, c.cfg.EngineCommand[0], err)
	}
	ready := make(chan struct{})
	go c.follow(n, stdout, ready)
	select {
	case <-ready:
		return n, nil
	case <-n.done:
		n.stdin.Close()
		return nil, fmt.Errorf("hollow %s: exited before it was ready (%v); %s", id, n.err, n.logTail())
	case <-ctx.Done():
		n.cmd.Process.Kill()
		<-n.done
		n.stdin.Close()
		return nil, fmt.Errorf("hollow %s: not ready: %w", id, ctx.Err())
	}
}

// follow reads an engine process's lines until it ends (ready is closed at
// its first Ready line), then waits for it; n.done closes after that.
func (c *Cluster) follow(n *Node, stdout io.Reader, ready chan struct{}) {
	defer close(n.done)
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		var l engineLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			c.cfg.Logger.Warn("hollow engine: a line that is not its own", "node", n.ID, "line", sc.Text())
			continue
		}
		switch {
		case l.Ready && ready != nil:
			close(ready)
			ready = nil
		case l.Pass != nil:
			c.mu.Lock()
			c.passes = append(c.passes, Pass{PassStats: *l.Pass, Engine: n.ID, At: l.At, Since: l.Since, CPU: l.CPU, RunDelay: l.RunDelay})
			c.lastPass[n.ID] = l.At
			c.mu.Unlock()
		}
	}
	n.err = n.cmd.Wait()
}

// stopEngine waits for an engine process told to stop (SIGTERM), kills it
// after grace, and says why it did not end well (a kill, an exit status
// other than 0; a lost node's end is none of them).
func (n *Node) stopEngine(grace time.Duration) error {
	defer n.stdin.Close()
	var err error
	select {
	case <-n.done:
	case <-time.After(grace):
		n.cmd.Process.Kill()
		<-n.done
		err = fmt.Errorf("hollow %s: still running %s after SIGTERM; killed", n.ID, grace)
	}
	if n.lost.Load() {
		return nil
	}
	if err == nil && n.err != nil {
		err = fmt.Errorf("hollow %s: %w", n.ID, n.err)
	}
	if err != nil {
		return fmt.Errorf("%w; %s", err, n.logTail())
	}
	return nil
}

// logTail returns the end of an engine process's log, to explain its end.
func (n *Node) logTail() string {
	b, err := os.ReadFile(n.logPath)
	if err != nil {
		return fmt.Sprintf("its log: %v", err)
	}
	const tail = 4096
	if len(b) > tail {
		b = b[len(b)-tail:]
	}
	return fmt.Sprintf("the end of its log %s:\n%s", n.logPath, b)
}

// procTimes sums the time this process's threads have spent on a CPU and
// waiting for one (run-queue delay), from /proc/self/task/*/schedstat;
// threads it cannot read count for nothing.
func procTimes() (cpu, delay time.Duration) {
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, t := range tasks {
		b, err := os.ReadFile(filepath.Join("/proc/self/task", t.Name(), "schedstat"))
		if err != nil {
			continue
		}
		f := strings.Fields(string(b))
		if len(f) < 2 {
			continue
		}
		c, _ := strconv.ParseInt(f[0], 10, 64)
		d, _ := strconv.ParseInt(f[1], 10, 64)
		cpu += time.Duration(c)
		delay += time.Duration(d)
	}
	return cpu, delay
}
