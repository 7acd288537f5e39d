package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/testmain"

	"github.com/flotilla/flotilla/internal/cmdline"
	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/store"
)

func TestMain(m *testing.M) { testmain.Run(m, "announce", "render") }

// binary returns the announce command built once for the subprocess tests.
func binary() string { return testmain.Bin("announce") }

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// proc is announce running as a real process.
type proc struct {
	cmd    *exec.Cmd
	stderr *os.File
	done   chan error
}

// start runs the announce binary with args and env (added to ours), in its
// own process group so that a test can signal the group.
func start(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	logf, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary(), args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = logf // a file, not a pipe: a --detach keeper may keep it open
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, stderr: logf, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("announce %q stderr:\n%s", args, b)
		}
	})
	return p
}

// wait returns the process's exit error, failing the test after limit.
func (p *proc) wait(t *testing.T, limit time.Duration) error {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err // for the cleanup
		return err
	case <-time.After(limit):
		t.Fatalf("announce did not exit within %s", limit)
		return nil
	}
}

// running reports whether the process has not exited.
func (p *proc) running() bool {
	select {
	case err := <-p.done:
		p.done <- err
		return false
	default:
		return true
	}
}

// waitKey polls until the key's presence is want, and returns how long it
// took; it fails the test after limit (a hang, not a speed assertion).
func waitKey(t *testing.T, c *store.Client, key string, want bool, limit time.Duration) (store.KV, time.Duration) {
	t.Helper()
	began := time.Now()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		kv, found, _, err := c.Get(ctx, key)
		cancel()
		if err == nil && found == want {
			return kv, time.Since(began)
		}
		if time.Since(began) > limit {
			t.Fatalf("key %s present=%v not reached within %s (last error: %v)", key, want, limit, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// processEtcd starts etcd as a process of its own (Debian's binary) when it
// is installed and the environment does not choose otherwise: it is stopped
// and restarted like a real one, and is not slowed by the race detector.
func processEtcd(t *testing.T) *etcdtest.Server {
	if etcdtest.ModeFromEnv() == etcdtest.Embedded && etcdtest.BinaryPath() != "" {
		return etcdtest.New(t, etcdtest.WithMode(etcdtest.Binary))
	}
	return etcdtest.New(t)
}

func env(s *etcdtest.Server) []string {
	return []string{"ANNOUNCE_ENDPOINTS=" + strings.Join(s.Endpoints(), ","), "NOTIFY_SOCKET=", "WATCHDOG_USEC="}
}

func TestBadInputExits2AndWritesNothing(t *testing.T) {
	srv := etcdtest.New(t)
	c := srv.Client()
	ep := "--endpoints=" + srv.Endpoint()
	tests := map[string]struct {
		args []string
		want string
	}{
		"no key":                 {args: []string{ep}, want: "missing KEY"},
		"relative key":           {args: []string{ep, "clusterstate/x", "v"}, want: "must start with '/'"},
		"directory key":          {args: []string{ep, "/clusterstate/", "v"}, want: "must not end with '/'"},
		"empty value":            {args: []string{ep, "/k", ""}, want: "empty value"},
		"blank value":            {args: []string{ep, "/k", "  "}, want: "empty value"},
		"no value no addr":       {args: []string{ep, "/k"}, want: "missing VALUE or --addr"},
		"addr without port":      {args: []string{ep, "--addr", "10.0.0.1", "/k"}, want: "want ip:port"},
		"addr port 0":            {args: []string{ep, "--addr", "10.0.0.1:0", "/k"}, want: "port 0"},
		"addr hostname":          {args: []string{ep, "--addr", "web:80", "/k"}, want: "want ip:port"},
		"addr bad port":          {args: []string{ep, "--addr", ":99999", "/k"}, want: "port 1-65535"},
		"ttl too short":          {args: []string{ep, "--ttl", "500ms", "/k", "v"}, want: "shortest lease is 1s"},
		"ttl fraction":           {args: []string{ep, "--ttl", "1500ms", "/k", "v"}, want: "whole seconds"},
		"unknown format":         {args: []string{ep, "--format", "xml", "--addr", "10.0.0.1:80", "/k"}, want: `format "xml"`},
		"bad ip spec":            {args: []string{ep, "--ip", "eth0", "--addr", ":80", "/k"}, want: "want route or iface:NAME"},
		"ip with full addr":      {args: []string{ep, "--ip", "route", "--addr", "10.0.0.1:80", "/k"}, want: "port alone"},
		"value and addr":         {args: []string{ep, "--addr", "10.0.0.1:80", "/k", "v"}, want: "not both"},
		"too many args":          {args: []string{ep, "/k", "host", "10.0.0.1:80"}, want: "too many arguments"},
		"bad check scheme":       {args: []string{ep, "--check", "udp://x:1", "/k", "v"}, want: `scheme "udp"`},
		"tcp check no port":      {args: []string{ep, "--check", "tcp://x", "/k", "v"}, want: "host:port"},
		"bad threshold":          {args: []string{ep, "--check", "tcp://x:1", "--check-threshold", "0", "/k", "v"}, want: "at least 1"},
		"unknown flag":           {args: []string{ep, "--nope", "/k", "v"}, want: "not defined"},
		"bad log format":         {args: []string{ep, "--log-format", "xml", "/k", "v"}, want: `--log-format "xml": want text or json`},
		"bad endpoint":           {args: []string{"--endpoints", "ftp://x:1", "/k", "v"}, want: `scheme "ftp"`},
		"delete no key":          {args: []string{ep, "--delete"}, want: "missing KEY"},
		"delete no value":        {args: []string{ep, "--delete", "/k"}, want: "--delete needs the registration's VALUE or --addr"},
		"withdraw no value":      {args: []string{ep, "--withdraw", "/k"}, want: "--withdraw needs the registration's VALUE or --addr"},
		"delete with ttl":        {args: []string{ep, "--delete", "--ttl", "5s", "/k", "v"}, want: "--ttl means nothing with --delete"},
		"delete with drain":      {args: []string{ep, "--delete", "--drain-timeout", "5s", "/k", "v"}, want: "--drain-timeout means nothing with --delete"},
		"withdraw with check":    {args: []string{ep, "--withdraw", "--check", "tcp://x:1", "/k", "v"}, want: "--check means nothing with --withdraw"},
		"withdraw and detach":    {args: []string{ep, "--withdraw", "--detach", "/k", "v"}, want: "exclude each other"},
		"detach-timeout alone":   {args: []string{ep, "--detach-timeout", "1s", "/k", "v"}, want: "--detach-timeout means nothing with announce without --detach"},
		"format with value":      {args: []string{ep, "--format", "json", "/k", "h 10.0.0.1:80"}, want: "--format shapes the value made from --addr"},
		"host with value":        {args: []string{ep, "--host", "h", "/k", "h 10.0.0.1:80"}, want: "--host shapes the value"},
		"bad status prefix":      {args: []string{ep, "--withdraw", "--status-prefix", "/x", "/k", "v"}, want: "must start and end with '/'"},
		"negative drain":         {args: []string{ep, "--drain-delay", "-1s", "/k", "v"}, want: "must not be negative"},
		"tag plain":              {args: []string{ep, "--tag", "x", "--addr", "10.0.0.1:80", "/k"}, want: "--tag needs --format json"},
		"weight plain":           {args: []string{ep, "--weight", "3", "--addr", "10.0.0.1:80", "/k"}, want: "--weight needs --format json"},
		"tag with value":         {args: []string{ep, "--tag", "x", "/k", "h 10.0.0.1:80"}, want: "--tag shapes the value"},
		"weight range":           {args: []string{ep, "--format", "json", "--weight", "257", "--addr", "10.0.0.1:80", "/k"}, want: "weight 257"},
		"weight negative":        {args: []string{ep, "--format", "json", "--weight", "-1", "--addr", "10.0.0.1:80", "/k"}, want: "weight -1"},
		"meta no equals":         {args: []string{ep, "--format", "json", "--meta", "zone", "--addr", "10.0.0.1:80", "/k"}, want: "want key=value"},
		"meta bad key":           {args: []string{ep, "--format", "json", "--meta", "a b=c", "--addr", "10.0.0.1:80", "/k"}, want: "meta key"},
		"meta twice":             {args: []string{ep, "--format", "json", "--meta", "z=1", "--meta", "z=2", "--addr", "10.0.0.1:80", "/k"}, want: "given twice"},
		"tag control":            {args: []string{ep, "--format", "json", "--tag", "a\x01", "--addr", "10.0.0.1:80", "/k"}, want: "tag"},
		"value control":          {args: []string{ep, "/k", "h 10.0.0.1:80\x01"}, want: "control"},
		"check and check-cmd":    {args: []string{ep, "--check", "tcp://x:1", "--check-cmd", "true", "/k", "v"}, want: "exclude each other"},
		"status with cmd":        {args: []string{ep, "--check-cmd", "true", "--check-status", "200", "/k", "v"}, want: "--check-status applies to an http(s) --check"},
		"shell without cmd":      {args: []string{ep, "--check", "tcp://x:1", "--check-shell", "/k", "v"}, want: "--check-shell applies to --check-cmd"},
		"rise 0":                 {args: []string{ep, "--check-cmd", "true", "--check-rise", "0", "/k", "v"}, want: "--check-rise 0"},
		"interval without check": {args: []string{ep, "--check-interval", "1s", "/k", "v"}, want: "needs --check or --check-cmd"},
		"bad status":             {args: []string{ep, "--check", "http://x:1/", "--check-status", "abc", "/k", "v"}, want: "not a number"},
		"header on tcp":          {args: []string{ep, "--check", "tcp://x:1", "--check-header", "A: b", "/k", "v"}, want: "needs an http(s) check"},
		"unsplittable cmd":       {args: []string{ep, "--check-cmd", "test \"x", "/k", "v"}, want: "--check-cmd"},
		"delete bad key":         {args: []string{ep, "--delete", "k"}, want: "must start with '/'"},
		"missing password file":  {args: []string{ep, "--user", "u", "--password-file", "/nonexistent/pw", "/k", "v"}, want: "password file"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := runEnv(ctxT(t, 10*time.Second), tc.args, &stdout, &stderr, func(string) string { return "" })
			var msg bytes.Buffer
			if code := cmdline.Exit("announce", err, &msg); code != 2 {
				t.Fatalf("exit %d (err %v), want 2", code, err)
			}
			line := msg.String()
			if strings.Count(line, "\n") != 1 || !strings.Contains(line, tc.want) {
				t.Fatalf("message %q: want one line containing %q", line, tc.want)
			}
		})
	}
	kvs, _, err := c.GetPrefix(ctxT(t, 5*time.Second), "/")
	if err != nil || len(kvs) != 0 {
		t.Fatalf("bad command lines wrote %d keys (%v)", len(kvs), err)
	}
}

func TestHelpAndVersion(t *testing.T) {
	for _, arg := range []string{"--help", "--version"} {
		var stdout, stderr bytes.Buffer
		err := runEnv(ctxT(t, 5*time.Second), []string{arg}, &stdout, &stderr, func(string) string { return "" })
		if code := cmdline.Exit("announce", err, &stderr); code != 0 || stdout.Len() == 0 {
			t.Errorf("%s: exit %d, stdout %q", arg, code, stdout.String())
		}
	}
}

func TestSIGTERMRevokesBeforeExit(t *testing.T) {
	srv := etcdtest.New(t)
	c := srv.Client()
	p := start(t, env(srv), "--host", "web1", "--addr", "10.0.0.7:8080", "/clusterstate/ns/nginx@1.service")
	kv, _ := waitKey(t, c, "/clusterstate/ns/nginx@1.service", true, 10*time.Second)
	if string(kv.Value) != "web1 10.0.0.7:8080" || kv.Lease == 0 {
		t.Fatalf("announced %q with lease %x; want the seed's value bound to a lease", kv.Value, kv.Lease)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.wait(t, 10*time.Second); err != nil {
		t.Fatalf("exit after SIGTERM: %v, want 0", err)
	}
	// Gone before exit: read once, no polling.
	if _, found, _, err := c.Get(ctxT(t, 5*time.Second), "/clusterstate/ns/nginx@1.service"); err != nil || found {
		t.Fatalf("after exit: found=%v err=%v; want the key gone", found, err)
	}
}

func TestSIGINTJSONValue(t *testing.T) {
	srv := etcdtest.New(t)
	c := srv.Client()
	p := start(t, append(env(srv), "FLOTILLA_MACHINE_ID=m-42"),
		"--format", "json", "--host", "web2", "--unit", "nginx@2.service", "--addr", "[fd00::2]:80", "/cs/ns/a")
	kv, _ := waitKey(t, c, "/cs/ns/a", true, 10*time.Second)
	want := `{"host":"web2","addr":"[fd00::2]:80","unit":"nginx@2.service","machine":"m-42"}`
	if string(kv.Value) != want {
		t.Fatalf("value %s\nwant  %s", kv.Value, want)
	}
	p.cmd.Process.Signal(syscall.SIGINT)
	if err := p.wait(t, 10*time.Second); err != nil {
		t.Fatalf("exit after SIGINT: %v", err)
	}
	if _, found, _, _ := c.Get(ctxT(t, 5*time.Second), "/cs/ns/a"); found {
		t.Fatal("key still there after SIGINT exit")
	}
}

func TestKill9ExpiresWithinTTL(t *testing.T) {
	srv := etcdtest.New(t)
	c := srv.Client()
	const ttl = 2 * time.Second
	p := start(t, env(srv), "--ttl", ttl.String(), "/k9", "h 10.0.0.1:1")
	waitKey(t, c, "/k9", true, 10*time.Second)
	p.cmd.Process.Signal(syscall.SIGKILL)
	p.wait(t, 5*time.Second)
	_, took := waitKey(t, c, "/k9", false, 30*time.Second)
	if took > ttl+time.Second {
		t.Fatalf("key outlived kill -9 by %s; want within TTL+1s = %s", took, ttl+time.Second)
	}
	t.Logf("key gone %s after kill -9 (ttl %s)", took, ttl)
}

func TestDetachThenSignalProcessGroup(t *testing.T) {
	srv := etcdtest.New(t)
	c := srv.Client()
	// The default 30s TTL: the key going at once proves a revoke, not an expiry.
	p := start(t, env(srv), "--detach", "/det", "h 10.0.0.1:1")
	if err := p.wait(t, 15*time.Second); err != nil {
		t.Fatalf("announce --detach: %v, want exit 0", err)
	}
	// Returned only once written: read once, no polling.
	kv, found, _, err := c.Get(ctxT(t, 5*time.Second), "/det")
	if err != nil || !found || kv.Lease == 0 {
		t.Fatalf("after --detach returned: found=%v lease=%x err=%v", found, kv.Lease, err)
	}
	pgid := p.cmd.Process.Pid
	if err := syscall.Kill(-pgid, 0); err != nil {
		t.Fatalf("no keeper left in the process group: %v", err)
	}
	// The key outlives its keepalive interval: the keeper holds the lease.
	if err := syscall.Kill(-pgid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	_, took := waitKey(t, c, "/det", false, 10*time.Second)
	if took >= 30*time.Second {
		t.Fatalf("key went only by expiry")
	}
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(-pgid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatal("keeper still running 10s after SIGTERM to its process group")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestDetachKeeperHoldsLease(t *testing.T) {
	srv := etcdtest.New(t)
	c := srv.Client()
	p := start(t, env(srv), "--detach", "--ttl", "1s", "/held", "h 10.0.0.1:1")
	if err := p.wait(t, 15*time.Second); err != nil {
		t.Fatalf("announce --detach: %v", err)
	}
	kv, _ := waitKey(t, c, "/held", true, time.Second)
	// A closing terminal (SIGHUP to the group) does not end the keeper.
	if err := syscall.Kill(-p.cmd.Process.Pid, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // three TTLs: only a live keeper keeps the key
	kv2, found, _, err := c.Get(ctxT(t, 5*time.Second), "/held")
	if err != nil || !found || kv2.Lease != kv.Lease {
		t.Fatalf("3 TTLs after --detach returned: found=%v lease %x→%x err=%v", found, kv.Lease, kv2.Lease, err)
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	waitKey(t, c, "/held", false, 10*time.Second)
}

func TestDelete(t *testing.T) {
	srv := etcdtest.New(t)
	c := srv.Client()
	ctx := ctxT(t, 20*time.Second)
	// What a crashed announce leaves: a key bound to a live lease.
	l, err := c.GrantLease(ctx, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := l.Put(ctx, "/del/x", "h 10.0.0.1:1"); err != nil {
		t.Fatal(err)
	}
	// Another registration under the key (a replacement on another
	// machine): a late stop leaves it alone.
	p := start(t, env(srv), "--delete", "/del/x", "h2 10.0.0.2:1")
	if err := p.wait(t, 10*time.Second); err != nil {
		t.Fatalf("announce --delete of another's key: %v", err)
	}
	if kv, found, _, _ := c.Get(ctx, "/del/x"); !found || kv.Lease != l.ID() {
		t.Fatal("--delete removed a registration that was not its own")
	}
	if alive, err := l.Alive(ctx); err != nil || !alive {
		t.Fatalf("--delete revoked another registration's lease (alive=%v, %v)", alive, err)
	}
	p = start(t, env(srv), "--withdraw", "/del/x", "h2 10.0.0.2:1")
	if err := p.wait(t, 10*time.Second); err != nil {
		t.Fatalf("announce --withdraw of another's key: %v", err)
	}
	if kv, found, _, _ := c.Get(ctx, "/del/x"); !found || kv.Lease != l.ID() {
		t.Fatal("--withdraw removed a registration that was not its own")
	}
	if _, found, _, _ := c.Get(ctx, "/flotilla/announce/withdrawn/del/x"); found {
		t.Fatal("--withdraw marked another registration withdrawn")
	}
	p = start(t, env(srv), "--delete", "/del/x", "h 10.0.0.1:1")
	if err := p.wait(t, 10*time.Second); err != nil {
		t.Fatalf("announce --delete: %v", err)
	}
	if _, found, _, _ := c.Get(ctx, "/del/x"); found {
		t.Fatal("key still there after --delete")
	}
	if alive, err := l.Alive(ctx); err != nil || alive {
		t.Fatalf("lease alive=%v (%v) after --delete; want revoked", alive, err)
	}
	// A second delete of a missing key is fine (ExecStopPost after a clean stop).
	p = start(t, env(srv), "--delete", "--host", "h", "--addr", "10.0.0.1:1", "/del/x")
	if err := p.wait(t, 10*time.Second); err != nil {
		t.Fatalf("announce --delete of a missing key: %v", err)
	}
}

func TestEtcdOutageTwiceTTL(t *testing.T) {
	srv := processEtcd(t)
	c := srv.Client()
	const ttl = 2 * time.Second
	p := start(t, env(srv), "--ttl", ttl.String(), "/out", "h 10.0.0.1:1")
	before, _ := waitKey(t, c, "/out", true, 10*time.Second)
	srv.Stop()
	time.Sleep(2 * ttl)
	if !p.running() {
		t.Fatal("announce exited while etcd was down")
	}
	srv.Start()
	// Reachable: etcd accepts a write (it has a leader again).
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.Put(ctx, "/probe", "x", 0)
		cancel()
		if err == nil {
			break
		}
	}
	back := time.Now()
	// etcd keeps an expired-while-down lease for a TTL (and an election
	// timeout) after restart. Either announce saw its lease lost and wrote
	// the key again on a new one, or (a slow machine: its keepalive had not
	// yet given up) its keepalive reached the old lease in time: then the
	// old lease is still alive 3 TTLs after the restart, which only
	// announce's renewals explain. Either way the key is announced.
	var kv store.KV
	renewed := false
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		got, found, _, err := c.Get(ctx, "/out")
		if err == nil && found && got.Lease == before.Lease && time.Since(back) > 3*ttl {
			_, alive, lerr := c.LeaseRemaining(ctx, got.Lease)
			renewed = lerr == nil && alive
		}
		cancel()
		if err == nil && found && (got.Lease != before.Lease || renewed) {
			kv = got
			break
		}
		if time.Since(back) > 20*time.Second {
			t.Fatalf("key not announced again within 20s of etcd's restart (found=%v err=%v)", found, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	took := time.Since(back)
	if renewed {
		t.Logf("the old lease %x survived the restart, renewed by announce", kv.Lease)
	} else {
		t.Logf("key back with lease %x (was %x) %s after etcd was reachable", kv.Lease, before.Lease, took)
		if took > time.Second {
			t.Errorf("key back %s after etcd was reachable; want within 1s", took)
		}
	}
	if !p.running() {
		t.Fatal("announce exited")
	}
	time.Sleep(2 * ttl) // the new lease is kept alive
	if kv2, found, _, err := c.Get(ctxT(t, 5*time.Second), "/out"); err != nil || !found || kv2.Lease != kv.Lease {
		t.Fatalf("2 TTLs later: found=%v lease %x→%x err=%v", found, kv.Lease, kv2.Lease, err)
	}
}

func TestClusterLeaderKilled(t *testing.T) {
	cl := etcdtest.NewCluster(t, 3)
	cfg := store.Default()
	cfg.Endpoints = cl.Endpoints()
	c, err := store.Open(ctxT(t, 10*time.Second), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const ttl = 2 * time.Second
	p := start(t, []string{"ANNOUNCE_ENDPOINTS=" + strings.Join(cl.Endpoints(), ","), "NOTIFY_SOCKET="},
		"--ttl", ttl.String(), "/cl", "h 10.0.0.1:1")
	waitKey(t, c, "/cl", true, 10*time.Second)
	leader := cl.Leader()
	cl.Members[leader].Kill()
	next := cl.Leader()
	kv, took := waitKey(t, c, "/cl", true, 20*time.Second)
	t.Logf("leader m%d killed, m%d elected; key present %s later", leader, next, took)
	if took > time.Second {
		t.Errorf("key present %s after the new leader; want within 1s", took)
	}
	time.Sleep(2 * ttl) // the lease is still kept alive through the new leader
	kv2, found, _, err := c.Get(ctxT(t, 5*time.Second), "/cl")
	if err != nil || !found {
		t.Fatalf("2 TTLs after the leader change: found=%v err=%v", found, err)
	}
	if kv2.Lease != kv.Lease {
		t.Logf("lease changed %x→%x", kv.Lease, kv2.Lease)
	}
	if !p.running() {
		t.Fatal("announce exited")
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.wait(t, 10*time.Second); err != nil {
		t.Fatalf("exit: %v", err)
	}
	if _, found, _, _ := c.Get(ctxT(t, 5*time.Second), "/cl"); found {
		t.Fatal("key left after SIGTERM")
	}
}

func TestSdNotify(t *testing.T) {
	srv := etcdtest.New(t)
	c := srv.Client()
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	p := start(t, []string{"ANNOUNCE_ENDPOINTS=" + srv.Endpoint(), "NOTIFY_SOCKET=" + sock, "WATCHDOG_USEC=200000"},
		"/sd", "h 10.0.0.1:1")
	// WATCHDOG_PID is unset: the watchdog is for whoever reads it.
	read := func() string {
		t.Helper()
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 4096)
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("read notify socket: %v", err)
		}
		return string(buf[:n])
	}
	var ready, watchdogs int
	for ready == 0 || watchdogs < 2 {
		msg := read()
		switch {
		case strings.Contains(msg, "READY=1"):
			ready++
			// READY=1 only after the first successful put.
			if _, found, _, err := c.Get(ctxT(t, 5*time.Second), "/sd"); err != nil || !found {
				t.Fatalf("READY=1 before the key was written (found=%v err=%v)", found, err)
			}
		case msg == "WATCHDOG=1":
			watchdogs++
		}
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	for {
		msg := read()
		if msg == "STOPPING=1" {
			break
		}
	}
	if err := p.wait(t, 10*time.Second); err != nil {
		t.Fatalf("exit: %v", err)
	}
}

func TestStartsBeforeEtcd(t *testing.T) {
	// announce started while etcd is down waits for it (ExecStartPost on a
	// machine whose etcd comes up later), and registers when it appears.
	srv := etcdtest.New(t)
	srv.Stop()
	p := start(t, []string{"ANNOUNCE_ENDPOINTS=" + srv.Endpoint(), "NOTIFY_SOCKET="}, "--dial-timeout", "300ms", "/late", "h 10.0.0.1:1")
	time.Sleep(time.Second)
	if !p.running() {
		t.Fatal("announce gave up while etcd was down")
	}
	srv.Start()
	waitKey(t, srv.Client(), "/late", true, 10*time.Second)
}

func TestAuthPasswordFile(t *testing.T) {
	srv := processEtcd(t) // bcrypt in a race-instrumented embedded server takes seconds
	srv.EnableAuth("rootpw", "svc", "s3cret")
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	bad := filepath.Join(dir, "bad")
	os.WriteFile(good, []byte("s3cret\n"), 0o600)
	os.WriteFile(bad, []byte("wrong\n"), 0o600)
	cfg := srv.Config()
	cfg.Username, cfg.Password = "svc", "s3cret"
	c, err := store.Open(ctxT(t, 10*time.Second), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// The password never appears on the command line.
	p := start(t, env(srv), "--user", "svc", "--password-file", good, "/auth/a", "h 10.0.0.1:1")
	waitKey(t, c, "/auth/a", true, 10*time.Second)
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.wait(t, 10*time.Second); err != nil {
		t.Fatalf("exit: %v", err)
	}

	// Refused credentials cannot get better by retrying: exit 1 with the reason,
	// in the foreground and through --detach alike.
	for _, detach := range []bool{false, true} {
		args := []string{"--user", "svc", "--password-file", bad, "/auth/b", "h 10.0.0.1:1"}
		if detach {
			args = append([]string{"--detach"}, args...)
		}
		p := start(t, env(srv), args...)
		err := p.wait(t, 20*time.Second)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Fatalf("detach=%v with a wrong password: %v, want exit 1", detach, err)
		}
		log, _ := os.ReadFile(p.stderr.Name())
		t.Logf("detach=%v: %s", detach, log)
		if !strings.Contains(string(log), "authentication failed") {
			t.Errorf("detach=%v: stderr does not say why:\n%s", detach, log)
		}
	}
	if _, found, _, _ := c.Get(ctxT(t, 5*time.Second), "/auth/b"); found {
		t.Fatal("written with a wrong password?")
	}
}

func TestTLSWithEtcdctlEnvironment(t *testing.T) {
	certs := etcdtest.NewCerts(t)
	srv := etcdtest.New(t, etcdtest.WithTLS(certs))
	c := srv.Client()
	// etcdctl's variables, as an EnvironmentFile= would give them.
	p := start(t, []string{"ETCDCTL_ENDPOINTS=" + srv.Endpoint(), "ANNOUNCE_ENDPOINTS=", "NOTIFY_SOCKET=",
		"ETCDCTL_CACERT=" + certs.CA, "ETCDCTL_CERT=" + certs.ClientCert, "ETCDCTL_KEY=" + certs.ClientKey},
		"/tls/a", "h 10.0.0.1:1")
	waitKey(t, c, "/tls/a", true, 10*time.Second)
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.wait(t, 10*time.Second); err != nil {
		t.Fatalf("exit: %v", err)
	}
	if _, found, _, _ := c.Get(ctxT(t, 5*time.Second), "/tls/a"); found {
		t.Fatal("key left after SIGTERM")
	}
}
