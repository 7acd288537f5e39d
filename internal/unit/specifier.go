package unit

import (
	"strconv"
	"strings"
)

// Specifiers are the values systemd's %-specifiers expand to for one unit on
// one machine. The zero value expands every specifier to "" (and %% to %).
type Specifiers struct {
	// Name is the unit's name: %n (full), %N (without type), %p (prefix),
	// %P (prefix, unescaped), %i (instance, as written), %I (instance,
	// unescaped), %f (unescaped instance or prefix, with a leading "/").
	Name Name
	// Hostname is %H, MachineID %m, BootID %b.
	Hostname, MachineID, BootID string
}

// FleetSpecifiers returns the specifiers fleet expands in [X-Fleet] values:
// only the name-derived ones, so that placement does not depend on the
// machine.
func FleetSpecifiers(n Name) Specifiers { return Specifiers{Name: n} }

// ExpandSpecifiers replaces systemd specifiers in s: %n %N %p %P %i %I %f
// %H %m %b and %% (a literal %). An unknown specifier, or a % at the end, is
// left as written (use CheckSpecifiers to reject it).
func ExpandSpecifiers(s string, sp Specifiers) string {
	if strings.IndexByte(s, '%') < 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 16)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '%' || i+1 == len(s) {
			b.WriteByte(c)
			continue
		}
		v, ok := specifier(s[i+1], sp)
		if !ok {
			b.WriteByte(c)
			continue
		}
		b.WriteString(v)
		i++
	}
	return b.String()
}

// CheckSpecifiers returns the first unknown specifier in s ("%z"), or "" if
// every % in s starts a known specifier.
func CheckSpecifiers(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			continue
		}
		if i+1 == len(s) {
			return "%"
		}
		if _, ok := specifier(s[i+1], Specifiers{}); !ok {
			return s[i : i+2]
		}
		i++
	}
	return ""
}

func specifier(c byte, sp Specifiers) (string, bool) {
	switch c {
	case 'n':
		return sp.Name.Full, true
	case 'N':
		return sp.Name.WithoutType(), true
	case 'p':
		return sp.Name.Prefix, true
	case 'P':
		return Unescape(sp.Name.Prefix), true
	case 'i':
		return sp.Name.Instance, true
	case 'I':
		return Unescape(sp.Name.Instance), true
	case 'f':
		s := sp.Name.Instance
		if !sp.Name.IsInstance() {
			s = sp.Name.Prefix
		}
		s = Unescape(s)
		if !strings.HasPrefix(s, "/") {
			s = "/" + s
		}
		return s, true
	case 'H':
		return sp.Hostname, true
	case 'm':
		return sp.MachineID, true
	case 'b':
		return sp.BootID, true
	case '%':
		return "%", true
	}
	return "", false
}

// Unescape undoes systemd-escape: "-" becomes "/" and "\xNN" the byte NN.
// A malformed escape is kept as written.
func Unescape(s string) string {
	if strings.IndexByte(s, '-') < 0 && strings.IndexByte(s, '\\') < 0 {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '-':
			b.WriteByte('/')
		case c == '\\' && i+3 < len(s) && s[i+1] == 'x':
			v, err := strconv.ParseUint(s[i+2:i+4], 16, 8)
			if err != nil {
				b.WriteByte(c)
				continue
			}
			b.WriteByte(byte(v))
			i += 3
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}
