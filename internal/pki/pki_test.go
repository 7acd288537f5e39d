package pki_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/flotilla/flotilla/internal/pki"
	"github.com/flotilla/flotilla/internal/testmain"
)

func TestTokenRoundTrip(t *testing.T) {
	tok := pki.Token{Secret: "0123456789abcdef0123"}
	tok.CAFingerprint[0], tok.CAFingerprint[31] = 0xab, 0xcd
	got, err := pki.ParseToken(" " + tok.String() + "\n")
	if err != nil || got != tok {
		t.Fatalf("ParseToken(%s) = %+v, %v", tok, got, err)
	}
	for name, s := range map[string]string{
		"empty":          "",
		"other version":  "flt2." + strings.Repeat("a", 64) + ".0123456789abcdef",
		"short hash":     "flt1.abcd.0123456789abcdef",
		"not hex":        "flt1." + strings.Repeat("z", 64) + ".0123456789abcdef",
		"short secret":   "flt1." + strings.Repeat("a", 64) + ".short",
		"too many parts": "flt1." + strings.Repeat("a", 64) + ".0123456789abcdef.x",
	} {
		if _, err := pki.ParseToken(s); !errors.Is(err, pki.ErrBadToken) {
			t.Errorf("%s: %v, want ErrBadToken", name, err)
		}
	}
}

// cluster is a CA directory with a join endpoint serving it.
type cluster struct {
	dir  pki.Dir
	addr string
	tok  pki.Token
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	d := pki.Dir(t.TempDir())
	ca, err := pki.NewCA(d, "test")
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.IssuePair(d, "first", pki.ServerUsage, []string{"127.0.0.1"}, pki.ServerCertFile, pki.ServerKeyFile); err != nil {
		t.Fatal(err)
	}
	if err := pki.EnsureCRL(d, ca); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.NewSecret(d, time.Hour); err != nil {
		t.Fatal(err)
	}
	tok, _, err := pki.TokenFor(d)
	if err != nil {
		t.Fatal(err)
	}
	tcfg, err := pki.ServerTLS(d)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &pki.JoinHandler{Dir: d, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Endpoints: func(context.Context) ([]string, error) { return []string{"https://127.0.0.1:2379"}, nil }}
	srv := &http.Server{Handler: h, TLSConfig: tcfg}
	go srv.ServeTLS(l, "", "")
	t.Cleanup(func() { srv.Close() })
	return &cluster{dir: d, addr: l.Addr().String(), tok: tok}
}

func TestJoin(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t)
	req := pki.JoinRequest{Machine: "m2", Hosts: []string{"127.0.0.2"}}

	t.Run("good token", func(t *testing.T) {
		j, err := pki.Join(ctx, c.addr, c.tok, req)
		if err != nil {
			t.Fatal(err)
		}
		d := pki.Dir(t.TempDir() + "/pki")
		if err := j.Write(d); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{pki.CAFile, pki.ClientCertFile, pki.ClientKeyFile, pki.ServerCertFile, pki.ServerKeyFile, pki.CRLFile, pki.EndpointsFile} {
			if !d.Exists(f) {
				t.Errorf("%s not written", f)
			}
		}
		if st, _ := os.Stat(d.Path(pki.ClientKeyFile)); st == nil || st.Mode().Perm() != 0o600 {
			t.Errorf("client key mode %v", st.Mode())
		}
		if eps, _ := pki.Endpoints(d); len(eps) != 1 {
			t.Errorf("endpoints %v", eps)
		}
		if s, err := pki.Issued(c.dir, "m2"); err != nil || len(s) != 2 {
			t.Errorf("issued to m2: %v %v", s, err)
		}
	})
	t.Run("wrong secret", func(t *testing.T) {
		bad := c.tok
		bad.Secret = strings.Repeat("0", 48)
		if _, err := pki.Join(ctx, c.addr, bad, req); !errors.Is(err, pki.ErrTokenRefused) {
			t.Fatalf("err %v, want ErrTokenRefused", err)
		}
	})
	t.Run("other cluster's fingerprint", func(t *testing.T) {
		bad := c.tok
		bad.CAFingerprint[0] ^= 1
		_, err := pki.Join(ctx, c.addr, bad, req)
		if err == nil || !strings.Contains(err.Error(), "fingerprint") {
			t.Fatalf("err %v, want a fingerprint mismatch", err)
		}
	})
	t.Run("rotated", func(t *testing.T) {
		old := c.tok
		if _, err := pki.NewSecret(c.dir, time.Hour); err != nil {
			t.Fatal(err)
		}
		if _, err := pki.Join(ctx, c.addr, old, req); !errors.Is(err, pki.ErrTokenRefused) {
			t.Fatalf("old token after rotation: %v", err)
		}
		c.tok, _, _ = pki.TokenFor(c.dir)
		if _, err := pki.Join(ctx, c.addr, c.tok, req); err != nil {
			t.Fatalf("new token: %v", err)
		}
	})
	t.Run("expired", func(t *testing.T) {
		if _, err := pki.NewSecret(c.dir, -time.Second); err != nil {
			t.Fatal(err)
		}
		tok, _, _ := pki.TokenFor(c.dir)
		if _, err := pki.Join(ctx, c.addr, tok, req); !errors.Is(err, pki.ErrTokenRefused) {
			t.Fatalf("expired token: %v", err)
		}
	})
	t.Run("bad machine id", func(t *testing.T) {
		if _, err := pki.Join(ctx, c.addr, c.tok, pki.JoinRequest{Machine: "a/b"}); err == nil {
			t.Fatal("accepted")
		}
	})
}

func TestRevoke(t *testing.T) {
	c := newCluster(t)
	if _, _, err := pki.Revoke(c.dir, "nobody"); err == nil {
		t.Fatal("revoked a machine never issued")
	}
	der, n, err := pki.Revoke(c.dir, "first")
	if err != nil || n != 1 {
		t.Fatalf("revoke: %d %v", n, err)
	}
	crl, err := pki.ParseCRL(der)
	if err != nil || len(crl.RevokedCertificateEntries) != 1 {
		t.Fatalf("crl: %v", err)
	}
	// A copy elsewhere takes a newer list, ignores an older one and one of another CA.
	other := pki.Dir(t.TempDir())
	os.WriteFile(other.Path(pki.CAFile), mustRead(t, c.dir.Path(pki.CAFile)), 0o644)
	if err := pki.WriteCRL(other, der); err != nil {
		t.Fatal(err)
	}
	foreign := pki.Dir(t.TempDir())
	fca, _ := pki.NewCA(foreign, "x")
	pki.EnsureCRL(foreign, fca)
	if err := pki.WriteCRL(other, mustRead(t, foreign.Path(pki.CRLFile))); err == nil {
		t.Fatal("installed a list of another CA")
	}
}

func mustRead(t *testing.T, p string) []byte {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, testmain.LeakOptions()...) }
