// Package applied is the contract between render and announce for the
// acknowledged withdrawal: render publishes, per resource, the etcd revision
// it has applied (file installed and reload_cmd succeeded) and the prefixes
// the resource watches, under a key bound to its own lease; announce, after
// deleting its key at revision D, waits until every live status whose
// prefixes cover the key shows a revision of at least D.
package applied

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// DefaultPrefix is where render publishes its statuses (render -status-prefix,
// announce --status-prefix).
const DefaultPrefix = "/flotilla/render/"

// Status is one resource's applied state, the value of its status key.
type Status struct {
	Host     string   `json:"host"`
	Resource string   `json:"resource"`
	Prefixes []string `json:"prefixes"`
	Revision int64    `json:"revision"`
}

// Key returns the status key of resource on host under prefix (which ends
// with '/').
func Key(prefix, host, resource string) string {
	return prefix + host + "/" + resource
}

// ValidatePrefix checks a status prefix: absolute, ending with '/'.
func ValidatePrefix(p string) error {
	if !strings.HasPrefix(p, "/") || !strings.HasSuffix(p, "/") {
		return fmt.Errorf("status prefix %q: must start and end with '/'", p)
	}
	return nil
}

// Encode returns the status as its JSON value.
func (s Status) Encode() string {
	b, _ := json.Marshal(s) // strings, a slice and an int: cannot fail
	return string(b)
}

// Decode parses a status value.
func Decode(v []byte) (Status, error) {
	var s Status
	if err := json.Unmarshal(v, &s); err != nil {
		return Status{}, fmt.Errorf("render status: %w", err)
	}
	if s.Host == "" || s.Resource == "" {
		return Status{}, errors.New("render status: no host or resource")
	}
	return s, nil
}

// Covers reports whether one of the status's prefixes holds key, with
// render's own rule: the prefix itself, or a key below it ("/" holds all).
func (s Status) Covers(key string) bool {
	for _, p := range s.Prefixes {
		if p == "/" || key == p || (strings.HasPrefix(key, p) && (strings.HasSuffix(p, "/") || key[len(p)] == '/')) {
			return true
		}
	}
	return false
}

// Name is how logs name the status: host/resource.
func (s Status) Name() string { return s.Host + "/" + s.Resource }
