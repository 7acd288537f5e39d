// Package embedetcd runs a single-node etcd server inside the current process.
//
// It is what `scheduler serve` starts when no etcd endpoints are given, and what
// tests use to get a fresh, real etcd in well under a second. It lives apart from
// internal/store so that programs that only talk to etcd (announce, render) do not
// link the server.
package embedetcd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"sync"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Options configures Start. The zero value starts a server with a temporary data
// directory, listening for clients on a free loopback port.
type Options struct {
	// Name is the member name; default "flotilla".
	Name string
	// DataDir holds the server's data. Empty means a temporary directory that
	// Close removes.
	DataDir string
	// ClientAddr is the host:port clients connect to; default 127.0.0.1 on a free
	// port. A port of 0 also means a free port.
	ClientAddr string
	// PeerAddr is the host:port of the peer listener; default 127.0.0.1 on a free port.
	PeerAddr string
	// Fast trades durability for speed (no fsync, short election ticks). Meant for
	// tests and demos, never for data that must survive a crash.
	Fast bool
	// LogOutput receives the server's own logs at warning level and above;
	// nil discards them.
	LogOutput io.Writer
	// TLS, when CertFile is set, serves clients over https; with ClientCAFile
	// set, clients must present a certificate signed by it. When TLS.CertFile
	// is set, the peer listener uses the same pair and requires peers to
	// present a certificate of ClientCAFile too.
	TLS TLS
	// AdvertiseHost is the host other machines reach this server at, used in
	// the advertised client and peer URLs when a listen address has an
	// unspecified host (0.0.0.0 or ::); default 127.0.0.1.
	AdvertiseHost string
	// Insecure allows plain http on an address that is not loopback. Without
	// it, Start refuses such an address unless TLS with client certificates
	// is configured: anyone who can reach the port could otherwise change
	// what every machine runs.
	Insecure bool
	// InitialCluster, when set, joins an existing cluster: it is etcd's
	// --initial-cluster (name=peerURL,...) including this member, which must
	// already have been added (as a learner or voter) by a member.
	InitialCluster string
	// CompactionRetention is how much revision history the server keeps
	// (periodic auto-compaction); default DefaultCompactionRetention.
	// Negative disables compaction.
	CompactionRetention time.Duration
	// ReadyTimeout bounds how long Start waits for the server to serve; default 30s.
	ReadyTimeout time.Duration
}

// DefaultCompactionRetention is the revision history an embedded server
// keeps: older revisions are compacted, so the store does not grow forever
// with every lease renewal and status write.
const DefaultCompactionRetention = 10 * time.Minute

// TLS names PEM files for the client (and peer) listeners.
type TLS struct {
	CertFile, KeyFile string
	ClientCAFile      string
	// CRLFile, if set, is a PEM revocation list consulted at every TLS
	// handshake (clients and peers): a revoked certificate cannot connect.
	CRLFile string
}

// ErrInsecureAddress is returned by Start for plain http off loopback.
var ErrInsecureAddress = errors.New("refusing to serve etcd in plain http on a non-loopback address: anyone reaching it could change what runs; " +
	"serve with TLS and client certificates (scheduler serve creates them in --data-dir), listen on 127.0.0.1, or pass --insecure")

// IsLoopback reports whether host:port listens on loopback only.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Server is a running embedded etcd. Close is safe to call more than once and
// from several goroutines.
type Server struct {
	etcd      *embed.Etcd
	endpoint  string
	dataDir   string
	removeDir bool
	peerAddr  string
	closeOnce sync.Once
	closed    chan struct{}
}

// Start starts a server and blocks until it serves clients or ctx is done.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if opts.Name == "" {
		opts.Name = "flotilla"
	}
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = 30 * time.Second
	}
	secure := opts.TLS.CertFile != "" && opts.TLS.ClientCAFile != ""
	if !secure && !opts.Insecure {
		for _, a := range []string{opts.ClientAddr, opts.PeerAddr} {
			if a != "" && !IsLoopback(a) {
				return nil, fmt.Errorf("embedded etcd on %s: %w", a, ErrInsecureAddress)
			}
		}
	}
	if opts.CompactionRetention == 0 {
		opts.CompactionRetention = DefaultCompactionRetention
	}
	s := &Server{closed: make(chan struct{})}
	if opts.DataDir == "" {
		dir, err := os.MkdirTemp("", "flotilla-etcd-")
		if err != nil {
			return nil, fmt.Errorf("embedded etcd: create data dir: %w", err)
		}
		opts.DataDir, s.removeDir = dir, true
	}
	s.dataDir = opts.DataDir

	var err error
	for attempt := 0; attempt < 5; attempt++ {
		err = s.start(ctx, opts)
		if err == nil {
			return s, nil
		}
		if !isAddrInUse(err) {
			break
		}
	}
	if s.removeDir {
		os.RemoveAll(s.dataDir)
	}
	return nil, err
}

func (s *Server) start(ctx context.Context, opts Options) error {
	clientAddr, err := resolveAddr(opts.ClientAddr)
	if err != nil {
		return fmt.Errorf("embedded etcd: client address %q: %w", opts.ClientAddr, err)
	}
	peerAddr, err := resolveAddr(opts.PeerAddr)
	if err != nil {
		return fmt.Errorf("embedded etcd: peer address %q: %w", opts.PeerAddr, err)
	}
	clientURL := url.URL{Scheme: "http", Host: clientAddr}
	if opts.TLS.CertFile != "" {
		clientURL.Scheme = "https"
	}
	peerURL := url.URL{Scheme: "http", Host: peerAddr}
	if opts.TLS.CertFile != "" {
		peerURL.Scheme = "https"
	}

	cfg := embed.NewConfig()
	cfg.Name = opts.Name
	cfg.Dir = opts.DataDir
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	clientURL, peerURL = advertised(clientURL, opts.AdvertiseHost), advertised(peerURL, opts.AdvertiseHost)
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = opts.Name + "=" + peerURL.String()
	cfg.InitialClusterToken = "flotilla-" + opts.Name
	if opts.InitialCluster != "" {
		cfg.InitialCluster = opts.InitialCluster
		cfg.ClusterState = embed.ClusterStateFlagExisting
	}
	if opts.CompactionRetention > 0 {
		cfg.AutoCompactionMode = "periodic"
		cfg.AutoCompactionRetention = opts.CompactionRetention.String()
	}
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(newLogger(opts.LogOutput))
	cfg.WarningUnaryRequestDuration = embed.DefaultWarningUnaryRequestDuration // zero: every request logged as slow
	if opts.TLS.CertFile != "" {
		cfg.ClientTLSInfo.CertFile = opts.TLS.CertFile
		cfg.ClientTLSInfo.KeyFile = opts.TLS.KeyFile
		cfg.ClientTLSInfo.TrustedCAFile = opts.TLS.ClientCAFile
		cfg.ClientTLSInfo.ClientCertAuth = opts.TLS.ClientCAFile != ""
		cfg.ClientTLSInfo.CRLFile = opts.TLS.CRLFile
		cfg.PeerTLSInfo = cfg.ClientTLSInfo
		cfg.PeerTLSInfo.ClientCertAuth = true
	}
	if opts.Fast {
		cfg.UnsafeNoFsync = true
		cfg.TickMs = 10
		cfg.ElectionMs = 100
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("embedded etcd: start on %s: %w", clientURL.String(), err)
	}
	timer := time.NewTimer(opts.ReadyTimeout)
	defer timer.Stop()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return fmt.Errorf("embedded etcd: start on %s: %w", clientURL.String(), err)
	case <-timer.C:
		e.Close()
		return fmt.Errorf("embedded etcd: not ready on %s within %s", clientURL.String(), opts.ReadyTimeout)
	case <-ctx.Done():
		e.Close()
		return fmt.Errorf("embedded etcd: start on %s: %w", clientURL.String(), ctx.Err())
	}
	s.etcd = e
	s.endpoint = clientURL.String()
	s.peerAddr = peerAddr
	return nil
}

// Endpoint returns the client URL, e.g. "http://127.0.0.1:41235".
func (s *Server) Endpoint() string { return s.endpoint }

// ClientAddr returns the host:port of the client listener.
func (s *Server) ClientAddr() string {
	u, _ := url.Parse(s.endpoint)
	return u.Host
}

// PeerAddr returns the host:port of the peer listener.
func (s *Server) PeerAddr() string { return s.peerAddr }

// PeerURL returns the advertised peer URL, e.g. "https://10.0.0.1:2380".
func (s *Server) PeerURL() string {
	if len(s.etcd.Config().AdvertisePeerUrls) == 0 {
		return ""
	}
	u := s.etcd.Config().AdvertisePeerUrls[0]
	return u.String()
}

// IsLearner reports whether this member is still a non-voting learner.
func (s *Server) IsLearner() bool { return s.etcd.Server.IsLearner() }

// DataDir returns the server's data directory.
func (s *Server) DataDir() string { return s.dataDir }

// Done is closed once Close has finished.
func (s *Server) Done() <-chan struct{} { return s.closed }

// Close stops the server and, if Start created the data directory, removes it.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.etcd.Close()
		if s.removeDir {
			os.RemoveAll(s.dataDir)
		}
		close(s.closed)
	})
	return nil
}

// advertised replaces an unspecified host in u by host (default 127.0.0.1).
func advertised(u url.URL, host string) url.URL {
	h, port, err := net.SplitHostPort(u.Host)
	if err != nil {
		return u
	}
	if ip := net.ParseIP(h); ip != nil && ip.IsUnspecified() {
		if host == "" {
			host = "127.0.0.1"
		}
		u.Host = net.JoinHostPort(host, port)
	}
	return u
}

func resolveAddr(addr string) (string, error) {
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	if port != "0" {
		return addr, nil
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func isAddrInUse(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "listen"
}

func newLogger(w io.Writer) *zap.Logger {
	if w == nil {
		return zap.NewNop()
	}
	enc := zapcore.NewConsoleEncoder(zap.NewProductionEncoderConfig())
	return zap.New(zapcore.NewCore(enc, zapcore.AddSync(w), zap.WarnLevel))
}

// MemberID returns this member's etcd id.
func (s *Server) MemberID() uint64 { return uint64(s.etcd.Server.MemberID()) }
