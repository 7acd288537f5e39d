package pki

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// JoinPath is the join endpoint's URL path.
const JoinPath = "/v1/join"

// JoinRequest is what a joining machine sends.
type JoinRequest struct {
	Secret  string `json:"secret"`
	Machine string `json:"machine"`
	// Hosts are the IPs and names its server certificate is valid for.
	Hosts []string `json:"hosts"`
	// ClientCSR and ServerCSR are DER certificate requests.
	ClientCSR []byte `json:"client_csr"`
	ServerCSR []byte `json:"server_csr"`
	// PeerURL is the etcd peer URL the machine will listen on if it is
	// made an etcd member; empty: it only wants to be a client.
	PeerURL string `json:"peer_url,omitempty"`
}

// JoinResponse is what the join endpoint answers.
type JoinResponse struct {
	CA         []byte   `json:"ca"` // PEM
	ClientCert []byte   `json:"client_cert"`
	ServerCert []byte   `json:"server_cert"`
	CRL        []byte   `json:"crl"`
	Endpoints  []string `json:"endpoints"`
	// InitialCluster is set when the machine was added as an etcd member
	// (a learner): etcd's --initial-cluster to start its member with.
	InitialCluster string `json:"initial_cluster,omitempty"`
}

// JoinHandler serves JoinPath: it exchanges the current join secret for
// certificates signed by Dir's CA. It is safe for concurrent use.
type JoinHandler struct {
	Dir Dir
	// Endpoints returns the etcd client URLs a new machine should use.
	Endpoints func(ctx context.Context) ([]string, error)
	// AddMember, if set, may add the machine as an etcd member at peerURL
	// and return the --initial-cluster it must start with, or "" when it
	// should stay a client (the cluster has enough members).
	AddMember func(ctx context.Context, name, peerURL string) (string, error)
	Logger    *slog.Logger
}

// ServeHTTP implements http.Handler.
func (h *JoinHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != JoinPath {
		http.Error(w, "POST "+JoinPath, http.StatusNotFound)
		return
	}
	var req JoinRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		http.Error(w, "join request: "+err.Error(), http.StatusBadRequest)
		return
	}
	log := h.Logger.With("machine", req.Machine, "remote", r.RemoteAddr)
	if err := CheckSecret(h.Dir, req.Secret, time.Now()); err != nil {
		log.Warn("join refused", "err", err)
		http.Error(w, ErrTokenRefused.Error(), http.StatusForbidden)
		return
	}
	resp, err := h.join(r.Context(), req)
	if err != nil {
		log.Warn("join failed", "err", err)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	log.Info("machine joined", "member", resp.InitialCluster != "")
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(resp)
}

func (h *JoinHandler) join(ctx context.Context, req JoinRequest) (*JoinResponse, error) {
	if err := ValidMachine(req.Machine); err != nil {
		return nil, err
	}
	ca, err := LoadCA(h.Dir)
	if err != nil {
		return nil, err
	}
	sign := func(der []byte, usage Usage) ([]byte, error) {
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil {
			return nil, fmt.Errorf("certificate request: %w", err)
		}
		if err := csr.CheckSignature(); err != nil {
			return nil, fmt.Errorf("certificate request: %w", err)
		}
		c, err := ca.Sign(h.Dir, csr.PublicKey, req.Machine, usage, req.Hosts)
		if err != nil {
			return nil, err
		}
		return CertPEM(c), nil
	}
	resp := &JoinResponse{CA: CertPEM(ca.Cert)}
	if resp.ClientCert, err = sign(req.ClientCSR, ClientUsage); err != nil {
		return nil, err
	}
	if resp.ServerCert, err = sign(req.ServerCSR, ServerUsage); err != nil {
		return nil, err
	}
	if resp.CRL, err = os.ReadFile(h.Dir.Path(CRLFile)); err != nil {
		return nil, fmt.Errorf("revocation list: %w", err)
	}
	if h.Endpoints != nil {
		if resp.Endpoints, err = h.Endpoints(ctx); err != nil {
			return nil, err
		}
	}
	if h.AddMember != nil && req.PeerURL != "" {
		if resp.InitialCluster, err = h.AddMember(ctx, req.Machine, req.PeerURL); err != nil {
			return nil, fmt.Errorf("add etcd member %s: %w", req.Machine, err)
		}
	}
	return resp, nil
}

// ValidMachine checks a machine id used as a certificate name.
func ValidMachine(id string) error {
	if id == "" || len(id) > 128 || strings.ContainsAny(id, "/ \t\n,=") {
		return fmt.Errorf("machine id %q: want 1-128 characters, no slash, space, comma or '='", id)
	}
	return nil
}

// ServerTLS returns the tls.Config of the join endpoint: d's server pair,
// sent with the CA certificate so that a joiner can pin it by fingerprint.
func ServerTLS(d Dir) (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(d.Path(ServerCertFile), d.Path(ServerKeyFile))
	if err != nil {
		return nil, fmt.Errorf("join endpoint certificate: %w", err)
	}
	ca, err := LoadCACert(d)
	if err != nil {
		return nil, err
	}
	pair.Certificate = append(pair.Certificate, ca.Raw)
	return &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}, nil
}

// Joined is the outcome of Join: this machine's keys and certificates, held
// in memory until Write stores them.
type Joined struct {
	Response             JoinResponse
	ClientKey, ServerKey *ecdsa.PrivateKey
}

// Join asks the join endpoint at addr (host:port) for certificates. It
// verifies the endpoint against the token's CA fingerprint before sending
// the secret, and the certificates it gets against that CA. It writes
// nothing.
func Join(ctx context.Context, addr string, tok Token, req JoinRequest) (*Joined, error) {
	if err := ValidMachine(req.Machine); err != nil {
		return nil, err
	}
	j := &Joined{}
	var err error
	if j.ClientKey, err = NewKey(); err != nil {
		return nil, err
	}
	if j.ServerKey, err = NewKey(); err != nil {
		return nil, err
	}
	if req.ClientCSR, err = x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: req.Machine}}, j.ClientKey); err != nil {
		return nil, err
	}
	if req.ServerCSR, err = x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: req.Machine}}, j.ServerKey); err != nil {
		return nil, err
	}
	req.Secret = tok.Secret
	var ca *x509.Certificate
	tcfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // replaced by the pinned CA check below
		VerifyConnection: func(cs tls.ConnectionState) error {
			for _, c := range cs.PeerCertificates {
				if Fingerprint(c) == tok.CAFingerprint && c.IsCA {
					ca = c
				}
			}
			if ca == nil || len(cs.PeerCertificates) == 0 {
				return errors.New("the join endpoint is not of the cluster the token names (CA fingerprint differs)")
			}
			pool := x509.NewCertPool()
			pool.AddCert(ca)
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: pool})
			return err
		},
	}
	body, _ := json.Marshal(req)
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+addr+JoinPath, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("join %s: %w", addr, err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tcfg, DialContext: (&net.Dialer{Timeout: 10 * time.Second}).DialContext}, Timeout: 60 * time.Second}
	defer hc.CloseIdleConnections()
	resp, err := hc.Do(hreq)
	if err != nil {
		return nil, fmt.Errorf("join %s: %w", addr, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode == http.StatusForbidden {
		return nil, fmt.Errorf("join %s: %w", addr, ErrTokenRefused)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("join %s: %s: %s", addr, resp.Status, strings.TrimSpace(string(b)))
	}
	if err := json.Unmarshal(b, &j.Response); err != nil {
		return nil, fmt.Errorf("join %s: answer: %w", addr, err)
	}
	got, err := ParseCertPEM(j.Response.CA)
	if err != nil || !got.Equal(ca) {
		return nil, fmt.Errorf("join %s: answer names another CA", addr)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	for _, pc := range [][]byte{j.Response.ClientCert, j.Response.ServerCert} {
		c, err := ParseCertPEM(pc)
		if err != nil {
			return nil, fmt.Errorf("join %s: answer: %w", addr, err)
		}
		if _, err := c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			return nil, fmt.Errorf("join %s: answer: %w", addr, err)
		}
	}
	return j, nil
}

// Write stores the joined machine's files in d (created mode 0700).
func (j *Joined) Write(d Dir) error {
	if err := os.MkdirAll(string(d), 0o700); err != nil {
		return fmt.Errorf("store certificates in %s: %w", d, err)
	}
	for _, f := range []struct {
		name string
		b    []byte
	}{{CAFile, j.Response.CA}, {ClientCertFile, j.Response.ClientCert}, {ServerCertFile, j.Response.ServerCert}} {
		if err := writeFile(d.Path(f.name), f.b, 0o644); err != nil {
			return err
		}
	}
	if err := WriteCRL(d, j.Response.CRL); err != nil {
		return err
	}
	if err := writeKey(d.Path(ClientKeyFile), j.ClientKey); err != nil {
		return err
	}
	if err := writeKey(d.Path(ServerKeyFile), j.ServerKey); err != nil {
		return err
	}
	if len(j.Response.Endpoints) > 0 {
		return WriteEndpoints(d, j.Response.Endpoints)
	}
	return nil
}
