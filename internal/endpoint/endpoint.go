// Package endpoint owns the values announce writes under a key and that render
// templates read back: the seed-compatible plain form "<host> <ip>:<port>" and
// a JSON form {"host","addr","unit","machine"}. It is pure: no I/O.
package endpoint

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"unicode/utf8"
)

// Format names a value encoding.
type Format string

// The value formats.
const (
	// Plain is the seed's format: "<host> <ip>:<port>", which makes the
	// haproxy line `server <host> <ip>:<port> check`.
	Plain Format = "plain"
	// JSON is {"host":…,"addr":"ip:port","unit":…,"machine":…}; empty unit
	// and machine are left out.
	JSON Format = "json"
)

// ParseFormat returns the Format named s ("plain" or "json").
func ParseFormat(s string) (Format, error) {
	switch Format(s) {
	case Plain, JSON:
		return Format(s), nil
	}
	return "", fmt.Errorf("format %q: want plain or json", s)
}

// Endpoint is one announced instance. The zero value is not valid: Host and
// Addr are required.
type Endpoint struct {
	// Host is the machine's host name (systemd's %H), without spaces.
	Host string `json:"host"`
	// Addr is "ip:port" (IPv6 in brackets).
	Addr string `json:"addr"`
	// Unit is the systemd unit that runs the instance, if known.
	Unit string `json:"unit,omitempty"`
	// Machine is the machine id, if known.
	Machine string `json:"machine,omitempty"`
	// Tags, Meta and Weight are what a load balancer template may group or
	// weigh by (announce --tag, --meta, --weight); JSON format only. Weight
	// is nil when not given (0 is a valid weight: haproxy sends nothing).
	Tags   []string          `json:"tags,omitempty"`
	Meta   map[string]string `json:"meta,omitempty"`
	Weight *int              `json:"weight,omitempty"`
}

// Bounds of the metadata: haproxy's weight range, and sizes that keep a
// value small (every render holds every value).
const (
	MaxWeight    = 256
	MaxTags      = 32
	MaxMeta      = 32
	MaxTagLen    = 64
	MaxMetaKey   = 64
	MaxMetaValue = 256
	MaxValueLen  = 4096
)

// HasMetadata reports whether tags, meta or a weight are set.
func (e Endpoint) HasMetadata() bool { return len(e.Tags) > 0 || len(e.Meta) > 0 || e.Weight != nil }

func validateMetadata(e Endpoint) error {
	if len(e.Tags) > MaxTags {
		return fmt.Errorf("endpoint: %d tags, at most %d", len(e.Tags), MaxTags)
	}
	for _, t := range e.Tags {
		if t == "" || len(t) > MaxTagLen || !utf8.ValidString(t) || strings.ContainsFunc(t, isSpaceOrControl) || strings.Contains(t, ",") {
			return fmt.Errorf("endpoint tag %q: want 1-%d bytes of UTF-8 without spaces, commas or control characters", t, MaxTagLen)
		}
	}
	if len(e.Meta) > MaxMeta {
		return fmt.Errorf("endpoint: %d meta keys, at most %d", len(e.Meta), MaxMeta)
	}
	for k, v := range e.Meta {
		if k == "" || len(k) > MaxMetaKey || strings.ContainsFunc(k, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-' || r == '.')
		}) {
			return fmt.Errorf("endpoint meta key %q: want 1-%d of [A-Za-z0-9_.-]", k, MaxMetaKey)
		}
		if len(v) > MaxMetaValue || !utf8.ValidString(v) || strings.ContainsFunc(v, isControl) {
			return fmt.Errorf("endpoint meta %s=%q: want at most %d bytes of UTF-8 without control characters", k, v, MaxMetaValue)
		}
	}
	if e.Weight != nil && (*e.Weight < 0 || *e.Weight > MaxWeight) {
		return fmt.Errorf("endpoint weight %d: want 0-%d", *e.Weight, MaxWeight)
	}
	return nil
}

// Validate checks that Host is a non-empty word and Addr a valid ip:port.
func (e Endpoint) Validate() error {
	if e.Host == "" {
		return errors.New("endpoint: empty host")
	}
	if strings.ContainsFunc(e.Host, isSpaceOrControl) {
		return fmt.Errorf("endpoint host %q: contains a space or control character", e.Host)
	}
	if strings.HasPrefix(e.Host, "{") {
		return fmt.Errorf("endpoint host %q: starts with '{' (would read as JSON)", e.Host)
	}
	if _, err := ParseAddr(e.Addr); err != nil {
		return err
	}
	for name, v := range map[string]string{"host": e.Host, "unit": e.Unit, "machine": e.Machine} {
		if !utf8.ValidString(v) {
			return fmt.Errorf("endpoint %s %q: not valid UTF-8", name, v)
		}
		if strings.ContainsFunc(v, isControl) {
			return fmt.Errorf("endpoint %s %q: contains a control character", name, v)
		}
	}
	return validateMetadata(e)
}

// IP returns the address part of Addr (the zero netip.Addr if Addr is invalid).
func (e Endpoint) IP() netip.Addr {
	ap, _ := ParseAddr(e.Addr)
	return ap.Addr()
}

// Port returns the port of Addr (0 if Addr is invalid).
func (e Endpoint) Port() uint16 {
	ap, _ := ParseAddr(e.Addr)
	return ap.Port()
}

// Encode returns the value for format f. It validates e first.
func (e Endpoint) Encode(f Format) (string, error) {
	if err := e.Validate(); err != nil {
		return "", err
	}
	switch f {
	case Plain:
		if e.HasMetadata() {
			return "", errors.New("endpoint: tags, meta and weight need the json format")
		}
		return e.Host + " " + e.Addr, nil
	case JSON:
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(e); err != nil {
			return "", fmt.Errorf("endpoint: encode json: %w", err)
		}
		v := strings.TrimSuffix(b.String(), "\n")
		if len(v) > MaxValueLen {
			return "", fmt.Errorf("endpoint: value of %d bytes, at most %d", len(v), MaxValueLen)
		}
		return v, nil
	}
	return "", fmt.Errorf("endpoint: unknown format %q", f)
}

// ParseAddr parses "ip:port": an IP literal (IPv6 in brackets, no zone) and a
// port from 1 to 65535.
func ParseAddr(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("address %q: want ip:port (e.g. 10.0.0.1:8080 or [fd00::1]:8080)", s)
	}
	if ap.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("address %q: port 0", s)
	}
	if ap.Addr().Zone() != "" {
		return netip.AddrPort{}, fmt.Errorf("address %q: an IPv6 zone cannot be announced", s)
	}
	return ap, nil
}

// Parse reads an announced value in either format: a JSON object (first
// non-space byte '{') or the plain "<host> <ip>:<port>". Unknown JSON fields
// are ignored, so that a newer announce can add fields without older readers
// dropping the endpoint; host and addr are always required and checked.
func Parse(value string) (Endpoint, error) {
	v := strings.TrimSpace(value)
	if strings.HasPrefix(v, "{") {
		return parseJSON(v)
	}
	host, addr, ok := strings.Cut(v, " ")
	if !ok {
		return Endpoint{}, fmt.Errorf("value %q: want \"<host> <ip>:<port>\" or a JSON object", value)
	}
	e := Endpoint{Host: host, Addr: strings.TrimSpace(addr)}
	if err := e.Validate(); err != nil {
		return Endpoint{}, fmt.Errorf("value %q: %w", value, err)
	}
	return e, nil
}

func parseJSON(v string) (Endpoint, error) {
	dec := json.NewDecoder(strings.NewReader(v))
	var e Endpoint
	if err := dec.Decode(&e); err != nil {
		return Endpoint{}, fmt.Errorf("json value: %w", err)
	}
	if dec.More() {
		return Endpoint{}, errors.New("json value: trailing data after the object")
	}
	if len(e.Tags) == 0 {
		e.Tags = nil
	}
	if len(e.Meta) == 0 {
		e.Meta = nil
	}
	if err := e.Validate(); err != nil {
		return Endpoint{}, fmt.Errorf("json value: %w", err)
	}
	return e, nil
}

func isSpaceOrControl(r rune) bool { return r == ' ' || r == '\t' || isControl(r) }

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }
