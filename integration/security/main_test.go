// Package security tests flotilla's three binaries against a hostile or
// locked-down world: etcd with TLS client certificates and with
// username/password authentication, secrets that must not show in logs or in
// `ps`, hostile values and names that must never reach a shell or escape a
// directory, and files that must have their requested mode from the first
// byte.
package security

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/testmain"
)

func TestMain(m *testing.M) { testmain.Run(m, "announce", "render", "scheduler") }

// bin returns the path of a binary built by TestMain.
func bin(name string) string { return testmain.Bin(name) }

// syncBuf collects a process's output while it runs.
type syncBuf = testmain.SyncBuffer

// proc is a long-running binary started by a test, stopped at cleanup.
type proc struct {
	cmd  *exec.Cmd
	out  *syncBuf
	done chan struct{}
}

func start(t testing.TB, env []string, argv ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(argv[0], argv[1:]...), out: &syncBuf{}, done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("--- %s output:\n%s", filepath.Base(argv[0]), p.out.String())
		}
	})
	return p
}

func (p *proc) stop() {
	select {
	case <-p.done:
	default:
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
}

// stopGroup stops an `announce --detach` keeper left in process group pg:
// SIGTERM (it revokes its lease), then SIGKILL if it is still there after 5 s
// (an error: a keeper must obey SIGTERM).
func stopGroup(t testing.TB, pg int) {
	syscall.Kill(-pg, syscall.SIGTERM)
	for i := 0; i < 100 && syscall.Kill(-pg, 0) == nil; i++ {
		time.Sleep(50 * time.Millisecond)
	}
	if syscall.Kill(-pg, 0) == nil {
		t.Errorf("process group %d (an announce --detach keeper) survived SIGTERM for 5s", pg)
		syscall.Kill(-pg, syscall.SIGKILL)
	}
}

// cmdline returns the process's command line as `ps` shows it.
func (p *proc) cmdline() string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.cmd.Process.Pid))
	return strings.ReplaceAll(string(b), "\x00", " ")
}

// eventually polls cond until it returns nil or limit (a bound that only
// detects a hang) passes.
func eventually(t testing.TB, limit time.Duration, what string, cond func() error) {
	t.Helper()
	testmain.Eventually(t, limit, 50*time.Millisecond, what, cond)
}

func ctxFor(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// confdir writes a render confdir with one resource whose template lists
// every key under prefix, and returns it with the dest path.
func confdir(t testing.TB, prefix, extraTOML string) (dir, dest string) {
	t.Helper()
	dir = t.TempDir()
	for _, d := range []string{"conf.d", "templates"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dest = filepath.Join(dir, "out", "app.cfg")
	os.MkdirAll(filepath.Dir(dest), 0o755)
	toml := fmt.Sprintf("[template]\nsrc = \"app.tmpl\"\ndest = %q\nkeys = [%q]\n%s\n", dest, prefix, extraTOML)
	if err := os.WriteFile(filepath.Join(dir, "conf.d", "app.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	tmpl := fmt.Sprintf("{{range gets %q}}{{.Key}}={{.Value}}\n{{end}}", prefix+"/*")
	if err := os.WriteFile(filepath.Join(dir, "templates", "app.tmpl"), []byte(tmpl), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, dest
}
