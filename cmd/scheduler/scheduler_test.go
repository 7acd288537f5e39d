package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/testmain"

	"go.uber.org/goleak"
	"golang.org/x/sync/errgroup"

	"github.com/flotilla/flotilla/internal/cmdline"
	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/unit"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testmain.LeakOptions()...)
}

func TestSplitVerb(t *testing.T) {
	tests := map[string]struct {
		args     []string
		verb     string
		wantRest string
	}{
		"verb first":          {args: []string{"list-units", "--no-legend"}, verb: "list-units", wantRest: "--no-legend"},
		"global flag value":   {args: []string{"--endpoints", "http://x:1", "start", "a.service"}, verb: "start", wantRest: "--endpoints http://x:1 -- a.service"},
		"flags after units":   {args: []string{"start", "a.service", "--block-attempts", "3", "b.service"}, verb: "start", wantRest: "--block-attempts 3 -- a.service b.service"},
		"bool flag":           {args: []string{"--full", "list-machines"}, verb: "list-machines", wantRest: "--full"},
		"equals form":         {args: []string{"--fields=unit,hash", "list-unit-files"}, verb: "list-unit-files", wantRest: "--fields=unit,hash"},
		"serve keeps its own": {args: []string{"serve", "--machine-id", "m1", "--ttl", "3s"}, verb: "serve", wantRest: "--machine-id m1 --ttl 3s"},
		"none":                {args: []string{"--full"}, verb: "", wantRest: "--full"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			verb, rest := splitVerb(tc.args)
			if verb != tc.verb || strings.Join(rest, " ") != tc.wantRest {
				t.Errorf("splitVerb(%q) = %q, %q; want %q, %q", tc.args, verb, rest, tc.verb, tc.wantRest)
			}
		})
	}
}

func TestParseMetadata(t *testing.T) {
	tests := map[string]struct {
		in      string
		want    string
		wantErr bool
	}{
		"empty":  {in: "", want: "-"},
		"two":    {in: "role=web, az=b", want: "az=b,role=web"},
		"no eq":  {in: "role", wantErr: true},
		"no key": {in: "=x", wantErr: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			md, err := parseMetadata(tc.in)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v", err)
			}
			if err == nil && metadataString(md) != tc.want {
				t.Errorf("got %s, want %s", metadataString(md), tc.want)
			}
		})
	}
}

type env struct {
	t        *testing.T
	ctx      context.Context
	endpoint string
	reg      *registry.Registry
}

func newEnv(t *testing.T) *env {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	srv := etcdtest.New(t)
	return &env{t: t, ctx: ctx, endpoint: srv.Endpoint(), reg: registry.New(srv.Client(), registry.DefaultPrefix)}
}

func (e *env) run(args ...string) (stdout, stderr string, err error) {
	var o, se bytes.Buffer
	getenv := func(k string) string {
		if k == "FLOTILLA_ENDPOINTS" {
			return e.endpoint
		}
		return ""
	}
	err = runEnv(e.ctx, args, getenv, &o, &se)
	return o.String(), se.String(), err
}

// seed writes a cluster's state straight into etcd: two machines, a pair of
// placed instances reporting states, a global unit and an unplaced one.
func (e *env) seed() {
	e.t.Helper()
	c := e.reg.Client()
	ctx := e.ctx
	lease, err := c.GrantLease(ctx, 30*time.Second)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { lease.Close() })
	machines := map[string]registry.Machine{
		"fe64b5d8e1c34a0b9a5e1f2b3c4d5e6f": {IP: "10.0.0.2", Metadata: map[string]string{"role": "worker", "az": "a"}},
		"0a1b2c3d4e5f60718293a4b5c6d7e8f9": {IP: "10.0.0.3", Metadata: map[string]string{"role": "lb"}},
	}
	for id, m := range machines {
		m.ID = id
		lease.Put(ctx, e.reg.MachineKey(id), registry.Encode(m))
	}
	tmpl := []byte("[Unit]\nDescription=web %i\n[Service]\nExecStart=/bin/sleep 1000\n[X-Fleet]\nConflicts=web@*.service\n")
	global := []byte("[Unit]\nDescription=prefetch\n[Service]\nType=oneshot\nExecStart=/bin/true\n[X-Fleet]\nGlobal=true\n")
	for name, body := range map[string][]byte{"web@1.service": tmpl, "web@2.service": tmpl, "prefetch.service": global} {
		if _, err := e.reg.Submit(ctx, name, unit.Hash(body), body, registry.KeepExisting); err != nil {
			e.t.Fatal(err)
		}
		e.reg.SetDesired(ctx, name, registry.Launched)
	}
	h, g := unit.Hash(tmpl), unit.Hash(global)
	w, lb := "fe64b5d8e1c34a0b9a5e1f2b3c4d5e6f", "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
	c.Put(ctx, e.reg.ScheduleKey(w, "web@1.service"), registry.Encode(registry.Assignment{Hash: h, Desired: registry.Launched}), 0)
	c.Put(ctx, e.reg.UnplacedKey("web@2.service"), "conflicts with web@1.service on every machine", 0)
	c.Put(ctx, e.reg.ScheduleKey(w, "prefetch.service"), registry.Encode(registry.Assignment{Hash: g, Desired: registry.Launched}), 0)
	c.Put(ctx, e.reg.ScheduleKey(lb, "prefetch.service"), registry.Encode(registry.Assignment{Hash: g, Desired: registry.Launched}), 0)
	lease.Put(ctx, e.reg.StateKey("web@1.service", w), registry.Encode(registry.UnitState{Hash: h, State: "launched", Load: "loaded", Active: "active", Sub: "running"}))
	lease.Put(ctx, e.reg.StateKey("prefetch.service", w), registry.Encode(registry.UnitState{Hash: g, State: "launched", Load: "loaded", Active: "active", Sub: "exited"}))
	lease.Put(ctx, e.reg.StateKey("prefetch.service", lb), registry.Encode(registry.UnitState{Hash: g, State: "launched", Load: "loaded", Active: "inactive", Sub: "dead"}))
}

func TestListGolden(t *testing.T) {
	e := newEnv(t)
	e.seed()
	tests := map[string][]string{
		"list-units":                {"list-units"},
		"list-units-full-fields":    {"list-units", "--full", "--fields", "unit,machine,load,hash"},
		"list-unit-files":           {"list-unit-files"},
		"list-unit-files-no-legend": {"list-unit-files", "--no-legend"},
		"list-unit-files-fields":    {"list-unit-files", "--fields=unit,desc,global,reason"},
		"list-machines":             {"list-machines"},
		"list-machines-full":        {"--full", "list-machines"},
		"status":                    {"status", "--request-timeout", "300ms", "web@1.service", "web@2.service"},
		"cat":                       {"cat", "web@2.service"},
		"list-unit-files-bad-field": {"list-unit-files", "--fields", "unit,nope"},
		"destroy-unknown":           {"destroy", "nope.service", "--no-block"},
		"start-template":            {"start", "--no-block", "web@.service"},
		"journal-no-answer":         {"journal", "--request-timeout=300ms", "web@1.service"},
	}
	for name, args := range tests {
		t.Run(name, func(t *testing.T) {
			out, errOut, err := e.run(args...)
			got := out
			if errOut != "" {
				got += "--- stderr\n" + errOut
			}
			if err != nil {
				got += "--- error (exit " + string(rune('0'+cmdline.Exit("scheduler", err, &bytes.Buffer{}))) + ")\n" + err.Error() + "\n"
			}
			golden := filepath.Join("testdata", name+".golden")
			if *update {
				os.MkdirAll("testdata", 0o755)
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update)", err)
			}
			if got != string(want) {
				t.Errorf("scheduler %s:\n--- got\n%s--- want\n%s", strings.Join(args, " "), got, want)
			}
		})
	}
}

func TestSubmitRules(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(body), 0o644)
		return p
	}
	tmpl := write("app@.service", "[Service]\nExecStart=/bin/sleep 1000\n")
	bad := write("bad.service", "[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineOf=x.service\nBogus=1\n")

	// Bad unit files are rejected with file:line.
	_, _, err := e.run("submit", bad)
	if err == nil || !strings.Contains(err.Error(), bad+":5:") {
		t.Errorf("submit of a bad file: %v, want %s:5:", err, bad)
	}
	// An instance path without a file takes the template beside it.
	inst := filepath.Join(dir, "app@3.service")
	if _, _, err := e.run("submit", tmpl, inst); err != nil {
		t.Fatal(err)
	}
	j, err := e.reg.Job(e.ctx, "app@3.service")
	if err != nil || j.Hash != unit.Hash([]byte("[Service]\nExecStart=/bin/sleep 1000\n")) || j.Desired != registry.Inactive {
		t.Errorf("instance job = %+v, %v", j, err)
	}
	// A submitted template's instance can be loaded by name alone.
	if _, _, err := e.run("load", "--no-block", "app@4.service"); err != nil {
		t.Fatal(err)
	}
	if j, err := e.reg.Job(e.ctx, "app@4.service"); err != nil || j.Desired != registry.Loaded {
		t.Errorf("app@4 = %+v, %v", j, err)
	}
	// A changed body needs --replace, which keeps the desired state.
	write("app@.service", "[Service]\nExecStart=/bin/sleep 2000\n")
	if _, _, err := e.run("submit", inst); !errors.Is(err, registry.ErrConflict) {
		t.Errorf("changed body without --replace: %v", err)
	}
	if _, _, err := e.run("start", "--no-block", "--replace", inst); err != nil {
		t.Fatal(err)
	}
	if j, _ := e.reg.Job(e.ctx, "app@3.service"); j.Desired != registry.Launched || j.Hash != unit.Hash([]byte("[Service]\nExecStart=/bin/sleep 2000\n")) {
		t.Errorf("after --replace: %+v", j)
	}
	// Unknown units, bad usage.
	if _, _, err := e.run("start", "--no-block", filepath.Join(dir, "nothing.service")); err == nil || !strings.Contains(err.Error(), "not submitted") {
		t.Errorf("start of nothing: %v", err)
	}
	for _, args := range [][]string{{"bogus"}, {}, {"cat"}, {"list-units", "extra"}, {"--nope", "list-units"}} {
		_, _, err := e.run(args...)
		if code := cmdline.Exit("scheduler", err, &bytes.Buffer{}); code != 2 {
			t.Errorf("scheduler %q: exit %d (%v), want 2", args, code, err)
		}
	}
}

// serveInBackground runs `scheduler serve ARGS` until the test ends (an
// error it returns fails the test then, with its log) and returns its log.
func serveInBackground(ctx context.Context, t *testing.T, args ...string) *syncBuffer {
	t.Helper()
	serveCtx, stop := context.WithCancel(ctx)
	var g errgroup.Group
	log := &syncBuffer{}
	g.Go(func() error {
		return runEnv(serveCtx, append([]string{"serve"}, args...), func(string) string { return "" }, &bytes.Buffer{}, log)
	})
	t.Cleanup(func() {
		stop()
		if err := g.Wait(); err != nil {
			t.Errorf("serve: %v", err)
		}
		if t.Failed() {
			t.Logf("serve log:\n%s", log.String())
		}
	})
	return log
}

// etcdEnv is an environment that names only the etcd at addr.
func etcdEnv(addr string) func(string) string {
	return func(k string) string {
		if k == "FLOTILLA_ENDPOINTS" {
			return "http://" + addr
		}
		return ""
	}
}

// cli runs a client verb against the etcd at addr and returns its output.
func cli(ctx context.Context, addr string, args ...string) (string, error) {
	var out bytes.Buffer
	err := runEnv(ctx, args, etcdEnv(addr), &out, &bytes.Buffer{})
	return out.String(), err
}

// TestServeEmbedded runs `scheduler serve` with no endpoints: it must start
// its own etcd and be a working cluster of one.
func TestServeEmbedded(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	data := t.TempDir()
	addr := etcdtest.FreeAddr(t)
	serveErr := serveInBackground(ctx, t, "--data-dir", data, "--etcd-listen", addr, "--public-ip", "127.0.0.7",
		"--metadata", "role=solo", "--executor", "process", "--ttl", "2s")
	client := func(args ...string) (string, error) { return cli(ctx, addr, args...) }
	deadline := time.Now().Add(30 * time.Second)
	var out string
	for time.Now().Before(deadline) {
		out, _ = client("list-machines", "--no-legend")
		if strings.Contains(out, "127.0.0.7") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(out, "127.0.0.7\trole=solo") {
		t.Fatalf("list-machines = %q; serve log:\n%s", out, serveErr.String())
	}
	// The machine id was generated and persisted in the data dir.
	if b, err := os.ReadFile(filepath.Join(data, "machine-id")); err != nil || !strings.HasPrefix(out, string(b[:8])+"...") {
		t.Errorf("machine-id file %q (%v) vs list-machines %q", b, err, out)
	}
	unitFile := filepath.Join(t.TempDir(), "hello.service")
	os.WriteFile(unitFile, []byte("[Service]\nExecStart=/bin/sh -c 'echo hello from $PUBLIC_IP; exec sleep 1000'\n"), 0o644)
	if out, err := client("start", "--block-attempts", "60", unitFile); err != nil || !strings.Contains(out, "launched on") {
		t.Fatalf("start = %q, %v", out, err)
	}
	deadline = time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		out, _ = client("journal", "hello.service")
		if strings.Contains(out, "hello from 127.0.0.7") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(out, "hello from 127.0.0.7") {
		t.Errorf("journal = %q", out)
	}
}

// syncBuffer is a bytes.Buffer safe for the concurrent writers of serve's
// stderr (slog and the embedded etcd's logger).
type syncBuffer = testmain.SyncBuffer
