package process

import (
	"fmt"
	"os/exec"
	"runtime"
	"syscall"
)

// spawner starts processes from one dedicated, locked OS thread. The kernel
// sends a child its parent-death signal when the thread that forked it ends,
// not the process, so every child must be forked by a thread that lives as
// long as the executor: this one. When the executor closes, the goroutine
// returns without unlocking, which ends the thread (and signals any child
// that is, against the rules, still alive).
type spawner struct {
	reqs chan spawnReq
	done chan struct{}
}

type spawnReq struct {
	cmd  *exec.Cmd
	errc chan error
}

func newSpawner() *spawner {
	s := &spawner{reqs: make(chan spawnReq), done: make(chan struct{})}
	ready := make(chan struct{})
	go func() {
		defer close(s.done)
		runtime.LockOSThread()
		// Never unlocked: the thread ends with this goroutine.
		close(ready)
		for r := range s.reqs {
			r.errc <- r.cmd.Start()
		}
	}()
	<-ready
	return s
}

// start starts cmd in process group pgid (0: a new group led by cmd) with
// SIGKILL as its parent-death signal.
func (s *spawner) start(cmd *exec.Cmd, pgid int, deathSig syscall.Signal) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pgid = pgid
	cmd.SysProcAttr.Pdeathsig = deathSig
	errc := make(chan error, 1)
	s.reqs <- spawnReq{cmd: cmd, errc: errc}
	if err := <-errc; err != nil {
		return fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	return nil
}

// close stops the spawner thread; it must be called once, after every
// caller of start has returned and every child is gone.
func (s *spawner) close() {
	close(s.reqs)
	<-s.done
}
