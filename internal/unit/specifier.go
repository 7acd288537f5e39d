package unit

import (
	"strconv"
	"strings"
)

// Specifiers are the values systemd's %-specifiers expand to for one unit on
// one machine. The zero value expands the machine-dependent specifiers to ""
// (the directory ones to systemd's system-manager defaults) and %% to %.
type Specifiers struct {
	// Name is the unit's name: %n (full), %N (without type), %p (prefix),
	// %P (prefix, unescaped), %i (instance, as written), %I (instance,
	// unescaped), %f (unescaped instance or prefix, with a leading "/"),
	// %j and %J (the last "-"-separated part of the prefix, as written and
	// unescaped).
	Name Name
	// Hostname is %H (and %l, up to the first dot), MachineID %m, BootID %b.
	Hostname, MachineID, BootID string
	// User is %u, UID %U, Group %g, GID %G, Home %h, Shell %s.
	User, UID, Group, GID, Home, Shell string
	// RuntimeDir is %t (default /run), StateDir %S (/var/lib), CacheDir %C
	// (/var/cache), LogsDir %L (/var/log), ConfigDir %E (/etc); %T is /tmp
	// and %V /var/tmp.
	RuntimeDir, StateDir, CacheDir, LogsDir, ConfigDir string
	// Extra gives the value of any other specifier letter systemd knows
	// (%a %A %B %d %D %M %o %q %v %w %W %y %Y); missing ones expand to "".
	Extra map[byte]string
}

// FleetSpecifiers returns the specifiers fleet expands in [X-Fleet] values:
// only the name-derived ones, so that placement does not depend on the
// machine.
func FleetSpecifiers(n Name) Specifiers { return Specifiers{Name: n} }

// ExpandSpecifiers replaces systemd specifiers in s (see Specifiers for
// each letter; %% is a literal %). A letter systemd does not know, or a %
// at the end, is left as written (CheckSpecifiers reports it).
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

// CheckSpecifiers returns the first specifier in s that systemd does not
// know ("%z", or "%" at the end), or "" if there is none.
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

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
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
	case 'j':
		p := sp.Name.Prefix
		return p[strings.LastIndexByte(p, '-')+1:], true
	case 'J':
		p := sp.Name.Prefix
		return Unescape(p[strings.LastIndexByte(p, '-')+1:]), true
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
	case 'l':
		h, _, _ := strings.Cut(sp.Hostname, ".")
		return h, true
	case 'm':
		return sp.MachineID, true
	case 'b':
		return sp.BootID, true
	case 'u':
		return sp.User, true
	case 'U':
		return sp.UID, true
	case 'g':
		return sp.Group, true
	case 'G':
		return sp.GID, true
	case 'h':
		return sp.Home, true
	case 's':
		return sp.Shell, true
	case 't':
		return orDefault(sp.RuntimeDir, "/run"), true
	case 'S':
		return orDefault(sp.StateDir, "/var/lib"), true
	case 'C':
		return orDefault(sp.CacheDir, "/var/cache"), true
	case 'L':
		return orDefault(sp.LogsDir, "/var/log"), true
	case 'E':
		return orDefault(sp.ConfigDir, "/etc"), true
	case 'T':
		return "/tmp", true
	case 'V':
		return "/var/tmp", true
	case 'a', 'A', 'B', 'd', 'D', 'M', 'o', 'q', 'v', 'w', 'W', 'y', 'Y':
		return sp.Extra[c], true
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
