package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/flotilla/flotilla/internal/cmdline"
)

// execChild is render -exec: a child started once every resource has
// rendered, signalled (or restarted) after each change, sent the SIGTERM,
// SIGINT and SIGHUP render gets, whose exit ends render with its status.
type execChild struct {
	command     string
	reloadSig   syscall.Signal // 0: restart the child on a change
	killTimeout time.Duration
	stdout      io.Writer
	log         *slog.Logger

	readyOnce sync.Once
	ready     chan struct{}
	changes   chan struct{}
}

func newExecChild(command string, reloadSig syscall.Signal, killTimeout time.Duration, stdout io.Writer, log *slog.Logger) *execChild {
	return &execChild{command: command, reloadSig: reloadSig, killTimeout: killTimeout, stdout: stdout, log: log,
		ready: make(chan struct{}), changes: make(chan struct{}, 1)}
}

// rendered says every resource has rendered once: the child may start.
func (x *execChild) rendered() { x.readyOnce.Do(func() { close(x.ready) }) }

// changed says a destination changed (never blocks; changes coalesce).
func (x *execChild) changed() {
	select {
	case x.changes <- struct{}{}:
	default:
	}
}

// execGrace is how long a started child is left alone before a signal.
const execGrace = time.Second

// signalNames are the signals -exec-reload-signal takes.
func parseSignal(name string) (syscall.Signal, error) {
	switch strings.TrimPrefix(strings.ToUpper(name), "SIG") {
	case "":
		return 0, nil
	case "HUP":
		return syscall.SIGHUP, nil
	case "USR1":
		return syscall.SIGUSR1, nil
	case "USR2":
		return syscall.SIGUSR2, nil
	case "INT":
		return syscall.SIGINT, nil
	case "TERM":
		return syscall.SIGTERM, nil
	case "QUIT":
		return syscall.SIGQUIT, nil
	}
	return 0, fmt.Errorf("unknown signal %q (want HUP, USR1, USR2, INT, TERM or QUIT)", name)
}

func (x *execChild) start() (*exec.Cmd, <-chan error, error) {
	cmd := exec.Command("/bin/sh", "-c", "exec "+x.command)
	cmd.Stdout, cmd.Stderr = x.stdout, os.Stderr
	// Its own process group: only the signals render forwards reach it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("exec %q: %w", x.command, err)
	}
	x.log.Info("exec: child started", "command", x.command, "pid", cmd.Process.Pid)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	return cmd, exited, nil
}

// stop ends the child: SIGTERM, then SIGKILL after killTimeout.
func (x *execChild) stop(cmd *exec.Cmd, exited <-chan error) error {
	cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(x.killTimeout)
	defer t.Stop()
	select {
	case err := <-exited:
		return err
	case <-t.C:
		x.log.Warn("exec: child did not stop; killing it", "pid", cmd.Process.Pid, "after", x.killTimeout)
		cmd.Process.Kill()
		return <-exited
	}
}

// exitStatus turns the child's end into render's: nil for 0, else an
// ExitError with its code (128+N for a child killed by signal N).
func exitStatus(err error) error {
	if err == nil {
		return nil
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return &cmdline.ExitError{Code: 128 + int(ws.Signal())}
		}
		return &cmdline.ExitError{Code: ee.ExitCode()}
	}
	return err
}

// run starts the child once rendered, then supervises it until it exits
// (its status is the result) or ctx ends (the child is stopped first).
func (x *execChild) run(ctx context.Context) error {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	select {
	case <-x.ready:
	case <-ctx.Done():
		return nil
	}
	// The child starts on the files as they are: changes so far are in.
	select {
	case <-x.changes:
	default:
	}
	cmd, exited, err := x.start()
	if err != nil {
		return err
	}
	// A child is not signalled in its first execGrace (it may not handle
	// the signal yet: haproxy's master dies of a SIGUSR2 that early): a
	// change then is signalled when the grace ends.
	startedAt := time.Now()
	var graceEnd <-chan time.Time
	forward := func(s os.Signal) {
		x.log.Info("exec: forwarding signal", "signal", s, "pid", cmd.Process.Pid)
		cmd.Process.Signal(s)
	}
	for {
		select {
		case err := <-exited:
			x.log.Info("exec: child exited", "err", err)
			return exitStatus(err)
		case s := <-sigs:
			forward(s)
		case <-graceEnd:
			graceEnd = nil
			x.changed()
		case <-x.changes:
			if d := execGrace - time.Since(startedAt); d > 0 {
				if graceEnd == nil {
					graceEnd = time.After(d)
				}
				continue
			}
			if x.reloadSig != 0 {
				x.log.Info("exec: files changed; signalling the child", "signal", x.reloadSig)
				cmd.Process.Signal(x.reloadSig)
				continue
			}
			x.log.Info("exec: files changed; restarting the child")
			if err := x.stop(cmd, exited); err != nil {
				x.log.Info("exec: child stopped", "err", err)
			}
			if cmd, exited, err = x.start(); err != nil {
				return err
			}
			startedAt = time.Now()
		case <-ctx.Done():
			// render stops (SIGTERM/SIGINT, or a failure): the signal that
			// stopped it goes to the child, else SIGTERM; its status is ours.
			sent := false
			for more := true; more; {
				select {
				case s := <-sigs:
					forward(s)
					sent = true
				default:
					more = false
				}
			}
			if !sent {
				forward(syscall.SIGTERM)
			}
			t := time.NewTimer(x.killTimeout)
			defer t.Stop()
			select {
			case err := <-exited:
				return exitStatus(err)
			case <-t.C:
				x.log.Warn("exec: child did not stop; killing it", "pid", cmd.Process.Pid, "after", x.killTimeout)
				cmd.Process.Kill()
				return exitStatus(<-exited)
			}
		}
	}
}
