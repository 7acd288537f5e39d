package store_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/store"
)

func TestTLS(t *testing.T) {
	certs := etcdtest.NewCerts(t)
	srv := etcdtest.New(t, etcdtest.WithTLS(certs))
	ctx := ctxT(t)

	good := srv.Config()
	c, err := store.Open(ctx, good)
	if err != nil {
		t.Fatalf("Open with the right CA and client cert: %v", err)
	}
	if _, err := c.Put(ctx, "/tls", "ok", 0); err != nil {
		t.Fatal(err)
	}
	c.Close()

	tests := map[string]struct {
		mutate  func(*store.Config)
		wantErr string // or, when set, any of wantAny
		wantAny []string
	}{
		"wrong CA": {
			mutate:  func(c *store.Config) { c.CACert = certs.OtherCA },
			wantErr: "certificate signed by unknown authority",
		},
		"no client certificate": {
			mutate: func(c *store.Config) { c.Cert, c.Key = "", "" },
			// TLS 1.3 servers send certificate_required; Debian's etcd
			// binary (an older Go) bad_certificate.
			wantAny: []string{"TLS: remote error: tls: certificate required", "TLS: remote error: tls: bad certificate"},
		},
		"missing CA file": {
			mutate:  func(c *store.Config) { c.CACert = "/nonexistent/ca.pem" },
			wantErr: "read CA /nonexistent/ca.pem",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			cfg := srv.Config()
			cfg.DialTimeout = time.Second
			tc.mutate(&cfg)
			c, err := store.Open(ctx, cfg)
			if err == nil {
				c.Close()
				t.Fatal("Open succeeded")
			}
			want := tc.wantAny
			if tc.wantErr != "" {
				want = []string{tc.wantErr}
			}
			if !slices.ContainsFunc(want, func(w string) bool { return strings.Contains(err.Error(), w) }) {
				t.Errorf("error %q does not contain any of %q", err, want)
			}
			if !strings.Contains(err.Error(), srv.Endpoint()) && !strings.Contains(err.Error(), strings.TrimPrefix(srv.Endpoint(), "https://")) {
				t.Errorf("error %q does not name the endpoint", err)
			}
		})
	}
}

func TestAuth(t *testing.T) {
	srv := etcdtest.New(t)
	srv.EnableAuth("rootpw", "alice", "s3cret")
	ctx := ctxT(t)

	cfg := srv.Config()
	cfg.DialTimeout = 10 * time.Second // auth adds round trips; a loaded machine is slow
	cfg.Username, cfg.Password = "alice", "s3cret"
	c, err := store.Open(ctx, cfg)
	if err != nil {
		t.Fatalf("Open with the right password: %v", err)
	}
	if _, err := c.Put(ctx, "/auth", "ok", 0); err != nil {
		t.Fatal(err)
	}
	c.Close()

	cfg.Password = "wrong"
	if c, err := store.Open(ctx, cfg); err == nil {
		c.Close()
		t.Fatal("Open with a wrong password succeeded")
	} else if !strings.Contains(err.Error(), "authentication failed") {
		t.Errorf("wrong password error = %v", err)
	}

	anon := srv.Config()
	c, err = store.Open(ctx, anon)
	if err == nil {
		_, err = c.Put(ctx, "/anon", "x", 0)
		c.Close()
	}
	if err == nil {
		t.Error("an anonymous client could write with auth enabled")
	}
}

// TestEnsureRoleAndUserTwice: a second EnsureRole and EnsureUser find the
// role and the user there (etcd's "already exists"), and are no errors.
func TestEnsureRoleAndUserTwice(t *testing.T) {
	srv := etcdtest.New(t)
	c := srv.Client()
	ctx := ctxT(t)
	perms := []store.Perm{{Prefix: "/x/", Read: true}}
	for i, wantCreated := range []bool{true, false} {
		if err := c.EnsureRole(ctx, "reader", perms); err != nil {
			t.Fatalf("EnsureRole #%d: %v", i+1, err)
		}
		created, err := c.EnsureUser(ctx, "bob", "pw", "reader")
		if err != nil || created != wantCreated {
			t.Fatalf("EnsureUser #%d = %v, %v; want %v, nil", i+1, created, err, wantCreated)
		}
	}
}
