package embedetcd_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flotilla/flotilla/internal/embedetcd"
	"github.com/flotilla/flotilla/internal/pki"
	"github.com/flotilla/flotilla/internal/store"
)

func TestRefusesPlainHTTPOffLoopback(t *testing.T) {
	for name, opts := range map[string]embedetcd.Options{
		"client on 0.0.0.0":           {ClientAddr: "0.0.0.0:0"},
		"peer on 0.0.0.0":             {PeerAddr: "0.0.0.0:0"},
		"TLS without client CA":       {ClientAddr: "0.0.0.0:0", TLS: embedetcd.TLS{CertFile: "x", KeyFile: "y"}},
		"client on a named host":      {ClientAddr: "example.invalid:0"},
		"client on all IPv6 adresses": {ClientAddr: "[::]:0"},
	} {
		t.Run(name, func(t *testing.T) {
			opts.Fast = true
			srv, err := embedetcd.Start(context.Background(), opts)
			if err == nil {
				srv.Close()
				t.Fatal("started")
			}
			if !errors.Is(err, embedetcd.ErrInsecureAddress) || !strings.Contains(err.Error(), "--insecure") {
				t.Fatalf("error %v does not say what to do", err)
			}
		})
	}
	t.Run("insecure opt-out", func(t *testing.T) {
		srv, err := embedetcd.Start(context.Background(), embedetcd.Options{ClientAddr: "0.0.0.0:0", Insecure: true, Fast: true})
		if err != nil {
			t.Fatal(err)
		}
		srv.Close()
	})
}

// certs makes a CA, a server pair for loopback and a client pair in a temp dir.
func certs(t *testing.T) pki.Dir {
	t.Helper()
	d := pki.Dir(t.TempDir())
	ca, err := pki.NewCA(d, "test")
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.IssuePair(d, "m1", pki.ServerUsage, []string{"127.0.0.1", "localhost"}, pki.ServerCertFile, pki.ServerKeyFile); err != nil {
		t.Fatal(err)
	}
	if err := ca.IssuePair(d, "m1", pki.ClientUsage, nil, pki.ClientCertFile, pki.ClientKeyFile); err != nil {
		t.Fatal(err)
	}
	if err := pki.EnsureCRL(d, ca); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestMutualTLSOnAllAddresses serves on 0.0.0.0 with the cluster's TLS and
// connects over loopback: plain http, TLS without a client certificate and a
// certificate of another CA are refused; the machine's own pair works, until
// it is revoked.
func TestMutualTLSOnAllAddresses(t *testing.T) {
	ctx := context.Background()
	d := certs(t)
	other := pki.Dir(t.TempDir())
	oca, err := pki.NewCA(other, "other")
	if err != nil {
		t.Fatal(err)
	}
	if err := oca.IssuePair(other, "m1", pki.ClientUsage, nil, pki.ClientCertFile, pki.ClientKeyFile); err != nil {
		t.Fatal(err)
	}
	srv, err := embedetcd.Start(ctx, embedetcd.Options{
		ClientAddr: "0.0.0.0:0", PeerAddr: "0.0.0.0:0", Fast: true,
		TLS: embedetcd.TLS{CertFile: d.Path(pki.ServerCertFile), KeyFile: d.Path(pki.ServerKeyFile),
			ClientCAFile: d.Path(pki.CAFile), CRLFile: d.Path(pki.CRLFile)},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if !strings.HasPrefix(srv.Endpoint(), "https://127.0.0.1:") || !strings.HasPrefix(srv.PeerURL(), "https://127.0.0.1:") {
		t.Fatalf("endpoint %s, peer %s: want https on the advertised loopback", srv.Endpoint(), srv.PeerURL())
	}
	port := srv.Endpoint()[strings.LastIndex(srv.Endpoint(), ":"):]
	open := func(scheme string, mod func(*store.Config)) error {
		cfg := store.Default()
		cfg.Endpoints = []string{scheme + "://127.0.0.1" + port}
		cfg.DialTimeout = 2 * time.Second
		mod(&cfg)
		c, err := store.Open(ctx, cfg)
		if err == nil {
			c.Close()
		}
		return err
	}
	good := func(c *store.Config) {
		c.CACert, c.Cert, c.Key = d.Path(pki.CAFile), d.Path(pki.ClientCertFile), d.Path(pki.ClientKeyFile)
	}
	for name, tc := range map[string]struct {
		scheme string
		mod    func(*store.Config)
	}{
		"plain http":         {"http", func(*store.Config) {}},
		"TLS without client": {"https", func(c *store.Config) { c.CACert = d.Path(pki.CAFile) }},
		"client of another CA": {"https", func(c *store.Config) {
			c.CACert, c.Cert, c.Key = d.Path(pki.CAFile), other.Path(pki.ClientCertFile), other.Path(pki.ClientKeyFile)
		}},
		"server not verifiable": {"https", func(c *store.Config) {
			c.CACert, c.Cert, c.Key = other.Path(pki.CAFile), d.Path(pki.ClientCertFile), d.Path(pki.ClientKeyFile)
		}},
	} {
		if err := open(tc.scheme, tc.mod); err == nil {
			t.Errorf("%s: connected", name)
		}
	}
	if err := open("https", good); err != nil {
		t.Fatalf("machine's own certificate: %v", err)
	}
	if _, n, err := pki.Revoke(d, "m1"); err != nil || n != 2 {
		t.Fatalf("revoke: %d %v", n, err)
	}
	if err := open("https", good); err == nil {
		t.Fatal("revoked certificate connected")
	}
}

// TestCompactionBoundsHistory writes revisions continuously and checks that
// the server compacts on its own: the oldest readable revision moves forward.
func TestCompactionBoundsHistory(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := embedetcd.Start(ctx, embedetcd.Options{Fast: true, CompactionRetention: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint()}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	var first int64
	for i := 0; ; i++ {
		r, err := cli.Put(ctx, "/k", fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		if first == 0 {
			first = r.Header.Revision
		}
		if _, err := cli.Get(ctx, "/k", clientv3.WithRev(first)); err != nil {
			if !strings.Contains(err.Error(), "compacted") {
				t.Fatal(err)
			}
			t.Logf("revision %d compacted after %d writes", first, i)
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("revision %d still readable after %d writes: no compaction", first, i)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func TestNoCompactionWhenDisabled(t *testing.T) {
	ctx := context.Background()
	srv, err := embedetcd.Start(ctx, embedetcd.Options{Fast: true, CompactionRetention: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint()}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	r, _ := cli.Put(ctx, "/k", "0")
	for i := 0; i < 40; i++ {
		cli.Put(ctx, "/k", fmt.Sprint(i))
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := cli.Get(ctx, "/k", clientv3.WithRev(r.Header.Revision)); err != nil {
		t.Fatalf("history compacted with compaction disabled: %v", err)
	}
}
