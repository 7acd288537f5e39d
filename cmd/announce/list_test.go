package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
)

func TestList(t *testing.T) {
	srv := etcdtest.New(t)
	c := srv.Client()
	for _, k := range []string{"web1", "web2"} {
		p := start(t, env(srv), "--detach", "--ttl", "20s", "/ls/"+k, k+" 10.0.0.1:80")
		if err := p.wait(t, 15*time.Second); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM) })
	}
	if _, err := c.Put(ctxT(t, 5*time.Second), "/ls/static", "s 10.0.0.9:80", 0); err != nil {
		t.Fatal(err)
	}
	c.Put(ctxT(t, 5*time.Second), "/lsx/other", "o 10.0.0.8:80", 0) // not under /ls/
	w := start(t, env(srv), "--withdraw", "/ls/web2", "web2 10.0.0.1:80")
	if err := w.wait(t, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	list := func(args ...string) string {
		var out, errb bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := runEnv(ctx, append([]string{"--endpoints", srv.Endpoint()}, args...), &out, &errb, func(string) string { return "" }); err != nil {
			t.Fatalf("--list %q: %v\n%s", args, err, errb.String())
		}
		return out.String()
	}
	var rows []listEntry
	if err := json.Unmarshal([]byte(list("--list", "--json", "/ls/")), &rows); err != nil {
		t.Fatal(err)
	}
	want := []struct{ key, state, value string }{
		{"/ls/static", "announced", "s 10.0.0.9:80"},
		{"/ls/web1", "announced", "web1 10.0.0.1:80"},
		{"/ls/web2", "withdrawn", ""},
	}
	if len(rows) != len(want) {
		t.Fatalf("--list --json: %+v, want %d rows", rows, len(want))
	}
	for i, w := range want {
		r := rows[i]
		if r.Key != w.key || r.State != w.state || r.Value != w.value {
			t.Errorf("row %d: %+v, want %+v", i, r, w)
		}
		leased := w.key != "/ls/static"
		if leased != (r.Lease != "" && r.TTL > 10 && r.TTL <= 20) {
			t.Errorf("row %d: lease %q ttl %ds (leased: %v, ttl 20s)", i, r.Lease, r.TTL, leased)
		}
	}
	table := list("--list", "/ls/")
	lines := strings.Split(strings.TrimSpace(table), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "KEY") || !strings.Contains(lines[1], "/ls/static  announced  -") ||
		!strings.Contains(lines[3], "/ls/web2") || !strings.Contains(lines[3], "withdrawn") {
		t.Errorf("--list table:\n%s", table)
	}
	t.Logf("--list /ls/:\n%s", table)
	if got := list("--list", "--json", "/none/"); strings.TrimSpace(got) != "[]" {
		t.Errorf("--list of an empty prefix: %q, want []", got)
	}
}
