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
	return nil
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
		return e.Host + " " + e.Addr, nil
	case JSON:
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(e); err != nil {
			return "", fmt.Errorf("endpoint: encode json: %w", err)
		}
		return strings.TrimSuffix(b.String(), "\n"), nil
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
	if err := e.Validate(); err != nil {
		return Endpoint{}, fmt.Errorf("json value: %w", err)
	}
	return e, nil
}

func isSpaceOrControl(r rune) bool { return r == ' ' || r == '\t' || isControl(r) }

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }
