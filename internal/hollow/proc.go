package hollow

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// EnvProcess names the environment variable that makes a process started by
// Start one of the cluster's: its value is the process's role ("engine" or
// "agents"), and its spec (JSON) is the first line on its stdin. The
// program named by Config.Command checks it before anything else and, when
// it is set, hands over to RunProcess.
const EnvProcess = "FLOTILLA_HOLLOW_PROCESS"

// The roles of a cluster's processes.
const (
	roleEngine = "engine"
	roleAgents = "agents"
)

// ChildMain is for the start of the program Config.Command names (a test
// binary's TestMain): in a process Start re-executed it as (EnvProcess
// set), it runs RunProcess with the process's stdio until SIGTERM or an
// interrupt, and returns the exit code and true; elsewhere it returns at
// once, false.
func ChildMain() (code int, child bool) {
	role := os.Getenv(EnvProcess)
	if role == "" {
		return 0, false
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := RunProcess(ctx, role, os.Stdin, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1, true
	}
	return 0, true
}

// RunProcess is the body of a process that Start started: role is
// EnvProcess's value, and stdin's first line its spec. An engine process
// runs its engine candidate (RunEngine's doc says more); an agents process
// runs its share of the hollow machines at a lower priority (AgentNice).
// Either stops when ctx is done (the caller's SIGTERM) or stdin reaches its
// end (the parent closed it, or died). It blocks; the read of stdin may
// outlive it, so the process should exit once it returns.
func RunProcess(ctx context.Context, role string, stdin io.Reader, stdout, stderr io.Writer) error {
	in := bufio.NewReader(stdin)
	spec, err := in.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("hollow %s process: read its spec on stdin: %w", role, err)
	}
	switch role {
	case roleEngine:
		return runEngine(ctx, spec, in, stdout, stderr)
	case roleAgents:
		return runAgents(ctx, spec, in, stdout, stderr)
	}
	return fmt.Errorf("hollow: %s=%q: no such role", EnvProcess, role)
}

// proc is one child process of a cluster: an engine candidate, or an agents
// process running a share of the machines. Its stdin carries its spec (the
// first line), then, to an agents process, requests; its stdout carries
// JSON lines; its stderr goes to its log.
type proc struct {
	name    string
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	logPath string
	// err is how it ended (cmd.Wait's error), set before done closes.
	err  error
	done chan struct{}

	// An agents process's requests go one at a time (mu held from the
	// request to its reply); the reply comes on replies.
	mu      sync.Mutex
	replies chan agentsLine
}

// startProc starts Config.Command as the process name in role, writes spec
// (JSON) as its first line on stdin, and returns once handle says that a
// line of its stdout was its ready one. handle sees every line, in the
// goroutine that reads them. Its stderr goes to Dir/<name>.log.
func (c *Cluster) startProc(ctx context.Context, name, role string, spec any, handle func(p *proc, line []byte) (ready bool)) (*proc, error) {
	b, err := json.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("hollow %s: %w", name, err)
	}
	p := &proc{name: name, logPath: filepath.Join(c.cfg.Dir, name+".log"), done: make(chan struct{}), replies: make(chan agentsLine, 1)}
	logf, err := os.Create(p.logPath)
	if err != nil {
		return nil, fmt.Errorf("hollow %s: %w", name, err)
	}
	defer logf.Close()
	p.cmd = exec.Command(c.cfg.Command[0], c.cfg.Command[1:]...)
	p.cmd.Env = append(os.Environ(), EnvProcess+"="+role)
	p.cmd.Stderr = logf
	// The process dies with this one: SIGKILL as parent-death signal, and
	// its stdin ends.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		return nil, fmt.Errorf("hollow %s: %w", name, err)
	}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		p.stdin.Close()
		return nil, fmt.Errorf("hollow %s: %w", name, err)
	}
	if err := p.cmd.Start(); err != nil {
		p.stdin.Close()
		return nil, fmt.Errorf("hollow %s: start %s: %w", name, c.cfg.Command[0], err)
	}
	// The spec may be larger than a pipe holds: written while waiting.
	wrote := make(chan error, 1)
	go func() {
		_, err := p.stdin.Write(append(b, '\n'))
		wrote <- err
	}()
	ready := make(chan struct{})
	go p.follow(stdout, func(line []byte) bool { return handle(p, line) }, ready)
	select {
	case <-ready:
		<-wrote // read whole: the process answered after it
		return p, nil
	case <-p.done:
		p.stdin.Close()
		<-wrote
		return nil, fmt.Errorf("hollow %s: exited before it was ready (%v); %s", name, p.err, p.logTail())
	case <-ctx.Done():
		p.cmd.Process.Kill()
		<-p.done
		p.stdin.Close()
		<-wrote
		return nil, fmt.Errorf("hollow %s: not ready: %w", name, ctx.Err())
	}
}

// follow reads a process's lines until it ends, handing each to handle
// (ready is closed at the first that handle says is the ready one), then
// waits for it; p.done closes after that.
func (p *proc) follow(stdout io.Reader, handle func(line []byte) bool, ready chan struct{}) {
	defer close(p.done)
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		if handle(sc.Bytes()) && ready != nil {
			close(ready)
			ready = nil
		}
	}
	io.Copy(io.Discard, stdout) // past a line too long, so that it never blocks
	p.err = p.cmd.Wait()
}

// pid returns the process's id (0 before it started).
func (p *proc) pid() int {
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// wait waits until deadline for a process told to stop (SIGTERM, or the end
// of its stdin), kills it then, and says why it did not end well: a kill,
// an exit status other than 0; lost (killed on purpose) is none of them.
func (p *proc) wait(deadline time.Time, lost bool) error {
	defer p.stdin.Close()
	var err error
	select {
	case <-p.done:
	case <-time.After(time.Until(deadline)):
		p.cmd.Process.Kill()
		<-p.done
		err = fmt.Errorf("hollow %s: still running after it was told to stop; killed", p.name)
	}
	if lost {
		return nil
	}
	if err == nil && p.err != nil {
		err = fmt.Errorf("hollow %s: %w", p.name, p.err)
	}
	if err != nil {
		return fmt.Errorf("%w; %s", err, p.logTail())
	}
	return nil
}

// logTail returns the end of a process's log, to explain its end.
func (p *proc) logTail() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("its log: %v", err)
	}
	const tail = 4096
	if len(b) > tail {
		b = b[len(b)-tail:]
	}
	return fmt.Sprintf("the end of its log %s:\n%s", p.logPath, b)
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
