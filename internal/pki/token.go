package pki

import (
	"bufio"
	"crypto/rand"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"os"

	"strings"
	"time"
)

// TokenPrefix starts every join token; it names the format's version.
const TokenPrefix = "flt1"

// Token is what a new machine needs to join: the fingerprint of the cluster
// CA (so that it verifies the join endpoint without trusting on first use)
// and a secret the endpoint exchanges for a certificate. Its text form is
// "flt1.<sha256 of the CA certificate, hex>.<secret>".
type Token struct {
	CAFingerprint [32]byte
	Secret        string
}

// String returns the token's text form.
func (t Token) String() string {
	return TokenPrefix + "." + hexFingerprint(t.CAFingerprint) + "." + t.Secret
}

// ErrBadToken is returned for a token that is not of the flt1 form.
var ErrBadToken = errors.New("pki: malformed join token (want flt1.<64 hex>.<secret>)")

// ParseToken parses a token's text form.
func ParseToken(s string) (Token, error) {
	parts := strings.Split(strings.TrimSpace(s), ".")
	if len(parts) != 3 || parts[0] != TokenPrefix || len(parts[1]) != 64 || len(parts[2]) < 16 {
		return Token{}, ErrBadToken
	}
	fp, err := hex.DecodeString(parts[1])
	if err != nil {
		return Token{}, ErrBadToken
	}
	var t Token
	copy(t.CAFingerprint[:], fp)
	t.Secret = parts[2]
	return t, nil
}

// Secret is a join secret with its expiry, as stored in TokenFile.
type Secret struct {
	Value   string
	Expires time.Time
}

// NewSecret creates a secret valid for ttl, writes it to d (mode 0600) and
// returns it. It replaces any previous secret: the old token stops working.
func NewSecret(d Dir, ttl time.Duration) (Secret, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return Secret{}, err
	}
	s := Secret{Value: hex.EncodeToString(b), Expires: time.Now().Add(ttl).UTC().Truncate(time.Second)}
	line := s.Value + " " + s.Expires.Format(time.RFC3339) + "\n"
	if err := writeFile(d.Path(TokenFile), []byte(line), 0o600); err != nil {
		return Secret{}, err
	}
	return s, nil
}

// LoadSecret reads the current secret from d.
func LoadSecret(d Dir) (Secret, error) {
	b, err := os.ReadFile(d.Path(TokenFile))
	if err != nil {
		return Secret{}, fmt.Errorf("load join secret: %w", err)
	}
	v, exp, ok := strings.Cut(strings.TrimSpace(string(b)), " ")
	t, err := time.Parse(time.RFC3339, exp)
	if !ok || err != nil || v == "" {
		return Secret{}, fmt.Errorf("load join secret %s: malformed", d.Path(TokenFile))
	}
	return Secret{Value: v, Expires: t}, nil
}

// ErrTokenRefused is returned by CheckSecret for a wrong or expired secret.
var ErrTokenRefused = errors.New("join token refused: wrong or expired (get a current one with `scheduler token` on a machine of the cluster)")

// CheckSecret compares got with d's current secret, in constant time.
func CheckSecret(d Dir, got string, now time.Time) error {
	s, err := LoadSecret(d)
	if err != nil {
		return err
	}
	if subtle.ConstantTimeCompare([]byte(s.Value), []byte(got)) != 1 || now.After(s.Expires) {
		return ErrTokenRefused
	}
	return nil
}

// TokenFor returns the token of d's CA and current secret.
func TokenFor(d Dir) (Token, Secret, error) {
	ca, err := LoadCACert(d)
	if err != nil {
		return Token{}, Secret{}, err
	}
	s, err := LoadSecret(d)
	if err != nil {
		return Token{}, Secret{}, err
	}
	return Token{CAFingerprint: Fingerprint(ca), Secret: s.Value}, s, nil
}

func appendIssued(d Dir, cn string, serial *big.Int) error {
	f, err := os.OpenFile(d.Path(IssuedFile), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("record issued certificate: %w", err)
	}
	_, err = fmt.Fprintf(f, "%s %s\n", serial.Text(16), cn)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("record issued certificate: %w", err)
	}
	return nil
}

// Issued returns the serials d's CA signed for machine cn.
func Issued(d Dir, cn string) ([]*big.Int, error) {
	f, err := os.Open(d.Path(IssuedFile))
	if err != nil {
		return nil, fmt.Errorf("read issued certificates: %w", err)
	}
	defer f.Close()
	var out []*big.Int
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		s, name, ok := strings.Cut(sc.Text(), " ")
		if !ok || name != cn {
			continue
		}
		n, ok := new(big.Int).SetString(s, 16)
		if ok {
			out = append(out, n)
		}
	}
	return out, sc.Err()
}

// Revoke adds every certificate issued to machine cn to d's revocation list
// and rewrites CRLFile, signed by the CA. It returns the new CRL (DER) and
// how many certificates it revoked; none is an error.
func Revoke(d Dir, cn string) ([]byte, int, error) {
	ca, err := LoadCA(d)
	if err != nil {
		return nil, 0, err
	}
	serials, err := Issued(d, cn)
	if err != nil {
		return nil, 0, err
	}
	if len(serials) == 0 {
		return nil, 0, fmt.Errorf("revoke %s: no certificate was issued to that machine here", cn)
	}
	var entries []x509.RevocationListEntry
	number := big.NewInt(1)
	if b, err := os.ReadFile(d.Path(CRLFile)); err == nil {
		old, err := ParseCRL(b)
		if err != nil {
			return nil, 0, err
		}
		entries = old.RevokedCertificateEntries
		number.Add(old.Number, big.NewInt(1))
	}
	now := time.Now()
	for _, s := range serials {
		entries = append(entries, x509.RevocationListEntry{SerialNumber: s, RevocationTime: now})
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: number, ThisUpdate: now, NextUpdate: now.Add(certLifetime),
		RevokedCertificateEntries: entries,
	}, ca.Cert, ca.Key)
	if err != nil {
		return nil, 0, fmt.Errorf("revoke %s: sign revocation list: %w", cn, err)
	}
	if err := writeFile(d.Path(CRLFile), der, 0o644); err != nil {
		return nil, 0, err
	}
	return der, len(serials), nil
}

// ParseCRL parses a revocation list, DER (as CRLFile holds it, the form
// etcd reads) or PEM.
func ParseCRL(b []byte) (*x509.RevocationList, error) {
	if der, _ := decodePEM(b); der != nil {
		b = der
	}
	crl, err := x509.ParseRevocationList(b)
	if err != nil {
		return nil, fmt.Errorf("revocation list: %w", err)
	}
	return crl, nil
}

// WriteCRL installs a revocation list received from the cluster, after
// checking that d's CA signed it. An older list (lower number) is ignored.
func WriteCRL(d Dir, b []byte) error {
	crl, err := ParseCRL(b)
	if err != nil {
		return err
	}
	if der, _ := decodePEM(b); der != nil {
		b = der
	}
	ca, err := LoadCACert(d)
	if err != nil {
		return err
	}
	if err := crl.CheckSignatureFrom(ca); err != nil {
		return fmt.Errorf("revocation list: not signed by the cluster CA: %w", err)
	}
	if old, err := os.ReadFile(d.Path(CRLFile)); err == nil {
		if o, err := ParseCRL(old); err == nil && o.Number.Cmp(crl.Number) >= 0 {
			return nil
		}
	}
	return writeFile(d.Path(CRLFile), b, 0o644)
}

// EnsureCRL writes an empty revocation list if d has none, so that etcd,
// which is given the file from the start, always finds one.
func EnsureCRL(d Dir, ca *CA) error {
	if d.Exists(CRLFile) {
		return nil
	}
	now := time.Now()
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(0), ThisUpdate: now, NextUpdate: now.Add(certLifetime),
	}, ca.Cert, ca.Key)
	if err != nil {
		return fmt.Errorf("create revocation list: %w", err)
	}
	return writeFile(d.Path(CRLFile), der, 0o644)
}

// WriteEndpoints records the etcd client URLs this machine talks to.
func WriteEndpoints(d Dir, eps []string) error {
	return writeFile(d.Path(EndpointsFile), []byte(strings.Join(eps, "\n")+"\n"), 0o644)
}

// Endpoints reads what WriteEndpoints wrote.
func Endpoints(d Dir) ([]string, error) {
	b, err := os.ReadFile(d.Path(EndpointsFile))
	if err != nil {
		return nil, err
	}
	return strings.Fields(string(b)), nil
}

func decodePEM(b []byte) ([]byte, error) {
	for {
		var blk *pemBlock
		blk, b = pemDecode(b)
		if blk == nil {
			return nil, nil
		}
		if blk.Type == "X509 CRL" {
			return blk.Bytes, nil
		}
	}
}
