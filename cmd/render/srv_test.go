package main

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/testmain"
)

// dnsServer answers the SRV records of etcd for the zone flotilla.test:
// _etcd-client._tcp.flotilla.test → etcd.flotilla.test:<port>, and the A
// record etcd.flotilla.test → 127.0.0.1. The port can change while it runs.
type dnsServer struct {
	port    atomic.Int32
	queries atomic.Int32
	srv     *dns.Server
}

const dnsAddr = "127.0.0.153" // resolv.conf has no port: the server is on 53

func startDNS(t *testing.T) *dnsServer {
	t.Helper()
	d := &dnsServer{}
	pc, err := net.ListenPacket("udp", dnsAddr+":53")
	if err != nil {
		t.Skipf("cannot serve DNS on %s:53: %v", dnsAddr, err)
	}
	d.srv = &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(d.serve)}
	started := make(chan struct{})
	d.srv.NotifyStartedFunc = func() { close(started) }
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.srv.ActivateAndServe()
	}()
	<-started
	t.Cleanup(func() {
		d.srv.Shutdown()
		<-done
	})
	return d
}

func (d *dnsServer) serve(w dns.ResponseWriter, q *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(q)
	m.Authoritative = true
	for _, qq := range q.Question {
		d.queries.Add(1)
		switch {
		case qq.Qtype == dns.TypeSRV && strings.EqualFold(qq.Name, "_etcd-client._tcp.flotilla.test."):
			m.Answer = append(m.Answer, &dns.SRV{
				Hdr:    dns.RR_Header{Name: qq.Name, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: 0},
				Target: "etcd.flotilla.test.", Port: uint16(d.port.Load()), Priority: 0, Weight: 0,
			})
		case qq.Qtype == dns.TypeA && strings.EqualFold(qq.Name, "etcd.flotilla.test."):
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: qq.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 0},
				A:   net.ParseIP("127.0.0.1"),
			})
		case strings.HasSuffix(strings.ToLower(qq.Name), "flotilla.test."):
			// known zone, no such record (AAAA, _etcd-client-ssl): empty answer
		default:
			m.Rcode = dns.RcodeNameError
		}
	}
	w.WriteMsg(m)
}

func etcdPort(t *testing.T, srv *etcdtest.Server) int {
	t.Helper()
	_, p, err := net.SplitHostPort(strings.TrimPrefix(srv.Endpoint(), "http://"))
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(p)
	return n
}

// renderInNamespace runs render (this test binary as render's main) in a
// private mount namespace whose /etc/resolv.conf names the test's DNS server.
func renderInNamespace(t *testing.T, ctx context.Context, args ...string) *exec.Cmd {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a private mount namespace")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("no unshare")
	}
	rc := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(rc, []byte("nameserver "+dnsAddr+"\noptions timeout:1 attempts:2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	js, _ := json.Marshal(args)
	cmd := exec.CommandContext(ctx, "unshare", "--mount", "--propagation", "private", "sh", "-c",
		`mount --bind "$1" /etc/resolv.conf && shift && exec "$@"`, "sh", rc, os.Args[0])
	cmd.Env = append(os.Environ(), envRunAsRender+"="+string(js), "GODEBUG=netdns=go")
	return cmd
}

// TestSRVDiscovery: -srv-domain and -srv-record find etcd through a DNS
// server the test runs (render resolves through it: its own resolv.conf in a
// private mount namespace), and a running render looks the record up again
// when its etcd goes away, following it to another etcd.
func TestSRVDiscovery(t *testing.T) {
	dnsd := startDNS(t)
	a := etcdtest.New(t, etcdtest.WithMode(etcdtest.Embedded))
	a.Client().Put(context.Background(), "/clusterstate/ns/a", "from-a 10.0.0.1:80", 0)
	dnsd.port.Store(int32(etcdPort(t, a)))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	for _, how := range [][]string{{"-srv-domain", "flotilla.test"}, {"-srv-record", "_etcd-client._tcp.flotilla.test"}} {
		dir, dest := confdir(t)
		cmd := renderInNamespace(t, ctx, append(how, "-confdir", dir, "-onetime", "-dial-timeout", "3s")...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("render %v: %v\n%s", how, err, out)
		}
		if b, _ := os.ReadFile(dest); !strings.Contains(string(b), "server from-a 10.0.0.1:80 check") {
			t.Fatalf("render %v: dest = %q", how, b)
		}
	}
	if dnsd.queries.Load() == 0 {
		t.Fatal("the DNS server was never asked")
	}

	// A running render follows the record to another etcd.
	dir, dest := confdir(t)
	cmd := renderInNamespace(t, ctx, "-srv-domain", "flotilla.test", "-confdir", dir, "-watch", "-dial-timeout", "1s")
	var logs testmain.SyncBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
		if t.Failed() {
			t.Logf("render log:\n%s", logs.String())
		}
	}()
	waitFor := func(what, want string) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			if b, _ := os.ReadFile(dest); strings.Contains(string(b), want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitFor("the first render from etcd A", "server from-a 10.0.0.1:80 check")
	b := etcdtest.New(t, etcdtest.WithMode(etcdtest.Embedded))
	b.Client().Put(context.Background(), "/clusterstate/ns/b", "from-b 10.0.0.2:80", 0)
	before := dnsd.queries.Load()
	dnsd.port.Store(int32(etcdPort(t, b)))
	a.Stop()
	waitFor("the render from etcd B, found again by SRV", "server from-b 10.0.0.2:80 check")
	if dnsd.queries.Load() == before {
		t.Error("render reached etcd B without asking DNS again")
	}
}
