package unit

import (
	"bytes"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxFileSize is the largest unit file accepted (etcd's default request limit
// is 1.5 MiB; a unit file is a few hundred bytes).
const MaxFileSize = 1 << 20

// Error is a problem in a unit file. Line is 1-based, 0 when the problem is
// not on one line (or is in the name).
type Error struct {
	Unit string
	Line int
	Err  error
}

// Error returns "unit NAME line N: problem".
func (e *Error) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("unit %s line %d: %v", e.Unit, e.Line, e.Err)
	}
	return fmt.Sprintf("unit %s: %v", e.Unit, e.Err)
}

// Unwrap returns the underlying problem.
func (e *Error) Unwrap() error { return e.Err }

// Option is one assignment in a unit file, as written (continuation lines
// joined, value trimmed, specifiers not expanded). Line is where the
// assignment starts (1-based).
type Option struct {
	Section, Name, Value string
	Line                 int
}

// File is a parsed, validated unit file. Raw is the body as submitted (its
// Hash is the unit's identity); Options are every assignment in order;
// Fleet is the [X-Fleet] section with specifiers expanded for Name; Service
// is the [Service] section of a .service unit; Description is [Unit]
// Description. A File is immutable once returned: share it freely.
type File struct {
	Name    Name
	Raw     []byte
	Options []Option
	Fleet   Fleet
	// Flotilla is the [X-Flotilla] section (flotilla-only settings).
	Flotilla    Flotilla
	Service     Service
	Description string
}

// Hash returns the hex SHA-1 of body as submitted; fleet shows its first 7
// characters.
func Hash(body []byte) string {
	sum := sha1.Sum(body)
	return hex.EncodeToString(sum[:])
}

// Hash returns Hash(f.Raw).
func (f *File) Hash() string { return Hash(f.Raw) }

// Parse parses and validates the unit file body named name (the file's
// base name, e.g. "nginx@.service"). It accepts systemd's syntax: sections,
// "Key=Value" assignments, repeated keys, comment lines starting with # or
// ;, and lines continued by a trailing backslash. It rejects a bad name, a
// line outside a section or without '=', invalid UTF-8 or NUL, unknown or
// malformed [X-Fleet] keys, and for a .service unit a bad [Service] section
// (see Service). Errors are *Error naming the unit and line.
func Parse(name string, body []byte) (*File, error) {
	n, err := ParseName(name)
	if err != nil {
		return nil, err
	}
	fail := func(line int, format string, a ...any) (*File, error) {
		return nil, &Error{Unit: name, Line: line, Err: fmt.Errorf(format, a...)}
	}
	if len(body) > MaxFileSize {
		return fail(0, "file is %d bytes, more than the %d accepted", len(body), MaxFileSize)
	}
	if !utf8.Valid(body) {
		return fail(lineOfInvalidUTF8(body), "invalid UTF-8")
	}
	if i := bytes.IndexByte(body, 0); i >= 0 {
		return fail(1+bytes.Count(body[:i], []byte("\n")), "contains a NUL byte")
	}
	// systemd skips a UTF-8 byte order mark.
	opts, err := parseOptions(name, strings.TrimPrefix(string(body), "\ufeff"))
	if err != nil {
		return nil, err
	}
	f := &File{Name: n, Raw: body, Options: opts}
	if err := f.derive(); err != nil {
		return nil, err
	}
	return f, nil
}

// derive fills the typed fields from Options and Name.
func (f *File) derive() error {
	for _, o := range f.Options {
		if o.Section == "Unit" && o.Name == "Description" {
			f.Description = o.Value
		}
	}
	fl, err := parseFleet(f.Name, f.Options)
	if err != nil {
		return err
	}
	f.Fleet = fl
	fo, err := parseFlotilla(f.Name, f.Options)
	if err != nil {
		return err
	}
	f.Flotilla = fo
	if f.Name.Type == "service" {
		s, err := parseService(f.Name, f.Options)
		if err != nil {
			return err
		}
		f.Service = s
	}
	return nil
}

// Instantiate returns the instance of template f named instance
// (f "nginx@.service", "2" → "nginx@2.service"): the same body and
// options, Name set, [X-Fleet] specifiers re-expanded for the instance.
func (f *File) Instantiate(instance string) (*File, error) {
	n, err := f.Name.Instantiate(instance)
	if err != nil {
		return nil, err
	}
	g := &File{Name: n, Raw: f.Raw, Options: f.Options, Flotilla: f.Flotilla, Service: f.Service, Description: f.Description}
	fl, err := parseFleetFor(n, f.Options, false)
	if err != nil {
		return nil, err
	}
	g.Fleet = fl
	return g, nil
}

// ErrTemplate is returned by CheckStartable for a template unit.
var ErrTemplate = errors.New("a template cannot be loaded or started; start an instance such as foo@1.service")

// CheckStartable returns an error wrapping ErrTemplate if f is a template
// ("nginx@.service"), which can be submitted but not scheduled or started.
func (f *File) CheckStartable() error {
	if f.Name.IsTemplate() {
		return &Error{Unit: f.Name.Full, Err: ErrTemplate}
	}
	return nil
}

// Values returns the values of every assignment of key in section, in
// order, honouring systemd's rule that an empty assignment resets the list.
func (f *File) Values(section, key string) []string {
	var vs []string
	for _, o := range f.Options {
		if o.Section != section || o.Name != key {
			continue
		}
		if o.Value == "" {
			vs = vs[:0]
			continue
		}
		vs = append(vs, o.Value)
	}
	return vs
}

func lineOfInvalidUTF8(b []byte) int {
	line := 1
	for len(b) > 0 {
		r, size := utf8.DecodeRune(b)
		if r == utf8.RuneError && size == 1 {
			return line
		}
		if r == '\n' {
			line++
		}
		b = b[size:]
	}
	return line
}

// parseOptions splits body into assignments with systemd's syntax.
func parseOptions(unit, body string) ([]Option, error) {
	var (
		opts    []Option
		section string
		// pending continuation
		cont     strings.Builder
		contLine int
		inCont   bool
	)
	fail := func(line int, format string, a ...any) ([]Option, error) {
		return nil, &Error{Unit: unit, Line: line, Err: fmt.Errorf(format, a...)}
	}
	lines := strings.Split(body, "\n")
	for i, raw := range lines {
		lineNo := i + 1
		line := strings.TrimSpace(strings.TrimSuffix(raw, "\r"))
		if inCont {
			// systemd ignores comment lines inside a continued value.
			if strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";") {
				continue
			}
		} else {
			if line == "" || line[0] == '#' || line[0] == ';' {
				continue
			}
			if line[0] == '[' {
				if line[len(line)-1] != ']' {
					return fail(lineNo, "section header %q has no closing ]", line)
				}
				section = line[1 : len(line)-1]
				if section == "" || strings.ContainsAny(section, "[]") {
					return fail(lineNo, "bad section header %q", line)
				}
				continue
			}
			contLine = lineNo
		}
		if oddBackslashes(line) {
			cont.WriteString(line[:len(line)-1])
			cont.WriteByte(' ')
			inCont = true
			if i < len(lines)-1 {
				continue
			}
			// A continuation on the last line ends the value there.
			line = ""
		}
		if inCont {
			cont.WriteString(line)
			line = cont.String()
			cont.Reset()
			inCont = false
		}
		if section == "" {
			return fail(contLine, "assignment %q is outside any section (add [Unit], [Service], …)", clip(line))
		}
		eq := strings.IndexByte(line, '=')
		if eq < 0 {
			return fail(contLine, "line %q is not Key=Value", clip(line))
		}
		key := strings.TrimSpace(line[:eq])
		if key == "" {
			return fail(contLine, "assignment %q has no key", clip(line))
		}
		if strings.ContainsAny(key, " \t") {
			return fail(contLine, "key %q contains whitespace", key)
		}
		opts = append(opts, Option{Section: section, Name: key, Value: strings.TrimSpace(line[eq+1:]), Line: contLine})
	}
	return opts, nil
}

// oddBackslashes reports whether s ends in an odd number of backslashes,
// i.e. its last backslash is not itself escaped.
func oddBackslashes(s string) bool {
	n := 0
	for i := len(s) - 1; i >= 0 && s[i] == '\\'; i-- {
		n++
	}
	return n%2 == 1
}

// clip shortens s for an error message.
func clip(s string) string {
	if len(s) > 60 {
		return s[:57] + "..."
	}
	return s
}
