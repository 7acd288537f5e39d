package store

import (
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/flotilla/flotilla/internal/pki"
)

// DefaultEndpoint is used when no endpoint is configured anywhere.
const DefaultEndpoint = "http://127.0.0.1:2379"

// Config says how to reach etcd. Build it with Default, then RegisterFlags and/or
// FromEnv, then Validate. The zero value is not valid (no endpoints).
type Config struct {
	// Endpoints are client URLs (http:// or https://; a bare host:port means http).
	Endpoints []string
	// DialTimeout bounds Open: it never blocks longer than this; default 5s.
	DialTimeout time.Duration
	// CACert, Cert and Key are PEM file paths for TLS; CACert alone verifies the
	// server, Cert and Key together authenticate the client.
	CACert, Cert, Key string
	// InsecureSkipVerify disables server certificate verification.
	InsecureSkipVerify bool
	// Username and Password enable etcd authentication.
	Username, Password string
	// PasswordFile, if set, holds the password (first line), so that it never
	// appears in a process listing.
	PasswordFile string
}

// Default returns a Config with the default dial timeout and no endpoints; the
// default endpoint is applied by FromEnv when nothing else names one.
func Default() Config {
	return Config{DialTimeout: 5 * time.Second}
}

// endpointsFlag adapts a comma-separated list to flag.Value.
type endpointsFlag struct{ dst *[]string }

func (f endpointsFlag) String() string {
	if f.dst == nil {
		return ""
	}
	return strings.Join(*f.dst, ",")
}

func (f endpointsFlag) Set(v string) error {
	*f.dst = splitList(v)
	return nil
}

// RegisterFlags adds etcdctl's connection flags to fs: --endpoints, --dial-timeout,
// --cacert, --cert, --key, --insecure-skip-tls-verify, --user (user[:password]),
// --password, --password-file.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.Var(endpointsFlag{&c.Endpoints}, "endpoints", "comma-separated etcd client URLs (env ETCDCTL_ENDPOINTS; default "+DefaultEndpoint+")")
	fs.DurationVar(&c.DialTimeout, "dial-timeout", c.DialTimeout, "how long to wait for etcd to answer when connecting")
	fs.StringVar(&c.CACert, "cacert", c.CACert, "verify etcd's certificate with this CA bundle (env ETCDCTL_CACERT)")
	fs.StringVar(&c.Cert, "cert", c.Cert, "client certificate for etcd (env ETCDCTL_CERT)")
	fs.StringVar(&c.Key, "key", c.Key, "client key for etcd (env ETCDCTL_KEY)")
	fs.BoolVar(&c.InsecureSkipVerify, "insecure-skip-tls-verify", c.InsecureSkipVerify, "do not verify etcd's certificate")
	fs.Func("user", "etcd user[:password] (env ETCDCTL_USER)", func(v string) error {
		c.Username, c.Password = splitUser(v)
		return nil
	})
	fs.StringVar(&c.Password, "password", c.Password, "etcd password (prefer --password-file or env ETCDCTL_PASSWORD)")
	fs.StringVar(&c.PasswordFile, "password-file", c.PasswordFile, "file holding the etcd password")
}

// FromEnv fills every field still unset from etcdctl's environment variables:
// ETCDCTL_ENDPOINTS, ETCDCTL_DIAL_TIMEOUT, ETCDCTL_CACERT, ETCDCTL_CERT,
// ETCDCTL_KEY, ETCDCTL_INSECURE_SKIP_TLS_VERIFY, ETCDCTL_USER, ETCDCTL_PASSWORD.
// Keys in prefer are consulted for endpoints first (e.g. ANNOUNCE_ENDPOINTS).
// When nothing names an endpoint, DefaultEndpoint is used.
func (c *Config) FromEnv(getenv func(string) string, prefer ...string) error {
	if len(c.Endpoints) == 0 {
		c.Endpoints = EnvEndpoints(getenv, append(prefer, "ETCDCTL_ENDPOINTS")...)
	}
	if len(c.Endpoints) == 0 {
		c.Endpoints = []string{DefaultEndpoint}
	}
	if v := getenv("ETCDCTL_DIAL_TIMEOUT"); v != "" && c.DialTimeout == Default().DialTimeout {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("ETCDCTL_DIAL_TIMEOUT=%q: %w", v, err)
		}
		c.DialTimeout = d
	}
	setIfEmpty(&c.CACert, getenv("ETCDCTL_CACERT"))
	setIfEmpty(&c.Cert, getenv("ETCDCTL_CERT"))
	setIfEmpty(&c.Key, getenv("ETCDCTL_KEY"))
	if v := getenv("ETCDCTL_INSECURE_SKIP_TLS_VERIFY"); v == "true" || v == "1" {
		c.InsecureSkipVerify = true
	}
	if c.Username == "" {
		if v := getenv("ETCDCTL_USER"); v != "" {
			u, p := splitUser(v)
			c.Username = u
			setIfEmpty(&c.Password, p)
		}
	}
	setIfEmpty(&c.Password, getenv("ETCDCTL_PASSWORD"))
	return nil
}

// Validate checks the configuration and loads the password file, if any.
func (c *Config) Validate() error {
	if len(c.Endpoints) == 0 {
		return errors.New("etcd: no endpoints")
	}
	// A new slice: copies of a Config share the caller's, and may be
	// validated at the same time (one Open per goroutine).
	eps := make([]string, len(c.Endpoints))
	for i, ep := range c.Endpoints {
		norm, err := normalizeEndpoint(ep)
		if err != nil {
			return fmt.Errorf("etcd endpoint %q: %w", ep, err)
		}
		eps[i] = norm
	}
	c.Endpoints = eps
	if c.DialTimeout <= 0 {
		return fmt.Errorf("etcd dial timeout %s: must be positive", c.DialTimeout)
	}
	if (c.Cert == "") != (c.Key == "") {
		return errors.New("etcd TLS: --cert and --key go together")
	}
	if c.PasswordFile != "" {
		b, err := os.ReadFile(c.PasswordFile)
		if err != nil {
			return fmt.Errorf("etcd password file: %w", err)
		}
		c.Password = strings.TrimRight(strings.SplitN(string(b), "\n", 2)[0], "\r")
	}
	if c.Password != "" && c.Username == "" {
		return errors.New("etcd auth: a password needs a user (--user)")
	}
	return nil
}

// TLSEnabled reports whether any TLS option is set.
func (c *Config) TLSEnabled() bool {
	return c.CACert != "" || c.Cert != "" || c.InsecureSkipVerify
}

func normalizeEndpoint(ep string) (string, error) {
	if !strings.Contains(ep, "://") {
		ep = "http://" + ep
	}
	u, err := url.Parse(ep)
	if err != nil {
		return "", err
	}
	switch u.Scheme {
	case "http", "https", "unix", "unixs":
	default:
		return "", fmt.Errorf("scheme %q: want http or https", u.Scheme)
	}
	if u.Host == "" {
		return "", errors.New("no host")
	}
	return u.Scheme + "://" + u.Host, nil
}

// EnvEndpoints returns the endpoints named by the first of keys that is set,
// split at commas, each trimmed, empty entries dropped
// ("a:2379, b:2379," is two endpoints). It returns nil when no key is set.
func EnvEndpoints(getenv func(string) string, keys ...string) []string {
	for _, k := range keys {
		if v := getenv(k); v != "" {
			return splitList(v)
		}
	}
	return nil
}

func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

func splitUser(v string) (user, password string) {
	user, password, _ = strings.Cut(v, ":")
	return user, password
}

func setIfEmpty(dst *string, v string) {
	if *dst == "" {
		*dst = v
	}
}

// FromMachineDir fills TLS files and endpoints from a machine's credentials
// directory (what `scheduler serve` writes under <data-dir>/pki: ca.pem,
// client.pem, client-key.pem, endpoints), when nothing else configured them:
// no endpoint and no TLS option set. It reports whether it used the directory.
func (c *Config) FromMachineDir(dir string) (bool, error) {
	if len(c.Endpoints) > 0 || c.TLSEnabled() || c.Key != "" {
		return false, nil
	}
	d := pki.Dir(dir)
	if !d.Exists(pki.ClientCertFile) {
		return false, nil
	}
	eps, err := pki.Endpoints(d)
	if err != nil || len(eps) == 0 {
		return false, fmt.Errorf("machine credentials in %s: no endpoints file: %v", dir, err)
	}
	c.Endpoints = eps
	c.CACert, c.Cert, c.Key = d.Path(pki.CAFile), d.Path(pki.ClientCertFile), d.Path(pki.ClientKeyFile)
	return true, nil
}
