package process

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/flotilla/flotilla/internal/executor"
)

// run is one start of a unit: its lifecycle goroutine runs until the unit is
// stopped or ends for good (restarts included).
type run struct {
	e       *Executor
	spec    executor.Spec
	svc     *service
	stopReq chan struct{}
	stopped sync.Once
	done    chan struct{}

	mu    sync.Mutex
	state executor.State
	// pgid is the running attempt's process group (0 between attempts);
	// killed is set by kill.
	pgid   int
	killed bool
}

// kill requests a stop that skips ExecStop and SIGKILLs the group at once.
func (r *run) kill() {
	r.mu.Lock()
	r.killed = true
	pgid := r.pgid
	r.mu.Unlock()
	r.requestStop()
	if pgid > 0 {
		syscall.Kill(-pgid, syscall.SIGKILL)
	}
}

func (r *run) wasKilled() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.killed
}

func (r *run) finished() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

func (r *run) requestStop() { r.stopped.Do(func() { close(r.stopReq) }) }

func (r *run) stopRequested() bool {
	select {
	case <-r.stopReq:
		return true
	default:
		return false
	}
}

// stop asks the lifecycle to stop and waits for it to end.
func (r *run) stop(ctx context.Context) error {
	r.requestStop()
	select {
	case <-r.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop %s: %w", r.spec.Name, ctx.Err())
	}
}

func (r *run) setState(active, sub string) {
	r.mu.Lock()
	changed := r.state.Active != active || r.state.Sub != sub
	r.state = executor.State{Load: "loaded", Active: active, Sub: sub}
	r.mu.Unlock()
	if changed {
		r.e.notify()
	}
}

func (r *run) getState() executor.State {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.state
}

// result of one attempt.
type result int

const (
	success result = iota
	failure
)

func (r *run) lifecycle() {
	name := r.spec.Name
	logFile, err := os.OpenFile(r.e.logPath(name), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		r.e.log.Error("open unit log", "unit", name, "err", err)
		r.setState("failed", "failed")
		return
	}
	defer logFile.Close()
	var starts []time.Time
	for {
		if !r.allowStart(&starts) {
			logf(logFile, name, "Start request repeated too quickly (StartLimitBurst=%d within StartLimitIntervalSec=%s)",
				r.svc.startLimitBurst, r.svc.startLimitInterval)
			logf(logFile, name, "Failed with result 'start-limit-hit'.")
			r.setState("failed", "failed")
			return
		}
		res := r.attempt(logFile)
		if r.stopRequested() {
			r.setState("inactive", "dead")
			return
		}
		restart := r.svc.restart == "always" || (r.svc.restart == "on-failure" && res == failure)
		if !restart {
			if res == failure {
				r.setState("failed", "failed")
			} else {
				r.setState("inactive", "dead")
			}
			return
		}
		r.setState("activating", "auto-restart")
		logf(logFile, name, "scheduling restart in %s", r.svc.restartSec)
		t := time.NewTimer(r.svc.restartSec)
		select {
		case <-t.C:
		case <-r.stopReq:
			t.Stop()
			r.setState("inactive", "dead")
			return
		}
	}
}

// allowStart applies the start rate limit to one more start: starts holds
// the times of earlier starts of this run (a new Start, like systemd's
// reset-failed, begins afresh).
func (r *run) allowStart(starts *[]time.Time) bool {
	interval := r.svc.startLimitInterval
	if interval <= 0 || r.svc.startLimitBurst <= 0 {
		return true
	}
	now := time.Now()
	kept := (*starts)[:0]
	for _, t := range *starts {
		if now.Sub(t) < interval {
			kept = append(kept, t)
		}
	}
	*starts = kept
	if len(kept) >= r.svc.startLimitBurst {
		return false
	}
	*starts = append(*starts, now)
	return true
}

// attempt runs the unit once, from ExecStartPre to ExecStopPost.
func (r *run) attempt(logFile *os.File) result {
	name := r.spec.Name
	env, err := r.environment()
	if err != nil {
		logf(logFile, name, "%v", err)
		return failure
	}
	g, err := r.startGuard()
	if err != nil {
		logf(logFile, name, "%v", err)
		return failure
	}
	defer g.kill()
	r.setGroup(g.pgid)
	defer r.setGroup(0)
	x := &execCtx{r: r, env: env, log: logFile, pgid: g.pgid}

	logf(logFile, name, "Starting %s", name)
	res, main := r.startPhase(x)
	started := false
	if res == success && !r.stopRequested() {
		started = true
		res = r.runPhase(x, g, main)
	}
	r.stopPhase(x, g, main, started)
	if res == failure {
		logf(logFile, name, "%s failed", name)
	} else {
		logf(logFile, name, "Stopped %s", name)
	}
	return res
}

// setGroup records the running attempt's process group (0: none), and kills
// it at once when a kill came before it existed.
func (r *run) setGroup(pgid int) {
	r.mu.Lock()
	r.pgid = pgid
	killed := r.killed
	r.mu.Unlock()
	if pgid > 0 && killed {
		syscall.Kill(-pgid, syscall.SIGKILL)
	}
}

// mainProcess is a simple service's main process; its Wait runs on a
// goroutine of its own, and the attempt receives its result once.
type mainProcess struct {
	cmd    *exec.Cmd
	done   chan error
	exited bool // done was received
}

// startPhase runs ExecStartPre, the start (ExecStart of a oneshot or a
// forking service; the main process of a simple one, returned) and
// ExecStartPost, each stopping at the first failure not ignored.
func (r *run) startPhase(x *execCtx) (result, *mainProcess) {
	svc := r.svc
	r.setState("activating", "start-pre")
	res := x.runAll(svc.pre, svc.startTimeout)
	if res != success || r.stopRequested() {
		return res, nil
	}
	var main *mainProcess
	switch svc.typ {
	case "oneshot":
		r.setState("activating", "start")
		res = x.runAll(svc.start, svc.startTimeout)
	case "forking":
		r.setState("activating", "start")
		res = x.runAll(svc.start[:1], svc.startTimeout)
	default: // simple
		cmd, err := x.startCmd(context.Background(), svc.start[0])
		if err != nil {
			logf(x.log, r.spec.Name, "%v", err)
			return failure, nil
		}
		main = &mainProcess{cmd: cmd, done: make(chan error, 1)}
		// Owned by the attempt: it waits for done before returning.
		go func() { main.done <- cmd.Wait() }()
	}
	if res != success || r.stopRequested() {
		return res, main
	}
	r.setState("activating", "start-post")
	return x.runAll(svc.post, svc.startTimeout), main
}

// runPhase is the started unit: until its main process ends (simple), its
// process group empties (forking) or a stop comes (RemainAfterExit=yes).
func (r *run) runPhase(x *execCtx, g *guard, main *mainProcess) result {
	name := r.spec.Name
	switch {
	case main != nil:
		r.setState("active", "running")
		logf(x.log, name, "Started %s", name)
		select {
		case err := <-main.done:
			main.exited = true
			if err == nil {
				logf(x.log, name, "main process exited, status=0/SUCCESS")
				return success
			}
			logf(x.log, name, "main process exited: %v", exitStatus(err))
			if !r.svc.start[0].ignoreFailure {
				return failure
			}
		case <-r.stopReq:
		}
	case r.svc.typ == "forking":
		r.setState("active", "running")
		logf(x.log, name, "Started %s", name)
		r.waitGroupEmpty(g)
	case r.svc.remain:
		r.setState("active", "exited")
		logf(x.log, name, "Started %s", name)
		<-r.stopReq
	default:
		logf(x.log, name, "Finished %s", name)
	}
	return success
}

// stopPhase stops the unit: ExecStop (only after a successful start), then
// SIGTERM to the group (SIGKILL after TimeoutStopSec), then ExecStopPost.
// A kill (fencing) skips ExecStop.
func (r *run) stopPhase(x *execCtx, g *guard, main *mainProcess, started bool) {
	name, svc := r.spec.Name, r.svc
	r.setState("deactivating", "stop")
	if r.wasKilled() {
		logf(x.log, name, "killed (fencing): SIGKILL to the group, ExecStop skipped")
		started = false
		syscall.Kill(-g.pgid, syscall.SIGKILL)
	}
	if started {
		if main != nil && !main.exited {
			x.mainPID = main.cmd.Process.Pid
		}
		for _, c := range svc.stop {
			x.runCmd(c, svc.stopTimeout)
		}
	}
	r.setState("deactivating", "stop-sigterm")
	g.terminate(svc.stopTimeout, func() { r.setState("deactivating", "stop-sigkill") })
	if main != nil && !main.exited {
		if err := <-main.done; err != nil && started {
			logf(x.log, name, "main process ended: %v", exitStatus(err))
		}
	}
	r.setState("deactivating", "stop-post")
	x.pgid = 0
	for _, c := range svc.stopPost {
		x.runCmd(c, svc.stopTimeout)
	}
}

// waitGroupEmpty waits until no process but the guard is left in the group,
// or a stop is requested.
func (r *run) waitGroupEmpty(g *guard) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-r.stopReq:
			return
		case <-t.C:
			if len(g.members()) == 0 {
				return
			}
		}
	}
}

// environment builds the process environment: a minimal base, the machine
// facts (file and map), Environment=, then EnvironmentFile= (which wins, as
// in systemd).
func (r *run) environment() ([]string, error) {
	env := newEnv()
	for _, k := range []string{"PATH", "LANG", "HOME", "TZ"} {
		if v, ok := os.LookupEnv(k); ok {
			env.set(k, v)
		}
	}
	if _, ok := env.get("PATH"); !ok {
		env.set("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	for k, v := range r.spec.Env {
		env.set(k, v)
	}
	if r.spec.EnvFile != "" {
		vars, err := readEnvFile(r.spec.EnvFile)
		if err != nil {
			return nil, fmt.Errorf("unit %s: machine facts: %w", r.spec.Name, err)
		}
		env.merge(vars)
	}
	for _, kv := range r.svc.env {
		env.merge([][2]string{kv})
	}
	for _, f := range r.svc.envFiles {
		vars, err := readEnvFile(f.path)
		if err != nil {
			if f.optional && errors.Is(err, os.ErrNotExist) {
				continue
			}
			return nil, fmt.Errorf("unit %s: EnvironmentFile: %w", r.spec.Name, err)
		}
		env.merge(vars)
	}
	return env.list(), nil
}

// execCtx runs a unit's commands.
type execCtx struct {
	r       *run
	env     []string
	log     *os.File
	pgid    int // 0: each command in a new group of its own
	mainPID int
}

// command builds c's process, bound to ctx (its end kills the process).
func (x *execCtx) command(ctx context.Context, c command) (*exec.Cmd, error) {
	env := x.env
	if x.mainPID != 0 {
		env = append(append([]string(nil), env...), "MAINPID="+strconv.Itoa(x.mainPID))
	}
	path, argv, err := x.r.svc.argv(c, env)
	if err != nil {
		return nil, fmt.Errorf("unit %s: %q: %w", x.r.spec.Name, c.raw, err)
	}
	if len(argv) == 0 || path == "" {
		return nil, fmt.Errorf("unit %s: %q: empty command", x.r.spec.Name, c.raw)
	}
	lp, err := exec.LookPath(path)
	if err != nil {
		return nil, fmt.Errorf("unit %s: %q: %w", x.r.spec.Name, c.raw, err)
	}
	cmd := exec.CommandContext(ctx, lp)
	cmd.Args, cmd.Env, cmd.Dir, cmd.Stdout, cmd.Stderr = argv, env, x.r.svc.workDir, x.log, x.log
	return cmd, nil
}

func (x *execCtx) startCmd(ctx context.Context, c command) (*exec.Cmd, error) {
	cmd, err := x.command(ctx, c)
	if err != nil {
		return nil, err
	}
	if err := x.start(cmd); err != nil {
		return nil, err
	}
	return cmd, nil
}

func (x *execCtx) start(cmd *exec.Cmd) error {
	if err := x.r.e.sp.start(cmd, x.pgid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("unit %s: %w", x.r.spec.Name, err)
	}
	return nil
}

// runAll runs cmds in order, each bounded by timeout, and stops at the
// first failure not ignored (a command with the "-" prefix).
func (x *execCtx) runAll(cmds []command, timeout time.Duration) result {
	for _, c := range cmds {
		if err := x.runCmd(c, timeout); err != nil && !c.ignoreFailure {
			return failure
		}
	}
	return success
}

// killWait is how long a command killed at its timeout may take to be
// reaped before Wait gives up on it.
const killWait = 5 * time.Second

// runCmd runs one command to its end, killing it (and, when it has a group of
// its own, its group) after timeout. A failure is logged and returned.
func (x *execCtx) runCmd(c command, timeout time.Duration) error {
	name := x.r.spec.Name
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd, err := x.command(ctx, c)
	if err != nil {
		logf(x.log, name, "%v", err)
		return err
	}
	cmd.Cancel = func() error {
		logf(x.log, name, "%q timed out after %s, killing it", c.raw, timeout)
		return cmd.Process.Kill()
	}
	cmd.WaitDelay = killWait
	if err := x.start(cmd); err != nil {
		logf(x.log, name, "%v", err)
		return err
	}
	err = cmd.Wait()
	if x.pgid == 0 { // its own group: what it left behind goes too
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	if err != nil {
		prefix := ""
		if c.ignoreFailure {
			prefix = " (ignored)"
		}
		logf(x.log, name, "%q failed%s: %v", c.raw, prefix, exitStatus(err))
		return fmt.Errorf("unit %s: %q: %w", name, c.raw, err)
	}
	return nil
}

func exitStatus(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return "signal " + ws.Signal().String()
		}
		return fmt.Sprintf("status=%d/FAILURE", ee.ExitCode())
	}
	return err.Error()
}
