package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/flotilla/flotilla/internal/cmdline"
	"github.com/flotilla/flotilla/internal/embedetcd"
	"github.com/flotilla/flotilla/internal/pki"
	"github.com/flotilla/flotilla/internal/store"
)

// defaultJoinPort is the join endpoint's port when --join-listen is not given.
const defaultJoinPort = "2378"

// maxMembers is how many machines become embedded etcd members; later ones
// are clients.
const maxMembers = 3

// crlKey is where the cluster's revocation list is published (under the
// scheduler prefix) for every member to install.
func crlKey(prefix string) string { return strings.TrimSuffix(prefix, "/") + "/pki/crl" }

func pkiDir(dataDir string) pki.Dir { return pki.Dir(filepath.Join(dataDir, "pki")) }

// secureOptions are serve's flags about TLS and joining.
type secureOptions struct {
	insecure   bool
	join       string
	token      string
	joinListen string
	tokenTTL   time.Duration
}

// checkSecureFlags refuses combinations that cannot do what they say.
func (o *serveOptions) checkSecureFlags(getenv func(string) string) error {
	if o.sec.token == "" && o.sec.join != "" {
		o.sec.token = getenv("FLOTILLA_TOKEN")
	}
	endpoints := len(o.store.Endpoints) > 0 || getenv("FLOTILLA_ENDPOINTS") != "" || getenv("ETCDCTL_ENDPOINTS") != ""
	switch {
	case o.sec.insecure && endpoints:
		return cmdline.Usagef("--insecure: only for the embedded etcd (no --endpoints, FLOTILLA_ENDPOINTS or ETCDCTL_ENDPOINTS)")
	case o.sec.token != "" && o.sec.join == "":
		return cmdline.Usagef("--token: only with --join HOST:PORT")
	case o.sec.join != "" && endpoints:
		return cmdline.Usagef("--join and --endpoints (or FLOTILLA_ENDPOINTS, ETCDCTL_ENDPOINTS): pick one (a joined machine learns its endpoints from the cluster)")
	case o.sec.join != "" && o.sec.insecure:
		return cmdline.Usagef("--join and --insecure: joining is over TLS only")
	case o.sec.tokenTTL <= 0:
		return cmdline.Usagef("--token-ttl %s: must be positive", o.sec.tokenTTL)
	}
	if o.sec.join != "" {
		if _, _, err := net.SplitHostPort(o.sec.join); err != nil {
			if strings.ContainsAny(o.sec.join, ":/ ") {
				return cmdline.Usagef("--join %q: want HOST or HOST:PORT: %v", o.sec.join, err)
			}
			o.sec.join = net.JoinHostPort(o.sec.join, defaultJoinPort)
		}
		if _, port, _ := net.SplitHostPort(o.sec.join); port == "" || strings.Trim(port, "0123456789") != "" {
			return cmdline.Usagef("--join %q: want HOST or HOST:PORT", o.sec.join)
		}
	}
	return nil
}

// joinFirst joins the cluster named by --join when this machine has no
// credentials yet. It writes nothing: a refused token leaves no file.
func joinFirst(ctx context.Context, o *serveOptions, ip string) (*pki.Joined, error) {
	if o.sec.join == "" || pkiDir(o.dataDir).Exists(pki.ClientCertFile) {
		return nil, nil
	}
	if o.sec.token == "" {
		return nil, cmdline.Usagef("--join %s: this machine has not joined yet: give --token (or FLOTILLA_TOKEN); `scheduler token` prints it on the first machine", o.sec.join)
	}
	tok, err := pki.ParseToken(o.sec.token)
	if err != nil {
		return nil, cmdline.Usagef("--token: %v", err)
	}
	if o.machineID == "" {
		id, err := unpersistedMachineID(o.dataDir)
		if err != nil {
			return nil, err
		}
		o.machineID = id
	}
	req := pki.JoinRequest{Machine: o.machineID, Hosts: certHosts(ip, o.etcdListen)}
	if !embedetcd.IsLoopback(o.etcdListen) {
		peer, err := o.peerAddr()
		if err != nil {
			return nil, err
		}
		o.etcdPeer = peer
		_, port, _ := net.SplitHostPort(peer)
		req.PeerURL = "https://" + net.JoinHostPort(ip, port)
	}
	j, err := pki.Join(ctx, o.sec.join, tok, req)
	if err != nil {
		return nil, err
	}
	return j, nil
}

// unpersistedMachineID is machineID without writing anything.
func unpersistedMachineID(dataDir string) (string, error) {
	if b, err := os.ReadFile(filepath.Join(dataDir, "machine-id")); err == nil {
		if id := strings.TrimSpace(string(b)); id != "" {
			return id, nil
		}
	}
	if filepath.Clean(dataDir) == defaultDataDir {
		if b, err := os.ReadFile("/etc/machine-id"); err == nil {
			if id := strings.TrimSpace(string(b)); id != "" {
				return id, nil
			}
		}
	}
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// certHosts are the names a machine's server certificate is valid for.
func certHosts(ip, listen string) []string {
	hosts := []string{ip, "127.0.0.1", "localhost"}
	if h, _, err := net.SplitHostPort(listen); err == nil {
		if p := net.ParseIP(h); (p == nil || !p.IsUnspecified()) && h != ip && h != "" {
			hosts = append(hosts, h)
		}
	}
	return hosts
}

// peerAddr is --etcd-peer-listen, else the client port + 1 on the same host,
// else (client port 0) a free port on that host.
func (o *serveOptions) peerAddr() (string, error) {
	if o.etcdPeer != "" {
		return o.etcdPeer, nil
	}
	host, port, err := net.SplitHostPort(o.etcdListen)
	if err != nil {
		return "", cmdline.Usagef("--etcd-listen %q: %v", o.etcdListen, err)
	}
	if p, _ := strconv.Atoi(port); p != 0 {
		return net.JoinHostPort(host, strconv.Itoa(p+1)), nil
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", fmt.Errorf("etcd peer address: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// secureEtcd is the etcd side of serve: an embedded server (plain on
// loopback, mutual TLS elsewhere) or the credentials of a joined client.
type secureEtcd struct {
	srv     *embedetcd.Server
	dir     pki.Dir
	secure  bool
	signer  bool // holds the CA key: serves the join endpoint
	others  []string
	log     *slog.Logger
	closers []func()
}

func (s *secureEtcd) Close() {
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i]()
	}
}

// startEtcd sets o.store's endpoints and credentials: it starts the embedded
// etcd when no endpoint was given, creating the cluster CA on the first
// start off loopback, or uses what a join stored.
func startEtcd(ctx context.Context, o *serveOptions, id, ip string, joined *pki.Joined, log *slog.Logger, stdout, stderr io.Writer) (*secureEtcd, error) {
	s := &secureEtcd{dir: pkiDir(o.dataDir), log: log}
	if len(o.store.Endpoints) > 0 {
		return s, nil
	}
	etcdDir := filepath.Join(o.dataDir, "etcd")
	_, err := os.Stat(filepath.Join(etcdDir, "member"))
	hasData := err == nil
	initial := ""
	switch {
	case joined != nil:
		if err := joined.Write(s.dir); err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(o.dataDir, "machine-id"), []byte(id+"\n"), 0o644); err != nil {
			return nil, fmt.Errorf("persist machine id: %w", err)
		}
		s.secure, s.others = true, joined.Response.Endpoints
		initial = joined.Response.InitialCluster
		log.Info("joined the cluster", "join", o.sec.join, "member", initial != "")
		if initial == "" {
			return s, s.useClient(o)
		}
	case s.dir.Exists(pki.ClientCertFile):
		if o.sec.insecure {
			return nil, cmdline.Usagef("--insecure: this machine has cluster credentials in %s and serves mutual TLS; drop --insecure", s.dir)
		}
		s.secure = true
		s.others, _ = pki.Endpoints(s.dir)
		if !hasData {
			return s, s.useClient(o)
		}
	case !embedetcd.IsLoopback(o.etcdListen) && !o.sec.insecure:
		if err := s.createCA(id, ip, o, stdout); err != nil {
			return nil, err
		}
		s.secure = true
	}
	s.signer = s.dir.Exists(pki.CAKeyFile)
	opts := embedetcd.Options{
		Name: "flotilla", DataDir: etcdDir,
		ClientAddr: o.etcdListen, PeerAddr: o.etcdPeer, LogOutput: stderr,
	}
	if s.secure {
		peer, err := o.peerAddr()
		if err != nil {
			return nil, err
		}
		opts.Name, opts.PeerAddr, opts.AdvertiseHost = id, peer, ip
		opts.InitialCluster = initial
		opts.TLS = embedetcd.TLS{
			CertFile: s.dir.Path(pki.ServerCertFile), KeyFile: s.dir.Path(pki.ServerKeyFile),
			ClientCAFile: s.dir.Path(pki.CAFile), CRLFile: s.dir.Path(pki.CRLFile),
		}
	} else if o.sec.insecure && !embedetcd.IsLoopback(o.etcdListen) {
		opts.Insecure = true
		log.Warn("INSECURE: embedded etcd serves plain http without authentication on a network address (--insecure): anyone who reaches " +
			o.etcdListen + " can submit units that every machine runs; drop --insecure to get mutual TLS and a join token")
	}
	srv, err := embedetcd.Start(ctx, opts)
	if err != nil {
		return nil, err
	}
	s.srv = srv
	s.closers = append(s.closers, func() { srv.Close() })
	log.Info("embedded etcd serving", "endpoint", srv.Endpoint(), "data", srv.DataDir(), "tls", s.secure)
	if !s.secure {
		o.store.Endpoints = []string{srv.Endpoint()}
		return s, nil
	}
	eps := []string{srv.Endpoint()}
	for _, e := range s.others {
		if e != srv.Endpoint() {
			eps = append(eps, e)
		}
	}
	if err := pki.WriteEndpoints(s.dir, eps); err != nil {
		return nil, err
	}
	if srv.IsLearner() {
		if err := s.promote(ctx, o); err != nil {
			s.Close()
			return nil, err
		}
	}
	o.store.Endpoints = eps
	o.store.CACert, o.store.Cert, o.store.Key = s.dir.Path(pki.CAFile), s.dir.Path(pki.ClientCertFile), s.dir.Path(pki.ClientKeyFile)
	return s, nil
}

// useClient points o.store at the cluster with this machine's credentials.
func (s *secureEtcd) useClient(o *serveOptions) error {
	if len(s.others) == 0 {
		return fmt.Errorf("machine credentials in %s: no etcd endpoints known", s.dir)
	}
	o.store.Endpoints = s.others
	o.store.CACert, o.store.Cert, o.store.Key = s.dir.Path(pki.CAFile), s.dir.Path(pki.ClientCertFile), s.dir.Path(pki.ClientKeyFile)
	s.log.Info("etcd client of the cluster", "endpoints", strings.Join(s.others, ","))
	return nil
}

// createCA makes the cluster CA, this machine's certificates, an empty
// revocation list and a join secret, and prints the token once.
func (s *secureEtcd) createCA(id, ip string, o *serveOptions, stdout io.Writer) error {
	ca, err := pki.NewCA(s.dir, id)
	if err != nil {
		return err
	}
	if err := ca.IssuePair(s.dir, id, pki.ServerUsage, certHosts(ip, o.etcdListen), pki.ServerCertFile, pki.ServerKeyFile); err != nil {
		return err
	}
	if err := ca.IssuePair(s.dir, id, pki.ClientUsage, nil, pki.ClientCertFile, pki.ClientKeyFile); err != nil {
		return err
	}
	if err := pki.EnsureCRL(s.dir, ca); err != nil {
		return err
	}
	if _, err := pki.NewSecret(s.dir, o.sec.tokenTTL); err != nil {
		return err
	}
	tok, sec, err := pki.TokenFor(s.dir)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Created the cluster CA in %s.\nJoin token (valid until %s; `scheduler token` prints it again):\n%s\n",
		s.dir, sec.Expires.Format(time.RFC3339), tok)
	return nil
}

// promote makes this learner a voting member, through the other members.
func (s *secureEtcd) promote(ctx context.Context, o *serveOptions) error {
	cfg := store.Default()
	cfg.Endpoints = nil
	for _, e := range s.others {
		if e != s.srv.Endpoint() {
			cfg.Endpoints = append(cfg.Endpoints, e)
		}
	}
	if len(cfg.Endpoints) == 0 {
		return errors.New("promote etcd learner: no other member known")
	}
	cfg.CACert, cfg.Cert, cfg.Key = s.dir.Path(pki.CAFile), s.dir.Path(pki.ClientCertFile), s.dir.Path(pki.ClientKeyFile)
	c, err := store.Open(ctx, cfg)
	if err != nil {
		return fmt.Errorf("promote etcd learner: %w", err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for {
		err := c.Promote(ctx, s.srv.MemberID())
		if err == nil {
			s.log.Info("etcd member promoted to voter")
			return nil
		}
		if !store.IsNotReadyToPromote(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("promote etcd learner: %w", err)
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// run serves the join endpoint (on the machine holding the CA) and installs
// the cluster's revocation list as it changes, until ctx is done.
func (s *secureEtcd) run(ctx context.Context, o *serveOptions, c *store.Client) error {
	if !s.secure {
		return nil
	}
	if s.signer && s.srv != nil {
		hs, l, err := s.joinServer(o, c)
		if err != nil {
			return err
		}
		done := make(chan struct{})
		go func() { defer close(done); hs.ServeTLS(l, "", "") }()
		defer func() { hs.Close(); <-done }()
		s.log.Info("join endpoint serving", "addr", l.Addr().String())
	}
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for i := 0; ; i++ {
		if kv, ok, _, err := c.Get(ctx, crlKey(o.prefix)); err == nil && ok {
			if err := pki.WriteCRL(s.dir, kv.Value); err != nil {
				s.log.Warn("revocation list from the cluster refused", "err", err)
			}
		}
		if i%5 == 0 {
			s.syncEndpoints(ctx, c)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// joinServer makes the join endpoint's server and listener.
// syncEndpoints follows the cluster's membership: the client talks to every
// voting member, and the endpoints file (what this machine's CLI and its next
// start use) lists them, this machine's own member first.
func (s *secureEtcd) syncEndpoints(ctx context.Context, c *store.Client) {
	eps, err := c.SyncEndpoints(ctx)
	if err != nil || len(eps) == 0 {
		return
	}
	if s.srv != nil {
		own := []string{s.srv.Endpoint()}
		for _, e := range eps {
			if e != own[0] {
				own = append(own, e)
			}
		}
		eps = own
	}
	if old, _ := pki.Endpoints(s.dir); strings.Join(old, ",") != strings.Join(eps, ",") {
		if err := pki.WriteEndpoints(s.dir, eps); err != nil {
			s.log.Warn("update endpoints file", "err", err)
			return
		}
		s.log.Info("etcd endpoints updated", "endpoints", strings.Join(eps, ","))
	}
}

func (s *secureEtcd) joinServer(o *serveOptions, c *store.Client) (*http.Server, net.Listener, error) {
	addr := o.sec.joinListen
	if addr == "" {
		host, _, _ := net.SplitHostPort(o.etcdListen)
		addr = net.JoinHostPort(host, defaultJoinPort)
	}
	tcfg, err := pki.ServerTLS(s.dir)
	if err != nil {
		return nil, nil, err
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("join endpoint: %w", err)
	}
	h := &pki.JoinHandler{Dir: s.dir, Logger: s.log.With("component", "join"),
		Endpoints: func(ctx context.Context) ([]string, error) {
			ms, err := c.Members(ctx)
			if err != nil {
				return nil, err
			}
			var eps []string
			for _, m := range ms {
				if !m.IsLearner {
					eps = append(eps, m.ClientURLs...)
				}
			}
			return eps, nil
		},
		AddMember: func(ctx context.Context, name, peerURL string) (string, error) {
			ms, err := c.Members(ctx)
			if err != nil {
				return "", err
			}
			if len(ms) >= maxMembers {
				return "", nil
			}
			var parts []string
			for _, m := range ms {
				if m.Name == name {
					return "", fmt.Errorf("machine %s is already a member", name)
				}
				if m.Name != "" && len(m.PeerURLs) > 0 {
					parts = append(parts, m.Name+"="+m.PeerURLs[0])
				}
			}
			// etcd refuses a reconfiguration until the leader has been
			// connected to a quorum for a while (e.g. right after the
			// previous member joined): retry for a bounded time.
			for tries := 0; ; tries++ {
				_, err := c.AddLearner(ctx, peerURL)
				if err == nil {
					break
				}
				if !store.IsUnhealthy(err) || tries >= 60 {
					return "", err
				}
				select {
				case <-ctx.Done():
					return "", ctx.Err()
				case <-time.After(500 * time.Millisecond):
				}
			}
			return strings.Join(append(parts, name+"="+peerURL), ","), nil
		},
	}
	hs := &http.Server{Handler: h, TLSConfig: tcfg, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)}
	return hs, l, nil
}

// tokenCmd prints the join token, after replacing it with --rotate.
func tokenCmd(o *options, stdout io.Writer) error {
	d := pkiDir(o.dataDir)
	if !d.Exists(pki.CAKeyFile) {
		return fmt.Errorf("token: %s holds no cluster CA: run this on the first machine of the cluster (or give its --data-dir)", d)
	}
	if o.rotate {
		if o.tokenTTL <= 0 {
			return cmdline.Usagef("--token-ttl %s: must be positive", o.tokenTTL)
		}
		if _, err := pki.NewSecret(d, o.tokenTTL); err != nil {
			return err
		}
	}
	tok, sec, err := pki.TokenFor(d)
	if err != nil {
		return err
	}
	if time.Now().After(sec.Expires) {
		return fmt.Errorf("token: expired at %s: make a new one with `scheduler token --rotate`", sec.Expires.Format(time.RFC3339))
	}
	fmt.Fprintln(stdout, tok)
	return nil
}

// revokeCmd removes a machine's etcd member (first, while its peer
// connection still works), then revokes every certificate issued to it and
// publishes the revocation list for every member to install.
func (cl *client) revokeCmd(ctx context.Context, args []string) error {
	machine := args[0]
	d := pkiDir(cl.o.dataDir)
	if !d.Exists(pki.CAKeyFile) {
		return fmt.Errorf("revoke %s: %s holds no cluster CA: run this on the first machine of the cluster", machine, d)
	}
	if issued, err := pki.Issued(d, machine); err != nil || len(issued) == 0 {
		return fmt.Errorf("revoke %s: no certificate was issued to that machine here (%v)", machine, err)
	}
	c := cl.reg.Client()
	ms, err := c.Members(ctx)
	if err != nil {
		return err
	}
	for _, m := range ms {
		if m.Name != machine {
			continue
		}
		// etcd refuses a reconfiguration until its leader has been connected
		// to a quorum for a few seconds (e.g. just after a restart): retry.
		for tries := 0; ; tries++ {
			err := c.RemoveMember(ctx, m.ID)
			if err == nil {
				break
			}
			if !store.IsUnhealthy(err) || tries >= 60 {
				return err
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(500 * time.Millisecond):
			}
		}
		fmt.Fprintf(cl.stdout, "removed etcd member %s\n", machine)
	}
	crl, n, err := pki.Revoke(d, machine)
	if err != nil {
		return err
	}
	// The client may still be talking to the member just removed ("raft:
	// stopped"): point it at the members left, and try again.
	for tries := 0; ; tries++ {
		_, err := c.Put(ctx, crlKey(cl.o.prefix), string(crl), 0)
		if err == nil {
			break
		}
		if tries >= 10 || ctx.Err() != nil {
			return fmt.Errorf("revoke %s: publish revocation list: %w", machine, err)
		}
		c.SyncEndpoints(ctx)
		select {
		case <-ctx.Done():
		case <-time.After(300 * time.Millisecond):
		}
	}
	fmt.Fprintf(cl.stdout, "revoked %d certificate(s) of %s\n", n, machine)
	return nil
}
