// Package etcdtest gives tests a fresh, real etcd: by default an embedded server
// (internal/embedetcd) started in well under a second, or, when the environment
// says so, Debian's etcd server binary or an external cluster.
//
//	FLOTILLA_TEST_ETCD_BIN=/usr/bin/etcd   each New starts that binary on free loopback ports
//	FLOTILLA_TEST_ENDPOINTS=http://…       each New uses that (scratch!) etcd; its keys are wiped
//
// It is test infrastructure: besides internal/store it is the only package that
// imports the etcd client, for administration (auth set-up, wiping) that
// flotilla itself never does.
package etcdtest

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/flotilla/flotilla/internal/embedetcd"
	"github.com/flotilla/flotilla/internal/store"
)

// Environment variables that choose the etcd under test.
const (
	EnvBinary    = "FLOTILLA_TEST_ETCD_BIN"
	EnvEndpoints = "FLOTILLA_TEST_ENDPOINTS"
)

// Mode says which kind of etcd a Server is.
type Mode string

// Modes.
const (
	Embedded Mode = "embedded"
	Binary   Mode = "binary"
	External Mode = "external"
)

// Option changes how New starts a server.
type Option func(*options)

type options struct {
	tls  *Certs
	mode Mode
}

// WithTLS serves clients over TLS with certs' server pair, requiring client
// certificates signed by certs' CA.
func WithTLS(certs *Certs) Option { return func(o *options) { o.tls = certs } }

// WithMode forces a mode regardless of the environment (e.g. Binary for a test
// that must kill a process).
func WithMode(m Mode) Option { return func(o *options) { o.mode = m } }

// Server is one real etcd member under test.
type Server struct {
	t       testing.TB
	mode    Mode
	name    string
	dataDir string
	client  string // host:port
	peer    string // host:port
	cluster string // initial-cluster, for members of a Cluster
	tls     *Certs
	emb     *embedetcd.Server
	cmd     *exec.Cmd
	waitErr chan error
	logPath string
	adminMu sync.Mutex
	admin   *clientv3.Client // made once by Admin
}

// ModeFromEnv returns the mode the environment asks for.
func ModeFromEnv() Mode {
	switch {
	case os.Getenv(EnvEndpoints) != "":
		return External
	case os.Getenv(EnvBinary) != "":
		return Binary
	}
	return Embedded
}

// New starts a fresh etcd for t and stops it when t ends.
func New(t testing.TB, opts ...Option) *Server {
	t.Helper()
	o := options{mode: ModeFromEnv()}
	for _, f := range opts {
		f(&o)
	}
	s := &Server{t: t, mode: o.mode, name: "default", tls: o.tls}
	switch o.mode {
	case External:
		if o.tls != nil {
			t.Skip("etcdtest: TLS needs a server started by the test; skipped with an external etcd")
		}
		s.wipe()
		return s
	case Binary:
		if BinaryPath() == "" {
			t.Skipf("etcdtest: no etcd binary (set %s or install etcd-server)", EnvBinary)
		}
	}
	s.dataDir = t.TempDir()
	addrs := freeAddrs(t, 2)
	s.client, s.peer = addrs[0], addrs[1]
	s.Start()
	t.Cleanup(s.Stop)
	return s
}

// BinaryPath returns the etcd binary to run in Binary mode: $FLOTILLA_TEST_ETCD_BIN,
// else etcd on PATH, else "".
func BinaryPath() string {
	if p := os.Getenv(EnvBinary); p != "" {
		return p
	}
	p, _ := exec.LookPath("etcd")
	return p
}

// Mode returns the kind of server.
func (s *Server) Mode() Mode { return s.mode }

// Endpoints returns the client URLs.
func (s *Server) Endpoints() []string {
	if s.mode == External {
		return strings.Split(os.Getenv(EnvEndpoints), ",")
	}
	scheme := "http"
	if s.tls != nil {
		scheme = "https"
	}
	return []string{scheme + "://" + s.client}
}

// Endpoint returns the first client URL.
func (s *Server) Endpoint() string { return s.Endpoints()[0] }

// Config returns a store configuration for this server (with client TLS when
// the server has it).
func (s *Server) Config() store.Config {
	cfg := store.Default()
	cfg.Endpoints = s.Endpoints()
	// Short enough that tests of "etcd is down" retry several times.
	cfg.DialTimeout = 3 * time.Second
	if s.tls != nil {
		cfg.CACert, cfg.Cert, cfg.Key = s.tls.CA, s.tls.ClientCert, s.tls.ClientKey
	}
	return cfg
}

// Client opens a store client to this server, closed when the test ends.
func (s *Server) Client() *store.Client {
	s.t.Helper()
	c, err := store.Open(context.Background(), s.Config())
	if err != nil {
		s.t.Fatalf("etcdtest: %v", err)
	}
	s.t.Cleanup(func() { c.Close() })
	return c
}

// Start starts (or restarts, on the same data dir and ports) the server and
// waits until it serves.
func (s *Server) Start() {
	s.t.Helper()
	switch s.mode {
	case External:
		s.t.Skip("etcdtest: cannot start an external etcd")
	case Embedded:
		opts := embedetcd.Options{Name: s.name, DataDir: s.dataDir, ClientAddr: s.client, PeerAddr: s.peer, Fast: true}
		if s.tls != nil {
			opts.TLS = embedetcd.TLS{CertFile: s.tls.ServerCert, KeyFile: s.tls.ServerKey, ClientCAFile: s.tls.CA}
		}
		if s.cluster != "" {
			s.t.Fatalf("etcdtest: embedded members of a cluster are started by NewCluster")
		}
		var err error
		for i := 0; i < 50; i++ { // the old listener may linger a moment after Stop
			s.emb, err = embedetcd.Start(context.Background(), opts)
			if err == nil {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		s.t.Fatalf("etcdtest: %v", err)
	case Binary:
		s.startBinary()
	}
}

func (s *Server) startBinary() {
	s.t.Helper()
	scheme := "http"
	if s.tls != nil {
		scheme = "https"
	}
	clientURL := scheme + "://" + s.client
	peerURL := "http://" + s.peer
	cluster := s.cluster
	if cluster == "" {
		cluster = s.name + "=" + peerURL
	}
	state := "new"
	if _, err := os.Stat(filepath.Join(s.dataDir, "member")); err == nil {
		state = "existing"
	}
	args := []string{
		"--name", s.name, "--data-dir", s.dataDir,
		"--listen-client-urls", clientURL, "--advertise-client-urls", clientURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", cluster, "--initial-cluster-state", state,
		"--initial-cluster-token", "etcdtest",
		"--heartbeat-interval", "25", "--election-timeout", "250",
		"--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn",
	}
	if s.tls != nil {
		args = append(args, "--cert-file", s.tls.ServerCert, "--key-file", s.tls.ServerKey,
			"--trusted-ca-file", s.tls.CA, "--client-cert-auth")
	}
	if s.logPath == "" {
		s.logPath = filepath.Join(s.dataDir, "..", s.name+".log")
	}
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		s.t.Fatalf("etcdtest: %v", err)
	}
	cmd := exec.Command(BinaryPath(), args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		s.t.Fatalf("etcdtest: start %s: %v", BinaryPath(), err)
	}
	logf.Close()
	s.cmd = cmd
	s.waitErr = make(chan error, 1)
	go func() { s.waitErr <- cmd.Wait() }()
	if s.cluster != "" {
		return // a cluster member waits for its peers; NewCluster waits for all
	}
	s.waitReady(10 * time.Second)
}

func (s *Server) waitReady(limit time.Duration) {
	s.t.Helper()
	deadline := time.Now().Add(limit)
	for {
		cfg := s.Config()
		cfg.DialTimeout = 500 * time.Millisecond
		c, err := store.Open(context.Background(), cfg)
		if err == nil {
			c.Close()
			return
		}
		select {
		case werr := <-s.waitErr:
			s.waitErr <- werr // for stop, which waits for the exit too
			log, _ := os.ReadFile(s.logPath)
			s.t.Fatalf("etcdtest: etcd exited: %v\n%s", werr, log)
		default:
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(s.logPath)
			s.t.Fatalf("etcdtest: etcd at %s not ready within %s: %v\n%s", s.client, limit, err, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop stops the server gracefully, keeping its data dir. Safe to call twice.
func (s *Server) Stop() { s.stop(syscall.SIGTERM) }

// Kill stops the server abruptly (SIGKILL for a binary; for an embedded
// server, an immediate close), keeping its data dir.
func (s *Server) Kill() { s.stop(syscall.SIGKILL) }

func (s *Server) stop(sig syscall.Signal) {
	switch {
	case s.emb != nil:
		s.emb.Close()
		s.emb = nil
	case s.cmd != nil:
		s.cmd.Process.Signal(sig)
		select {
		case <-s.waitErr:
		case <-time.After(10 * time.Second):
			s.cmd.Process.Kill()
			<-s.waitErr
		}
		s.cmd = nil
	}
}

// Running reports whether the server process (or embedded server) is up.
func (s *Server) Running() bool { return s.emb != nil || s.cmd != nil || s.mode == External }

// Admin returns a raw etcd client for test administration, made once and
// closed with the test.
func (s *Server) Admin() *clientv3.Client {
	s.t.Helper()
	s.adminMu.Lock()
	defer s.adminMu.Unlock()
	if s.admin != nil {
		return s.admin // it reconnects by itself across restarts
	}
	cfg := clientv3.Config{Endpoints: s.Endpoints(), DialTimeout: 3 * time.Second, Logger: zap.NewNop()}
	if s.tls != nil {
		tc, err := s.tls.ClientTLS()
		if err != nil {
			s.t.Fatal(err)
		}
		cfg.TLS = tc
	}
	c, err := clientv3.New(cfg)
	if err != nil {
		s.t.Fatalf("etcdtest: admin client: %v", err)
	}
	s.t.Cleanup(func() { c.Close() })
	s.admin = c
	return c
}

// EnableAuth creates user root with rootPassword, and user with password
// having read-write access to every key, then turns authentication on. It
// restores an external server's auth state at the end of the test.
func (s *Server) EnableAuth(rootPassword, user, password string) {
	s.t.Helper()
	// bcrypt (user add, auth) is slow under -race on a loaded machine.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := s.Admin()
	steps := []func() error{
		func() error { _, err := c.UserAdd(ctx, "root", rootPassword); return err },
		func() error { _, err := c.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := c.RoleAdd(ctx, "rw"); return err },
		func() error {
			_, err := c.RoleGrantPermission(ctx, "rw", "\x00", "\x00", clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := c.UserAdd(ctx, user, password); return err },
		func() error { _, err := c.UserGrantRole(ctx, user, "rw"); return err },
		func() error { _, err := c.AuthEnable(ctx); return err },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			s.t.Fatalf("etcdtest: enable auth, step %d: %v", i+1, err)
		}
	}
	if s.mode == External {
		s.t.Cleanup(func() {
			cfg := clientv3.Config{Endpoints: s.Endpoints(), Username: "root", Password: rootPassword, Logger: zap.NewNop()}
			rc, err := clientv3.New(cfg)
			if err != nil {
				return
			}
			defer rc.Close()
			rc.AuthDisable(context.Background())
			rc.UserDelete(context.Background(), user)
			rc.UserDelete(context.Background(), "root")
			rc.RoleDelete(context.Background(), "rw")
		})
	}
}

func (s *Server) wipe() {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := s.Admin().Delete(ctx, "\x00", clientv3.WithFromKey()); err != nil {
		s.t.Fatalf("etcdtest: wipe external etcd %s: %v", os.Getenv(EnvEndpoints), err)
	}
}

// freeAddr returns a loopback host:port that was free a moment ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	return freeAddrs(t, 1)[0]
}

// freeAddrs returns n distinct loopback host:ports that were free a moment
// ago: all are held open until the last is found, as a port closed at once
// may be handed out again by the next request.
func freeAddrs(t testing.TB, n int) []string {
	t.Helper()
	addrs := make([]string, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("etcdtest: free port: %v", err)
		}
		defer l.Close()
		addrs = append(addrs, l.Addr().String())
	}
	return addrs
}

// FreeAddr returns a loopback host:port that was free a moment ago.
func FreeAddr(t testing.TB) string { return freeAddr(t) }
