package fleetapi_test

import (
	"context"
	"crypto/tls"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/fleetapi"
)

func TestListenRefusals(t *testing.T) {
	certs := etcdtest.NewCerts(t)
	full := fleetapi.TLSFiles{Cert: certs.ServerCert, Key: certs.ServerKey, CACert: certs.CA}
	for _, c := range []struct {
		addr string
		tf   fleetapi.TLSFiles
		want string
	}{
		{"http://0.0.0.0:0", fleetapi.TLSFiles{}, "plain http on a non-loopback address"},
		{"http://10.1.2.3:8080", full, "plain http on a non-loopback address"},
		{"https://127.0.0.1:0", fleetapi.TLSFiles{Cert: certs.ServerCert, Key: certs.ServerKey}, "https needs --api-cert, --api-key and --api-cacert"},
		{"tcp://127.0.0.1:1", fleetapi.TLSFiles{}, "want unix:///path, http://host:port or https://host:port"},
		{"unix://relative/x.sock", fleetapi.TLSFiles{}, "want unix:///absolute/path"},
		{"http://127.0.0.1", fleetapi.TLSFiles{}, "want http://host:port"},
		{"http://127.0.0.1:0/api", fleetapi.TLSFiles{}, "no path allowed"},
	} {
		l, err := fleetapi.Listen(c.addr, c.tf)
		if err == nil {
			l.Close()
			t.Errorf("Listen(%s) accepted", c.addr)
			continue
		}
		if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.addr) {
			t.Errorf("Listen(%s) = %v, want it to name the address and say %q", c.addr, err, c.want)
		}
	}
}

// TestListeners serves the API on a unix socket and over TLS with client
// certificates, and reaches it with the package's client.
func TestListeners(t *testing.T) {
	f := newFixture(t)
	f.machine("m1", "10.0.0.1", nil)
	certs := etcdtest.NewCerts(t)
	sock := filepath.Join(t.TempDir(), "fleet.sock")
	lu, err := fleetapi.Listen("unix://"+sock, fleetapi.TLSFiles{})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode: %v %v, want 0660", fi.Mode(), err)
	}
	addr := "https://" + etcdtest.FreeAddr(t)
	lt, err := fleetapi.Listen(addr, fleetapi.TLSFiles{Cert: certs.ServerCert, Key: certs.ServerKey, CACert: certs.CA})
	if err != nil {
		lu.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(f.ctx)
	done := make(chan error, 1)
	go func() { done <- fleetapi.Serve(ctx, f.srv, lu, lt) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if _, err := os.Stat(sock); !os.IsNotExist(err) {
			t.Errorf("socket left behind: %v", err)
		}
	}()
	good, err := certs.ClientTLS()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, endpoint string
		tc             *tls.Config
	}{
		{"unix", "unix://" + sock, nil},
		{"https", addr, good},
	} {
		cl, err := fleetapi.NewClient(c.endpoint, c.tc)
		if err != nil {
			t.Fatal(err)
		}
		ms, err := cl.Machines(f.ctx)
		cl.Close()
		if err != nil || len(ms) != 1 || ms[0].ID != "m1" {
			t.Errorf("%s: machines %v, %v", c.name, ms, err)
		}
	}
	// Without a client certificate, or with one from another CA: refused.
	foreign, err := tls.LoadX509KeyPair(certs.ForeignClientCert, certs.ForeignClientKey)
	if err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*tls.Config){
		"no client cert":      func(c *tls.Config) { c.Certificates = nil },
		"foreign client cert": func(c *tls.Config) { c.Certificates = []tls.Certificate{foreign} },
	} {
		tc := good.Clone()
		mod(tc)
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}
		resp, err := hc.Get(addr + "/fleet/v1/machines")
		if err == nil {
			resp.Body.Close()
			t.Errorf("%s: answered %d", name, resp.StatusCode)
		}
		hc.CloseIdleConnections()
	}
}
