// Package pki owns a flotilla cluster's certificates: the cluster CA that
// serve creates on its first start off loopback, the certificates it signs
// for machines, the revocation list, and the join token that lets a new
// machine verify the cluster and obtain its own certificate.
//
// Files live in one directory (Dir, normally <data-dir>/pki). Keys are
// written with mode 0600 from the first byte. Nothing here keeps state
// between calls: every function reads and writes the files.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// File names inside a Dir.
const (
	CAFile         = "ca.pem"     // the cluster CA certificate
	CAKeyFile      = "ca-key.pem" // the CA key: only on the machine that signs
	ServerCertFile = "server.pem" // this machine's server (and peer) certificate
	ServerKeyFile  = "server-key.pem"
	ClientCertFile = "client.pem" // this machine's client certificate
	ClientKeyFile  = "client-key.pem"
	CRLFile        = "crl.der"   // revoked certificates (DER, as etcd reads it)
	TokenFile      = "token"     // the current join secret and its expiry
	IssuedFile     = "issued"    // serial and machine of every certificate signed
	EndpointsFile  = "endpoints" // etcd client URLs this machine talks to
)

// certLifetime is how long a machine certificate is valid.
const certLifetime = 10 * 365 * 24 * time.Hour

// Dir is a directory of PEM files. The zero value is not usable.
type Dir string

// Path returns the path of file name in d.
func (d Dir) Path(name string) string { return filepath.Join(string(d), name) }

// Exists reports whether name exists in d.
func (d Dir) Exists(name string) bool {
	_, err := os.Stat(d.Path(name))
	return err == nil
}

// CA is a certificate authority: its certificate and its key.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// Fingerprint is the SHA-256 of a certificate's DER bytes.
func Fingerprint(c *x509.Certificate) [32]byte { return sha256.Sum256(c.Raw) }

// NewCA creates a CA named after cluster and writes it into d (which it
// creates, mode 0700). It refuses to overwrite an existing CA.
func NewCA(d Dir, cluster string) (*CA, error) {
	if d.Exists(CAFile) {
		return nil, fmt.Errorf("create CA in %s: already exists", d)
	}
	if err := os.MkdirAll(string(d), 0o700); err != nil {
		return nil, fmt.Errorf("create CA in %s: %w", d, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("create CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "flotilla CA " + cluster, Organization: []string{"flotilla"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(20 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	cert, _ := x509.ParseCertificate(der)
	if err := writeKey(d.Path(CAKeyFile), key); err != nil {
		return nil, err
	}
	if err := writeFile(d.Path(CAFile), pemBytes("CERTIFICATE", der), 0o644); err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key}, nil
}

// LoadCA reads the CA certificate and key from d.
func LoadCA(d Dir) (*CA, error) {
	cert, err := LoadCACert(d)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(d.Path(CAKeyFile))
	if err != nil {
		return nil, fmt.Errorf("load CA key: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("load CA key %s: no PEM block", d.Path(CAKeyFile))
	}
	key, err := x509.ParseECPrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("load CA key %s: %w", d.Path(CAKeyFile), err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// LoadCACert reads the CA certificate from d.
func LoadCACert(d Dir) (*x509.Certificate, error) {
	return readCert(d.Path(CAFile))
}

// Usage says what a certificate is for.
type Usage int

const (
	// ClientUsage certificates authenticate a machine to etcd.
	ClientUsage Usage = iota
	// ServerUsage certificates serve etcd's client and peer listeners and the
	// join endpoint; they also authenticate to peers, so carry both usages.
	ServerUsage
)

// Sign signs a certificate for the public key pub, naming it cn, valid for
// the given IP addresses and DNS names (server usage), and records its serial
// in d's issued list.
func (ca *CA) Sign(d Dir, pub crypto.PublicKey, cn string, usage Usage, hosts []string) (*x509.Certificate, error) {
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"flotilla"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(certLifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if usage == ServerUsage {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		for _, h := range hosts {
			if ip := net.ParseIP(h); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			} else if h != "" {
				tmpl.DNSNames = append(tmpl.DNSNames, h)
			}
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("sign certificate for %s: %w", cn, err)
	}
	cert, _ := x509.ParseCertificate(der)
	if err := appendIssued(d, cn, cert.SerialNumber); err != nil {
		return nil, err
	}
	return cert, nil
}

// IssuePair makes a key, signs a certificate for it and writes both into d
// under certFile and keyFile.
func (ca *CA) IssuePair(d Dir, cn string, usage Usage, hosts []string, certFile, keyFile string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("key for %s: %w", cn, err)
	}
	cert, err := ca.Sign(d, &key.PublicKey, cn, usage, hosts)
	if err != nil {
		return err
	}
	if err := writeKey(d.Path(keyFile), key); err != nil {
		return err
	}
	return writeFile(d.Path(certFile), pemBytes("CERTIFICATE", cert.Raw), 0o644)
}

// NewKey makes a private key for a certificate request.
func NewKey() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }

// CertPEM returns a certificate as PEM.
func CertPEM(c *x509.Certificate) []byte { return pemBytes("CERTIFICATE", c.Raw) }

// ParseCertPEM parses the first certificate of a PEM block.
func ParseCertPEM(b []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(blk.Bytes)
}

func readCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load certificate: %w", err)
	}
	c, err := ParseCertPEM(b)
	if err != nil {
		return nil, fmt.Errorf("load certificate %s: %w", path, err)
	}
	return c, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return n
}

func pemBytes(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("write key %s: %w", path, err)
	}
	return writeFile(path, pemBytes("EC PRIVATE KEY", der), 0o600)
}

// writeFile writes atomically: a temp file with mode from the start, then rename.
func writeFile(path string, b []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// hexFingerprint is the token's form of a fingerprint.
func hexFingerprint(fp [32]byte) string { return hex.EncodeToString(fp[:]) }

type pemBlock = pem.Block

func pemDecode(b []byte) (*pem.Block, []byte) { return pem.Decode(b) }
