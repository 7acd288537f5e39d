package unit

import (
	"fmt"
	"strings"
)

// MaxNameLen is the longest unit name accepted, as systemd's UNIT_NAME_MAX
// (256 including the terminating NUL).
const MaxNameLen = 255

// knownType reports whether t is a unit type systemd knows.
func knownType(t string) bool {
	switch t {
	case "service", "socket", "device", "mount", "automount", "swap", "target",
		"path", "timer", "slice", "scope":
		return true
	}
	return false
}

// Name is a parsed unit name. For "nginx@1.service" Full is the whole name,
// Prefix "nginx", Instance "1" and Type "service"; for the template
// "nginx@.service" Instance is ""; for a plain "web.service" Prefix is "web".
// The zero Name is not a valid name.
type Name struct {
	Full, Prefix, Instance, Type string
	// at records whether the name contains '@' (template or instance).
	at bool
}

// ParseName parses and validates a unit name. It rejects names with '/',
// "..", NUL, control characters or spaces, an empty prefix, a type systemd
// does not know, characters systemd does not allow, or more than
// MaxNameLen bytes; the error names the unit.
func ParseName(s string) (Name, error) {
	bad := func(format string, a ...any) (Name, error) {
		return Name{}, fmt.Errorf("unit name %q: %s", s, fmt.Sprintf(format, a...))
	}
	switch {
	case s == "":
		return Name{}, fmt.Errorf("unit name is empty")
	case len(s) > MaxNameLen:
		return bad("longer than %d bytes", MaxNameLen)
	case strings.Contains(s, ".."):
		return bad(`contains ".."`)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == 0:
			return bad("contains NUL")
		case c == '/':
			return bad(`contains "/"`)
		case c == ' ' || c == '\t':
			return bad("contains a space")
		case c < 0x20 || c == 0x7f:
			return bad("contains a control character")
		case c >= 0x80:
			return bad("contains a non-ASCII byte (escape it as systemd-escape does)")
		}
	}
	dot := strings.LastIndexByte(s, '.')
	if dot < 0 {
		return bad("has no type suffix (such as .service)")
	}
	typ := s[dot+1:]
	if !knownType(typ) {
		return bad("unknown unit type %q (want service, socket, timer, path, mount, target, …)", typ)
	}
	base := s[:dot]
	n := Name{Full: s, Type: typ, Prefix: base}
	if at := strings.IndexByte(base, '@'); at >= 0 {
		n.at = true
		n.Prefix, n.Instance = base[:at], base[at+1:]
		if !validChars(n.Instance, true) {
			return bad("instance %q has characters systemd does not allow (allowed: letters, digits, \":-_.\\@\")", n.Instance)
		}
	}
	if n.Prefix == "" {
		return bad("empty prefix")
	}
	if !validChars(n.Prefix, false) {
		return bad("prefix %q has characters systemd does not allow (allowed: letters, digits, \":-_.\\\")", n.Prefix)
	}
	return n, nil
}

// validChars reports whether s only has the characters systemd allows in a
// unit name (instances may also contain '@').
func validChars(s string, allowAt bool) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == ':' || c == '-' || c == '_' || c == '.' || c == '\\':
		case c == '@' && allowAt:
		default:
			return false
		}
	}
	return true
}

// IsTemplate reports whether n is a template such as "nginx@.service".
func (n Name) IsTemplate() bool { return n.at && n.Instance == "" }

// IsInstance reports whether n is an instance of a template, such as
// "nginx@1.service".
func (n Name) IsInstance() bool { return n.at && n.Instance != "" }

// TemplateName returns the template of an instance or template name
// ("nginx@1.service" → "nginx@.service"), or "" for a plain name.
func (n Name) TemplateName() string {
	if !n.at {
		return ""
	}
	return n.Prefix + "@." + n.Type
}

// WithoutType returns the name without its type suffix ("nginx@1"), which
// is what the %N specifier expands to.
func (n Name) WithoutType() string {
	return strings.TrimSuffix(n.Full, "."+n.Type)
}

// Instantiate returns the instance of template n named by instance
// ("nginx@.service", "2" → "nginx@2.service").
func (n Name) Instantiate(instance string) (Name, error) {
	if !n.IsTemplate() {
		return Name{}, fmt.Errorf("unit %s: not a template (want a name like foo@.service)", n.Full)
	}
	if instance == "" {
		return Name{}, fmt.Errorf("unit %s: empty instance", n.Full)
	}
	return ParseName(n.Prefix + "@" + instance + "." + n.Type)
}

// String returns the full name.
func (n Name) String() string { return n.Full }
