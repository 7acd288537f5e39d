package security

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/store"
)

// freePort returns a loopback port nothing listens on right now.
func freePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, p, _ := net.SplitHostPort(l.Addr().String())
	return p
}

var tokenRE = regexp.MustCompile(`flt1\.[0-9a-f]{64}\.[0-9a-f]+`)

// sched runs a scheduler client command and returns its stdout.
func sched(t testing.TB, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(bin("scheduler"), args...)
	cmd.Env = append(os.Environ(), "FLOTILLA_ENDPOINTS=", "ETCDCTL_ENDPOINTS=")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("scheduler %s: %v: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

// first starts the machine that creates the cluster, listening on 0.0.0.0,
// and returns its token and the ports of its etcd and join endpoint.
func first(t testing.TB, dir, id string) (p *proc, token, etcdPort, joinAddr string) {
	t.Helper()
	etcdPort, joinAddr = freePort(t), "127.0.0.1:"+freePort(t)
	p = start(t, nil, bin("scheduler"), "serve", "--data-dir", dir, "--machine-id", id, "--public-ip", "127.0.0.1",
		"--etcd-listen", "0.0.0.0:"+etcdPort, "--etcd-peer-listen", "0.0.0.0:"+freePort(t), "--join-listen", joinAddr,
		"--executor", "process")
	eventually(t, 60*time.Second, "first machine prints its token and serves", func() error {
		if token = tokenRE.FindString(p.out.String()); token == "" || !strings.Contains(p.out.String(), "join endpoint serving") {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	return p, token, etcdPort, joinAddr
}

func waitMachines(t testing.TB, dataDir string, want ...string) {
	t.Helper()
	eventually(t, 60*time.Second, "machines "+strings.Join(want, ","), func() error {
		out, err := sched(t, "--data-dir", dataDir, "list-machines", "--no-legend", "--full")
		if err != nil {
			return err
		}
		for _, id := range want {
			if !regexp.MustCompile(`(?m)^` + id + `\s`).MatchString(out) {
				return fmt.Errorf("%s missing from:\n%s", id, out)
			}
		}
		return nil
	})
}

// TestJoinWithToken: the first machine off loopback refuses plain http and
// certificate-less TLS; a wrong token is refused and leaves no file; the
// right one joins; the joined machine's CLI works with no flag but its
// data dir; it restarts without a token; a rotated token refuses the old
// one; a revoked machine cannot reconnect.
func TestJoinWithToken(t *testing.T) {
	dirA, dirB, dirC := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b"), filepath.Join(t.TempDir(), "c")
	_, token, etcdPort, joinAddr := first(t, dirA, "m1")
	ctx := ctxFor(t, 3*time.Minute)

	for name, cfg := range map[string]store.Config{
		"plain http":                     {Endpoints: []string{"http://127.0.0.1:" + etcdPort}},
		"TLS without client certificate": {Endpoints: []string{"https://127.0.0.1:" + etcdPort}, CACert: filepath.Join(dirA, "pki", "ca.pem")},
	} {
		cfg.DialTimeout = 2 * time.Second
		if c, err := store.Open(ctx, cfg); err == nil {
			c.Close()
			t.Errorf("%s: connected to the first machine's etcd", name)
		}
	}
	if out, err := sched(t, "--data-dir", dirA, "token"); err != nil || strings.TrimSpace(out) != token {
		t.Fatalf("token on the first machine: %q %v, want %s", out, err, token)
	}

	// A wrong token: refused, nothing written.
	bad := token[:len(token)-4] + "0000"
	out, err := exec.Command(bin("scheduler"), "serve", "--data-dir", dirB, "--machine-id", "m2", "--join", joinAddr, "--token", bad, "--executor", "process").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "refused") {
		t.Fatalf("wrong token: %v\n%s", err, out)
	}
	if _, err := os.Stat(dirB); !os.IsNotExist(err) {
		t.Fatalf("wrong token left %s behind (%v)", dirB, err)
	}

	// The right one, through the environment.
	// m2 listens off loopback: it becomes the second etcd member.
	listenB := []string{"--etcd-listen", "0.0.0.0:" + freePort(t), "--etcd-peer-listen", "0.0.0.0:" + freePort(t)}
	b := start(t, []string{"FLOTILLA_TOKEN=" + token}, append([]string{bin("scheduler"), "serve", "--data-dir", dirB, "--machine-id", "m2",
		"--public-ip", "127.0.0.1", "--join", joinAddr, "--executor", "process"}, listenB...)...)
	waitMachines(t, dirB, "m1", "m2")
	if st, err := os.Stat(filepath.Join(dirB, "pki", "client-key.pem")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("client key: %v %v", st, err)
	}

	// Restart without a token.
	b.stop()
	b = start(t, nil, append([]string{bin("scheduler"), "serve", "--data-dir", dirB, "--machine-id", "m2", "--public-ip", "127.0.0.1", "--executor", "process"}, listenB...)...)
	eventually(t, 30*time.Second, "m2 serving again", func() error {
		if !strings.Contains(b.out.String(), "machine registered") {
			return fmt.Errorf("not yet")
		}
		return nil
	})

	// Rotation: the old token no longer joins.
	rot, err := sched(t, "--data-dir", dirA, "token", "--rotate")
	if err != nil || !tokenRE.MatchString(rot) || strings.TrimSpace(rot) == token {
		t.Fatalf("token --rotate: %q %v", rot, err)
	}
	out, err = exec.Command(bin("scheduler"), "serve", "--data-dir", dirC, "--machine-id", "m3", "--join", joinAddr, "--token", token, "--executor", "process").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "refused") {
		t.Fatalf("old token after rotation: %v\n%s", err, out)
	}

	if n := members(t, dirA); n != 2 {
		t.Fatalf("%d etcd members, want 2", n)
	}
	// Revocation: removes m2's member; once m2 stops, neither its serve nor its CLI connects.
	if out, err := sched(t, "--data-dir", dirA, "revoke", "m2"); err != nil || !strings.Contains(out, "revoked 2 certificate(s) of m2") ||
		!strings.Contains(out, "removed etcd member m2") {
		t.Fatalf("revoke: %q %v", out, err)
	}
	if n := members(t, dirA); n != 1 {
		t.Fatalf("%d etcd members after revoking m2, want 1", n)
	}
	b.stop()
	if _, err := sched(t, "--data-dir", dirB, "list-machines"); err == nil {
		t.Fatal("revoked machine's CLI connected")
	}
	out, err = exec.CommandContext(ctx, bin("scheduler"), "serve", "--data-dir", dirB, "--machine-id", "m2", "--executor", "process").CombinedOutput()
	if err == nil {
		t.Fatalf("revoked machine's serve started:\n%s", out)
	}
	if _, err := sched(t, "--data-dir", dirA, "list-machines"); err != nil {
		t.Fatalf("first machine's CLI after revoking m2: %v", err)
	}
}

// TestInsecureIsLoud: --insecure serves plain http off loopback, and says so.
func TestInsecureIsLoud(t *testing.T) {
	port := freePort(t)
	p := start(t, nil, bin("scheduler"), "serve", "--data-dir", t.TempDir(), "--insecure", "--etcd-listen", "0.0.0.0:"+port,
		"--executor", "process", "--public-ip", "127.0.0.1")
	eventually(t, 60*time.Second, "machine serving", func() error {
		if !strings.Contains(p.out.String(), "machine registered") {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	if !strings.Contains(p.out.String(), "INSECURE") {
		t.Errorf("--insecure start not logged loudly:\n%s", p.out.String())
	}
	cfg := store.Default()
	cfg.Endpoints = []string{"http://127.0.0.1:" + port}
	c, err := store.Open(ctxFor(t, time.Minute), cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

// TestThreeMembersSurviveTheFirst: three machines joined with the token form
// a 3-member etcd (a fourth is a client); kill -9 of the first leaves the
// others serving: their units keep running, the lost machine's unit moves,
// a new unit starts.
func TestThreeMembersSurviveTheFirst(t *testing.T) {
	base := t.TempDir()
	dir := func(id string) string { return filepath.Join(base, id) }
	pids := filepath.Join(base, "pids")
	os.MkdirAll(pids, 0o755)
	unitFile := filepath.Join(base, "web@.service")
	os.WriteFile(unitFile, []byte("[Unit]\nDescription=web %i\n[Service]\nExecStart=/bin/sh -c 'echo $$$$ >> "+pids+
		"/%n.$FLOTILLA_MACHINE_ID.pid; exec sleep 1000'\n[X-Fleet]\nConflicts=web@*.service\n"), 0o644)

	a, token, _, joinAddr := first(t, dir("m1"), "m1")
	waitMachines(t, dir("m1"), "m1")
	// web@1 lands on m1, the only machine so far.
	if _, err := sched(t, "--data-dir", dir("m1"), "start", "--no-block", filepath.Join(base, "web@1.service")); err != nil {
		t.Fatal(err)
	}
	waitUnit(t, dir("m1"), "web@1.service", "m1")
	for _, id := range []string{"m2", "m3", "m4"} {
		start(t, nil, bin("scheduler"), "serve", "--data-dir", dir(id), "--machine-id", id, "--public-ip", "127.0.0.1",
			"--etcd-listen", "0.0.0.0:"+freePort(t), "--etcd-peer-listen", "0.0.0.0:"+freePort(t),
			"--join", joinAddr, "--token", token, "--executor", "process")
		waitMachines(t, dir("m1"), id)
	}
	if n := members(t, dir("m2")); n != 3 {
		t.Fatalf("%d voting etcd members, want 3", n)
	}
	// Machines that joined early learn of later members.
	eventually(t, 60*time.Second, "every endpoints file lists the three members", func() error {
		for _, id := range []string{"m1", "m2", "m3", "m4"} {
			if eps := mustRead(t, filepath.Join(dir(id), "pki", "endpoints")); len(eps) != 3 {
				return fmt.Errorf("%s: %v", id, eps)
			}
		}
		return nil
	})
	if _, err := sched(t, "--data-dir", dir("m2"), "start", "--no-block", filepath.Join(base, "web@2.service"), filepath.Join(base, "web@3.service")); err != nil {
		t.Fatal(err)
	}
	before := map[string]string{}
	for _, u := range []string{"web@2.service", "web@3.service"} {
		before[u] = waitUnit(t, dir("m2"), u, "")
	}
	running := pidFiles(t, pids)

	syscall.Kill(-a.cmd.Process.Pid, syscall.SIGKILL)
	<-a.done

	moved := waitUnit(t, dir("m2"), "web@1.service", "!m1")
	t.Logf("web@1 moved from m1 to %s", moved)
	for u, m := range before {
		if got := waitUnit(t, dir("m3"), u, ""); got != m {
			t.Errorf("%s moved from %s to %s", u, m, got)
		}
	}
	after := pidFiles(t, pids)
	for f, pid := range running {
		if strings.Contains(f, ".m1.") {
			continue
		}
		if after[f] != pid {
			t.Errorf("%s restarted: %s then %s", f, pid, after[f])
		}
	}
	// A new unit (web@ instances conflict, and every live machine has one).
	newUnit := filepath.Join(base, "new.service")
	os.WriteFile(newUnit, []byte("[Service]\nExecStart=/bin/sleep 1000\n"), 0o644)
	if _, err := sched(t, "--data-dir", dir("m4"), "start", "--no-block", newUnit); err != nil {
		t.Fatal(err)
	}
	t.Logf("new.service started on %s", waitUnit(t, dir("m4"), "new.service", "!m1"))
}

// waitUnit waits until unit runs, on machine if given ("!m" : not on m), and
// returns its machine.
func waitUnit(t testing.TB, dataDir, unit, machine string) string {
	t.Helper()
	var on string
	eventually(t, 90*time.Second, unit+" running "+machine, func() error {
		out, err := sched(t, "--data-dir", dataDir, "list-units", "--no-legend", "--full")
		if err != nil {
			return err
		}
		for _, l := range strings.Split(out, "\n") {
			f := strings.Fields(l)
			if len(f) == 4 && f[0] == unit && f[3] == "running" {
				on, _, _ = strings.Cut(f[1], "/")
				if machine == "" || on == machine || strings.HasPrefix(machine, "!") && on != machine[1:] {
					return nil
				}
			}
		}
		return fmt.Errorf("list-units:\n%s", out)
	})
	return on
}

// pidFiles returns every pid file's content.
func pidFiles(t testing.TB, dir string) map[string]string {
	m := map[string]string{}
	es, _ := os.ReadDir(dir)
	for _, e := range es {
		b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		m[e.Name()] = strings.TrimSpace(string(b))
	}
	return m
}

func mustRead(t testing.TB, path string) []string {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(b))
}

// members counts the voting etcd members, asked with etcdctl and the
// credentials in a machine's data dir.
func members(t testing.TB, dataDir string) int {
	t.Helper()
	pk := filepath.Join(dataDir, "pki")
	out, err := exec.Command("etcdctl", "--endpoints", mustRead(t, filepath.Join(pk, "endpoints"))[0],
		"--cacert", filepath.Join(pk, "ca.pem"), "--cert", filepath.Join(pk, "client.pem"),
		"--key", filepath.Join(pk, "client-key.pem"), "member", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("etcdctl member list: %v\n%s", err, out)
	}
	n := 0
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if strings.HasSuffix(strings.TrimSpace(l), "false") { // the last column: is learner
			n++
		}
	}
	return n
}
