package lbtest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Haproxy is a real haproxy in master-worker mode (`haproxy -W -db -f CFG`)
// started by a test. Its methods are safe for concurrent use.
type Haproxy struct {
	// Config is the configuration file haproxy reads (at start and on reload).
	Config string
	// Log is the file that receives haproxy's stdout and stderr.
	Log string

	cmd    *exec.Cmd
	exited chan struct{}
	mu     sync.Mutex // serializes reloads
	once   sync.Once
}

// StartHaproxy starts haproxy on cfg and waits until it accepts connections on
// listen (one of the cfg's bind addresses). It is stopped when t ends.
func StartHaproxy(t testing.TB, cfg, listen string) *Haproxy {
	t.Helper()
	bin := Need(t, "haproxy")
	h := &Haproxy{Config: cfg, Log: filepath.Join(t.TempDir(), "haproxy.log"), exited: make(chan struct{})}
	logf, err := os.Create(h.Log)
	if err != nil {
		t.Fatalf("lbtest: %v", err)
	}
	defer logf.Close()
	h.cmd = exec.Command(bin, "-W", "-db", "-f", cfg)
	h.cmd.Stdout, h.cmd.Stderr = logf, logf
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := h.cmd.Start(); err != nil {
		t.Fatalf("lbtest: start haproxy -f %s: %v", cfg, err)
	}
	go func() {
		h.cmd.Wait()
		close(h.exited)
	}()
	t.Cleanup(h.Stop)
	if err := waitListening(listen, 10*time.Second, h.exited); err != nil {
		t.Fatalf("lbtest: haproxy -f %s: %v\n%s", cfg, err, h.Output())
	}
	// The sockets are bound before the master is ready for signals: wait for
	// its first verdict, or a reload sent right away would be lost.
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(h.Output(), loadingMark+"success"); {
		if h.Exited() || time.Now().After(deadline) {
			t.Fatalf("lbtest: haproxy -f %s: master not ready\n%s", cfg, h.Output())
		}
		time.Sleep(5 * time.Millisecond)
	}
	return h
}

// Pid returns the master process id.
func (h *Haproxy) Pid() int { return h.cmd.Process.Pid }

// Reload asks the master to re-read Config and start new workers (SIGUSR2)
// and waits until the master says how loading went: an error when the new
// config failed to load (the running workers then keep serving the old one).
// Old workers finish their connections.
//
// Waiting matters: a SIGUSR2 that arrives while the master re-executes itself
// is lost, so reloads must not overlap. ReloadCmd waits the same way.
func (h *Haproxy) Reload() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	before := strings.Count(h.Output(), loadingMark)
	deadline := time.Now().Add(10 * time.Second)
	for {
		// A signal that reaches the master while it is (re-)executing is
		// lost: without a verdict within a second, signal again.
		if err := h.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
			return fmt.Errorf("reload haproxy %d: %w", h.Pid(), err)
		}
		for resend := time.Now().Add(time.Second); time.Now().Before(resend); {
			out := h.Output()
			if strings.Count(out, loadingMark) > before {
				if strings.HasPrefix(out[strings.LastIndex(out, loadingMark)+len(loadingMark):], "failure") {
					return fmt.Errorf("reload haproxy %d: loading %s failed (old workers keep serving)", h.Pid(), h.Config)
				}
				return nil
			}
			time.Sleep(5 * time.Millisecond)
		}
		if h.Exited() || time.Now().After(deadline) {
			return fmt.Errorf("reload haproxy %d: no load result within 10s (exited: %v)", h.Pid(), h.Exited())
		}
	}
}

// loadingMark starts the master's "Loading success." / "Loading failure!" line.
const loadingMark = "Loading "

// ReloadCmd returns a shell command that reloads this haproxy as Reload does
// (signal, re-signal each second without a verdict, wait for the master's
// verdict; exit 1 when the config failed to load), for use as a render
// resource's reload_cmd.
func (h *Haproxy) ReloadCmd() string {
	return fmt.Sprintf(`n=$(grep -c %[3]q %[2]s); i=0; `+
		`while [ "$(grep -c %[3]q %[2]s)" -le "$n" ]; do `+
		`[ $((i %% 100)) -eq 0 ] && { kill -USR2 %[1]d || exit 1; }; `+
		`i=$((i+1)); [ $i -gt 1000 ] && exit 1; sleep 0.01; done; `+
		`! grep %[3]q %[2]s | tail -n 1 | grep -q failure`, h.Pid(), h.Log, loadingMark)
}

// CheckCmd returns a shell command that validates a staged config, for use as
// a render resource's check_cmd (`{{.src}}` is the staged file).
func (h *Haproxy) CheckCmd() string { return h.cmd.Path + " -c -q -f {{.src}}" }

// Exited reports whether the master process has exited.
func (h *Haproxy) Exited() bool {
	select {
	case <-h.exited:
		return true
	default:
		return false
	}
}

// Output returns what haproxy printed so far (its log goes to stderr with -db).
func (h *Haproxy) Output() string {
	b, _ := os.ReadFile(h.Log)
	return string(b)
}

// Stop stops haproxy (SIGTERM, then SIGKILL to its process group after 5 s)
// and waits for it. Safe to call twice.
func (h *Haproxy) Stop() {
	h.once.Do(func() { stopGroup(h.cmd, h.exited) })
}

// stopGroup terminates cmd's process group and waits for exited.
func stopGroup(cmd *exec.Cmd, exited <-chan struct{}) {
	pgid := cmd.Process.Pid
	syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		syscall.Kill(-pgid, syscall.SIGKILL)
		<-exited
	}
	syscall.Kill(-pgid, syscall.SIGKILL) // stray workers, if any
}

// HaproxyServer is one `server` line of a config made by HaproxyConfig; Name
// is passed through ServerName.
type HaproxyServer struct {
	Name, Addr string
}

// HaproxyConfig returns a minimal, valid haproxy configuration: one HTTP
// `listen` section named app bound to bind, balancing round-robin across
// servers with health checks every 200ms, and redispatching a request whose
// server fails. With no servers every request gets a 503.
func HaproxyConfig(bind string, servers ...HaproxyServer) string {
	var b strings.Builder
	fmt.Fprintf(&b, `global
    log stderr format raw local0 notice
defaults
    mode http
    log global
    option redispatch
    retries 3
    timeout connect 500ms
    timeout client 10s
    timeout server 10s
listen app
    bind %s
    balance roundrobin
`, bind)
	sorted := append([]HaproxyServer(nil), servers...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	for _, s := range sorted {
		fmt.Fprintf(&b, "    server %s %s check inter 200ms fall 1 rise 1\n", ServerName(s.Name), s.Addr)
	}
	return b.String()
}

// ServerName turns name into a valid haproxy server name: haproxy accepts
// only letters, digits and "-_.:" ("nginx@1.service" → "nginx_1.service").
func ServerName(name string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', strings.ContainsRune("-_.:", r):
			return r
		}
		return '_'
	}, name)
}

// WriteHaproxyConfig writes HaproxyConfig(bind, servers…) into a new file in
// t's temp dir and returns its path.
func WriteHaproxyConfig(t testing.TB, bind string, servers ...HaproxyServer) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	writeFile(t, path, []byte(HaproxyConfig(bind, servers...)))
	return path
}

// CheckHaproxyConfig runs `haproxy -c -f path` and returns its output as the
// error when the file is not valid.
func CheckHaproxyConfig(path string) error {
	out, err := exec.Command("haproxy", "-c", "-f", path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("haproxy -c -f %s: %w: %s", path, err, bytes.TrimSpace(out))
	}
	return nil
}

// syncBuffer is a bytes.Buffer safe for concurrent writes and reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
