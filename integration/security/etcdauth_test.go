package security

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/store"
)

// waitValue waits until key holds want.
func waitValue(ctx context.Context, t testing.TB, c *store.Client, key, want string) {
	t.Helper()
	eventually(t, 30*time.Second, "key "+key, func() error {
		kv, ok, _, err := c.Get(ctx, key)
		switch {
		case err != nil:
			return err
		case !ok:
			return fmt.Errorf("missing")
		case want != "" && string(kv.Value) != want:
			return fmt.Errorf("= %q, want %q", kv.Value, want)
		}
		return nil
	})
}

// TestTLSClientCertificates runs announce, render and scheduler against an
// etcd that serves TLS only and requires client certificates signed by its
// CA; a certificate from another CA is refused.
func TestTLSClientCertificates(t *testing.T) {
	certs := etcdtest.NewCerts(t)
	srv := etcdtest.New(t, etcdtest.WithTLS(certs))
	c := srv.Client()
	ctx := ctxFor(t, 2*time.Minute)
	ep := srv.Endpoint()
	if !strings.HasPrefix(ep, "https://") {
		t.Fatalf("endpoint %s is not TLS", ep)
	}
	tlsFlags := []string{"--cacert", certs.CA, "--cert", certs.ClientCert, "--key", certs.ClientKey}

	// announce: flags, and etcdctl's environment variables.
	start(t, nil, append(append([]string{bin("announce"), "--endpoints", ep}, tlsFlags...), "--ttl", "2s", "/sec/tls/flags", "h1 127.0.0.1:1")...)
	start(t, []string{"ETCDCTL_ENDPOINTS=" + ep, "ETCDCTL_CACERT=" + certs.CA, "ETCDCTL_CERT=" + certs.ClientCert, "ETCDCTL_KEY=" + certs.ClientKey},
		bin("announce"), "--ttl", "2s", "/sec/tls/env", "h2 127.0.0.1:2")
	waitValue(ctx, t, c, "/sec/tls/flags", "h1 127.0.0.1:1")
	waitValue(ctx, t, c, "/sec/tls/env", "h2 127.0.0.1:2")

	// render, confd's TLS flags.
	dir, dest := confdir(t, "/sec/tls", "")
	out, err := exec.Command(bin("render"), "-backend", "etcdv3", "-node", ep, "-client-ca-keys", certs.CA,
		"-client-cert", certs.ClientCert, "-client-key", certs.ClientKey, "-confdir", dir, "-onetime").CombinedOutput()
	if err != nil {
		t.Fatalf("render over TLS: %v\n%s", err, out)
	}
	if b, _ := os.ReadFile(dest); !strings.Contains(string(b), "/sec/tls/flags=h1 127.0.0.1:1") {
		t.Errorf("render over TLS wrote %q", b)
	}

	// scheduler serve registers the machine; list-machines reads it back.
	start(t, nil, append(append([]string{bin("scheduler"), "serve", "--endpoints", ep}, tlsFlags...),
		"--data-dir", t.TempDir(), "--machine-id", "tlsmachine", "--executor", "process", "--ttl", "2s", "--public-ip", "127.0.0.7")...)
	waitValue(ctx, t, c, "/flotilla/machines/tlsmachine", "")
	lm, err := exec.Command(bin("scheduler"), append([]string{"list-machines", "--full", "--endpoints", ep}, tlsFlags...)...).CombinedOutput()
	if err != nil || !strings.Contains(string(lm), "tlsmachine") || !strings.Contains(string(lm), "127.0.0.7") {
		t.Errorf("scheduler list-machines over TLS: %v\n%s", err, lm)
	}

	// Refused: a client certificate from another CA, and no certificate.
	out, err = exec.Command(bin("render"), "-backend", "etcdv3", "-node", ep, "-client-ca-keys", certs.CA,
		"-client-cert", certs.ForeignClientCert, "-client-key", certs.ForeignClientKey, "-confdir", dir, "-onetime", "-dial-timeout", "2s").CombinedOutput()
	if err == nil {
		t.Errorf("render with a foreign client certificate succeeded:\n%s", out)
	}
	out, err = exec.Command(bin("scheduler"), "list-machines", "--endpoints", ep, "--cacert", certs.CA, "--dial-timeout", "2s").CombinedOutput()
	if err == nil {
		t.Errorf("scheduler list-machines without a client certificate succeeded:\n%s", out)
	}
	foreign := start(t, nil, bin("announce"), "--endpoints", ep, "--cacert", certs.CA, "--cert", certs.ForeignClientCert,
		"--key", certs.ForeignClientKey, "--ttl", "2s", "--dial-timeout", "1s", "/sec/tls/foreign", "h3 127.0.0.1:3")
	time.Sleep(3 * time.Second)
	if _, ok, _, _ := c.Get(ctx, "/sec/tls/foreign"); ok {
		t.Errorf("announce with a foreign client certificate wrote its key")
	}
	foreign.stop()
	if o := strings.ToLower(foreign.out.String()); !strings.Contains(o, "certificate") && !strings.Contains(o, "tls") && !strings.Contains(o, "handshake") {
		t.Errorf("announce does not say why etcd refused it:\n%s", o)
	}
}

// TestPasswordAuthNoSecretInLogsOrPs runs the three binaries against an etcd
// with authentication on, giving the password by environment or by file
// (never on the command line), with debug logs: the password appears in no
// log and in no process's command line, and a wrong password is reported
// without echoing it.
func TestPasswordAuthNoSecretInLogsOrPs(t *testing.T) {
	// The etcd binary, not the embedded server: the embedded one shares this
	// test process's CPU (and the race detector's cost) with everything else.
	srv := etcdtest.New(t, etcdtest.WithMode(etcdtest.Binary))
	nonce := fmt.Sprintf("%08x", rand.Uint32())
	secret, rootPW, wrong := "s3cret-"+nonce, "rootpw-"+nonce, "wrongpw-"+nonce
	srv.EnableAuth(rootPW, "flot", secret)
	cfg := srv.Config()
	cfg.Username, cfg.Password = "root", rootPW
	c, err := store.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := ctxFor(t, 2*time.Minute)
	ep := srv.Endpoint()
	pwFile := filepath.Join(t.TempDir(), "etcd-password")
	if err := os.WriteFile(pwFile, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var procs []*proc
	envAuth := []string{"ETCDCTL_USER=flot", "ETCDCTL_PASSWORD=" + secret}

	// announce: password from the environment, then from a file; and the
	// --detach keeper (a second process) with the password from the environment.
	procs = append(procs,
		start(t, envAuth, bin("announce"), "--endpoints", ep, "--log-level", "debug", "--ttl", "2s", "/sec/auth/env", "h1 127.0.0.1:1"),
		start(t, nil, bin("announce"), "--endpoints", ep, "--log-level", "debug", "--user", "flot", "--password-file", pwFile, "--ttl", "2s", "/sec/auth/file", "h2 127.0.0.1:2"))
	waitValue(ctx, t, c, "/sec/auth/env", "h1 127.0.0.1:1")
	waitValue(ctx, t, c, "/sec/auth/file", "h2 127.0.0.1:2")
	// The keeper inherits stdout/stderr: give it a file, not a pipe that
	// would stay open after announce --detach returns.
	detLog := filepath.Join(t.TempDir(), "detach.log")
	detFile, err := os.Create(detLog)
	if err != nil {
		t.Fatal(err)
	}
	det := exec.Command(bin("announce"), "--detach", "--endpoints", ep, "--log-level", "debug", "--ttl", "2s", "/sec/auth/detach", "h3 127.0.0.1:3")
	det.Env = append(os.Environ(), envAuth...)
	det.Stdout, det.Stderr = detFile, detFile
	// Its own process group, which the keeper stays in: killed at the end.
	det.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = det.Run()
	t.Cleanup(func() { stopGroup(t, det.Process.Pid) })
	detFile.Close()
	detOut, _ := os.ReadFile(detLog)
	if err != nil {
		t.Fatalf("announce --detach with auth: %v\n%s", err, detOut)
	}
	waitValue(ctx, t, c, "/sec/auth/detach", "h3 127.0.0.1:3")

	// render: confd's -username with the password from CONFD_PASSWORD, and
	// from confd.toml's password key.
	dir, dest := confdir(t, "/sec/auth", "")
	out, err := runWith([]string{"CONFD_PASSWORD=" + secret}, bin("render"), "-backend", "etcdv3", "-node", ep,
		"-username", "flot", "-confdir", dir, "-onetime", "-log-level", "debug")
	if err != nil {
		t.Fatalf("render with CONFD_PASSWORD: %v\n%s", err, out)
	}
	checkNoSecret(t, "render (CONFD_PASSWORD) output", out, secret)
	if b, _ := os.ReadFile(dest); !strings.Contains(string(b), "/sec/auth/env=h1 127.0.0.1:1") {
		t.Errorf("render with auth wrote %q", b)
	}
	confToml := filepath.Join(t.TempDir(), "confd.toml")
	os.WriteFile(confToml, []byte(fmt.Sprintf("backend = \"etcdv3\"\nnodes = [%q]\nusername = \"flot\"\npassword = %q\n", ep, secret)), 0o600)
	os.Remove(dest)
	out, err = runWith(nil, bin("render"), "-config-file", confToml, "-confdir", dir, "-onetime", "-log-level", "debug")
	if err != nil {
		t.Fatalf("render with confd.toml password: %v\n%s", err, out)
	}
	checkNoSecret(t, "render (confd.toml) output", out, secret)
	if _, err := os.Stat(dest); err != nil {
		t.Errorf("render with confd.toml password wrote nothing: %v", err)
	}

	// scheduler serve and a client verb, password from the environment.
	procs = append(procs, start(t, envAuth, bin("scheduler"), "serve", "--endpoints", ep, "--log-level", "debug",
		"--data-dir", t.TempDir(), "--machine-id", "authmachine", "--executor", "process", "--ttl", "2s", "--public-ip", "127.0.0.8"))
	waitValue(ctx, t, c, "/flotilla/machines/authmachine", "")
	out, err = runWith(envAuth, bin("scheduler"), "list-machines", "--full", "--endpoints", ep)
	if err != nil || !strings.Contains(out, "authmachine") {
		t.Errorf("scheduler list-machines with auth: %v\n%s", err, out)
	}
	checkNoSecret(t, "scheduler list-machines output", out, secret)

	// No process on the machine shows the password on its command line
	// (what `ps` shows any user), the detached keeper included.
	if pids := cmdlinesContaining(secret); len(pids) > 0 {
		t.Errorf("the password is on the command line of %v", pids)
	}
	for _, p := range procs {
		checkNoSecret(t, p.cmdline()+" output", p.out.String(), secret)
	}
	checkNoSecret(t, "announce --detach output", string(detOut), secret)

	// A wrong password: refused, reported, not echoed.
	bad := []string{"ETCDCTL_USER=flot", "ETCDCTL_PASSWORD=" + wrong}
	out, err = runWith(bad, bin("scheduler"), "list-machines", "--endpoints", ep, "--dial-timeout", "2s")
	if err == nil {
		t.Errorf("scheduler with a wrong password succeeded:\n%s", out)
	}
	checkNoSecret(t, "scheduler (wrong password) output", out, wrong)
	out, err = runWith([]string{"CONFD_PASSWORD=" + wrong}, bin("render"), "-backend", "etcdv3", "-node", ep,
		"-username", "flot", "-confdir", dir, "-onetime", "-dial-timeout", "2s")
	if err == nil {
		t.Errorf("render with a wrong password succeeded:\n%s", out)
	}
	checkNoSecret(t, "render (wrong password) output", out, wrong)
	if !strings.Contains(strings.ToLower(out), "auth") && !strings.Contains(strings.ToLower(out), "password") {
		t.Errorf("render does not say the credentials were refused:\n%s", out)
	}
	wa := start(t, bad, bin("announce"), "--endpoints", ep, "--ttl", "2s", "/sec/auth/wrong", "h4 127.0.0.1:4")
	select {
	case <-wa.done:
	case <-time.After(10 * time.Second):
	}
	wa.stop()
	checkNoSecret(t, "announce (wrong password) output", wa.out.String(), wrong)
	if o := strings.ToLower(wa.out.String()); !strings.Contains(o, "auth") && !strings.Contains(o, "password") {
		t.Errorf("announce does not say the credentials were refused:\n%s", o)
	}
	if _, ok, _, _ := c.Get(ctx, "/sec/auth/wrong"); ok {
		t.Errorf("announce with a wrong password wrote its key")
	}
}

func runWith(env []string, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func checkNoSecret(t testing.TB, where, text, secret string) {
	t.Helper()
	if strings.Contains(text, secret) {
		i := strings.Index(text, secret)
		lo := max(0, i-200)
		t.Errorf("%s shows the password: …%s…", where, text[lo:min(len(text), i+len(secret)+50)])
	}
}

// cmdlinesContaining returns the pids whose command line contains s.
func cmdlinesContaining(s string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && strings.Contains(string(b), s) {
			pids = append(pids, pid)
		}
	}
	return pids
}
