package lbtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Nginx is a real nginx (master + one worker, `daemon off;`) started by a
// test with every path it writes (pid, error log, temp dirs) in a temp dir.
// Its methods are safe for concurrent use.
type Nginx struct {
	// Dir holds nginx.conf, the pid file, the error log and temp dirs.
	Dir string
	// Config is Dir/nginx.conf.
	Config string

	bin    string
	cmd    *exec.Cmd
	exited chan struct{}
	out    *syncBuffer
	once   sync.Once
}

// NginxConfig returns a complete nginx.conf for a server kept under dir whose
// http block contains httpBlock (server blocks, upstreams…).
func NginxConfig(dir, httpBlock string) string {
	return fmt.Sprintf(`daemon off;
master_process on;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path %[1]s/client_body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
%[2]s
}
`, dir, httpBlock)
}

// NginxBackend returns a server block listening on addr that answers every
// request with "NAME on ADDR\n" and the header X-Backend: NAME, as the
// example nginx@.service instances do.
func NginxBackend(name, addr string) string {
	return fmt.Sprintf(`    server {
        listen %[2]s;
        default_type text/plain;
        add_header X-Backend %[1]q always;
        location / { return 200 "%[1]s on %[2]s\n"; }
    }
`, name, addr)
}

// StartNginx writes NginxConfig(dir, httpBlock) into a temp dir, starts nginx
// on it and waits until it accepts connections on listen. It is stopped when
// t ends.
func StartNginx(t testing.TB, httpBlock, listen string) *Nginx {
	t.Helper()
	bin := Need(t, "nginx")
	dir := t.TempDir()
	n := &Nginx{Dir: dir, Config: filepath.Join(dir, "nginx.conf"), bin: bin, exited: make(chan struct{}), out: &syncBuffer{}}
	writeFile(t, n.Config, []byte(NginxConfig(dir, httpBlock)))
	n.cmd = exec.Command(bin, "-p", dir, "-e", filepath.Join(dir, "error.log"), "-c", n.Config)
	n.cmd.Stdout, n.cmd.Stderr = n.out, n.out
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := n.cmd.Start(); err != nil {
		t.Fatalf("lbtest: start nginx -c %s: %v", n.Config, err)
	}
	go func() {
		n.cmd.Wait()
		close(n.exited)
	}()
	t.Cleanup(n.Stop)
	if err := waitListening(listen, 10*time.Second, n.exited); err != nil {
		t.Fatalf("lbtest: nginx -c %s: %v\n%s%s", n.Config, err, n.out.String(), n.ErrorLog())
	}
	return n
}

// StartNginxBackend starts an nginx that answers as NginxBackend(name, addr).
func StartNginxBackend(t testing.TB, name, addr string) *Nginx {
	t.Helper()
	return StartNginx(t, NginxBackend(name, addr), addr)
}

// Pid returns the master process id.
func (n *Nginx) Pid() int { return n.cmd.Process.Pid }

// Reload asks the master to re-read its config (SIGHUP). A config that fails
// to parse leaves the running workers serving.
func (n *Nginx) Reload() error {
	if err := n.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		return fmt.Errorf("reload nginx %d: %w", n.Pid(), err)
	}
	return nil
}

// ReloadCmd returns a shell command that reloads this nginx, for use as a
// render resource's reload_cmd.
func (n *Nginx) ReloadCmd() string { return fmt.Sprintf("kill -HUP %d", n.Pid()) }

// CheckCmd returns a shell command that validates a staged nginx.conf (as a
// whole file, with this server's prefix), for a render check_cmd.
func (n *Nginx) CheckCmd() string {
	return fmt.Sprintf("%s -t -q -p %s -e %s -c {{.src}}", n.bin, n.Dir, filepath.Join(n.Dir, "error.log"))
}

// ErrorLog returns the content of the error log.
func (n *Nginx) ErrorLog() string {
	b, _ := os.ReadFile(filepath.Join(n.Dir, "error.log"))
	return strings.TrimSpace(string(b))
}

// Stop stops nginx (SIGTERM to its process group, SIGKILL after 5 s) and
// waits for it. Safe to call twice.
func (n *Nginx) Stop() {
	n.once.Do(func() { stopGroup(n.cmd, n.exited) })
}
