package process

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// guard leads a run's process group. It gets SIGUSR1 when the executor's
// spawning thread dies (the agent died) and kills its whole group then.
type guard struct {
	cmd  *exec.Cmd
	pgid int
	done chan struct{}
}

func (r *run) startGuard() (*guard, error) {
	argv := r.e.opts.Guard
	cmd := exec.Command(argv[0], argv[1:]...)
	if err := r.e.sp.start(cmd, 0, syscall.SIGUSR1); err != nil {
		return nil, fmt.Errorf("unit %s: guard: %w", r.spec.Name, err)
	}
	g := &guard{cmd: cmd, pgid: cmd.Process.Pid, done: make(chan struct{})}
	// Owned by the run: kill waits for it.
	go func() {
		defer close(g.done)
		cmd.Wait()
	}()
	return g, nil
}

// members returns the group's processes other than the guard and its sleep.
func (g *guard) members() []int {
	var out []int
	for _, pid := range groupMembers(g.pgid) {
		if pid == g.pgid || g.isGuardChild(pid) {
			continue
		}
		out = append(out, pid)
	}
	return out
}

func (g *guard) isGuardChild(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	f := statFields(b)
	return len(f) > 1 && f[1] == strconv.Itoa(g.pgid)
}

// terminate sends SIGTERM to the group, waits up to timeout for it to be
// empty, then sends SIGKILL (calling onKill first).
func (g *guard) terminate(timeout time.Duration, onKill func()) {
	if err := syscall.Kill(-g.pgid, syscall.SIGTERM); err != nil {
		return
	}
	if waitGroupGone(g.pgid, timeout) {
		g.kill()
		return
	}
	onKill()
	g.kill()
}

// kill sends SIGKILL to the whole group and waits for the guard to be reaped
// and the group to be gone (bounded: a zombie reaped by nobody must not hang
// a stop).
func (g *guard) kill() {
	syscall.Kill(-g.pgid, syscall.SIGKILL)
	<-g.done
	waitGroupGone(g.pgid, 5*time.Second)
}

// waitGroupGone polls until no process is left in group pgid.
func waitGroupGone(pgid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for d := 5 * time.Millisecond; ; d = min(2*d, 200*time.Millisecond) {
		if err := syscall.Kill(-pgid, 0); errors.Is(err, syscall.ESRCH) {
			return true
		}
		if len(groupMembers(pgid)) == 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(d)
	}
}

// groupMembers lists the live (non-zombie) processes of group pgid.
func groupMembers(pgid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	want := strconv.Itoa(pgid)
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		f := statFields(b)
		// f[0]=state f[1]=ppid f[2]=pgrp
		if len(f) > 2 && f[2] == want && f[0] != "Z" {
			out = append(out, pid)
		}
	}
	return out
}

// statFields returns the fields of /proc/PID/stat after the command name.
func statFields(b []byte) []string {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil
	}
	var out []string
	for _, f := range bytes.Fields(b[i+1:]) {
		out = append(out, string(f))
	}
	return out
}
