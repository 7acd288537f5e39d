package unit

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Exec is one command of an Exec*= line, parsed with systemd's rules.
// Argv holds the words after unquoting and C unescaping; specifiers (%n…)
// and environment variables ($VAR, ${VAR}) are still as written: they are
// expanded when the command runs (see Command). Path is the program (the
// first word); with the "@" prefix Argv[0] is the second word (the name the
// program sees) and Path the first.
type Exec struct {
	Path string
	Argv []string
	// IgnoreFailure is the "-" prefix: a non-zero exit is not a failure.
	IgnoreFailure bool
	// Privileged is "+" (full privileges), AmbientCaps "!" or "!!";
	// NoEnvExpand is ":" (no $VAR expansion). The process executor ignores
	// the privilege prefixes.
	Privileged, AmbientCaps, NoEnvExpand bool
	// Raw is the command as written (prefixes included), Line its line.
	Raw  string
	Line int
}

// ParseExec parses the value of an Exec*= assignment into its commands:
// systemd allows several, separated by a lone ";" word ("\;" is a literal
// semicolon). Each command may start with the prefixes - @ + ! !! : in any
// order. Words may be quoted with "…" or '…' (see SplitWords); C escapes
// (\n \t \\ \" \' \s \xNN \NNN \uNNNN \UNNNNNNNN) are decoded, and
// escapes systemd cannot decode are kept as written, as systemd does.
// An empty value yields no commands.
func ParseExec(value string, line int) ([]Exec, error) {
	words, err := splitWords(value, false)
	if err != nil {
		return nil, err
	}
	var (
		out []Exec
		cur []string
	)
	flush := func() error {
		if len(cur) == 0 {
			return nil
		}
		e, err := newExec(cur, line)
		if err != nil {
			return err
		}
		out = append(out, e)
		cur = nil
		return nil
	}
	for _, w := range words {
		if w.text == ";" && !w.escaped {
			if len(cur) == 0 {
				return nil, fmt.Errorf("empty command before \";\"")
			}
			if err := flush(); err != nil {
				return nil, err
			}
			continue
		}
		cur = append(cur, w.text)
	}
	if err := flush(); err != nil {
		return nil, err
	}
	if len(out) == 1 {
		out[0].Raw = value
	} else {
		for i := range out {
			out[i].Raw = quoteArgv(out[i])
		}
	}
	return out, nil
}

func newExec(words []string, line int) (Exec, error) {
	e := Exec{Line: line}
	first := words[0]
	argv0Separate := false
	i := 0
prefixes:
	for ; i < len(first); i++ {
		switch first[i] {
		case '-':
			e.IgnoreFailure = true
		case '@':
			argv0Separate = true
		case '+':
			e.Privileged = true
		case '!':
			e.AmbientCaps = true
		case ':':
			e.NoEnvExpand = true
		default:
			break prefixes
		}
	}
	prog := first[i:]
	rest := words[1:]
	if prog == "" {
		// systemd allows the prefixes as a separate word? It does not: the
		// program must follow them directly.
		return Exec{}, fmt.Errorf("no program after the prefix %q", first)
	}
	e.Path = prog
	if argv0Separate {
		if len(rest) == 0 {
			return Exec{}, fmt.Errorf("the \"@\" prefix needs argv[0] after the program %q", prog)
		}
		e.Argv = append([]string{rest[0]}, rest[1:]...)
	} else {
		e.Argv = append([]string{prog}, rest...)
	}
	return e, nil
}

// quoteArgv renders a parsed command back in systemd syntax.
func quoteArgv(e Exec) string {
	prefix := ""
	if e.IgnoreFailure {
		prefix += "-"
	}
	words := e.Argv
	if e.Path != e.Argv[0] {
		prefix += "@"
		words = append([]string{e.Path}, e.Argv...)
	} else {
		words = slices.Clone(words)
	}
	if e.Privileged {
		prefix += "+"
	}
	if e.AmbientCaps {
		prefix += "!"
	}
	if e.NoEnvExpand {
		prefix += ":"
	}
	words[0] = prefix + words[0]
	var b strings.Builder
	for i, w := range words {
		if i > 0 {
			b.WriteByte(' ')
		}
		if w != "" && !strings.ContainsAny(w, " \t\n\r\"'\\;") {
			b.WriteString(w)
			continue
		}
		b.WriteByte('"')
		for j := 0; j < len(w); j++ {
			switch w[j] {
			case '"', '\\':
				b.WriteByte('\\')
			}
			b.WriteByte(w[j])
		}
		b.WriteByte('"')
	}
	return b.String()
}

// word is one word of a command line; escaped is set when it contained a
// backslash escape or quotes (so ";" written as "\;" is not a separator).
type word struct {
	text    string
	escaped bool
}

// SplitWords splits s into words with systemd's rules for lists such as
// Environment=: whitespace separates words except inside "…" or '…'
// (quotes may open anywhere in a word, as in --opt="a b", and are removed);
// C escapes are decoded inside and outside quotes, and one that cannot be
// decoded is an error (systemd would drop the rest of the line).
func SplitWords(s string) ([]string, error) {
	ws, err := splitWords(s, true)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(ws))
	for i, w := range ws {
		out[i] = w.text
	}
	return out, nil
}

// splitWords splits s; strict rejects escapes that cannot be decoded (as
// systemd's list settings such as Environment= do, dropping the rest of the
// line), otherwise they are kept as written (as in command lines).
func splitWords(s string, strict bool) ([]word, error) {
	var out []word
	i := 0
	for {
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		if i >= len(s) {
			return out, nil
		}
		var (
			b       strings.Builder
			escaped bool
			quote   byte // the open quote, 0 outside quotes
		)
		start := i
		for i < len(s) && (quote != 0 || !isSpace(s[i])) {
			c := s[i]
			switch {
			case c == '\\':
				escaped = true
				n, ok := unescapeAt(s, i, &b)
				if !ok && strict {
					return nil, fmt.Errorf("invalid escape %q (systemd would ignore the rest of the line)", s[i:min(i+n, len(s))])
				}
				i += n
				continue
			case quote != 0 && c == quote:
				quote = 0
			case quote == 0 && (c == '"' || c == '\''):
				quote, escaped = c, true
			default:
				b.WriteByte(c)
			}
			i++
		}
		if quote != 0 {
			return nil, fmt.Errorf("unbalanced quote %c", quote)
		}
		text := b.String()
		if s[start:i] == `\;` {
			// systemd: an unquoted \; word is a literal ";", not a separator
			text = ";"
		}
		out = append(out, word{text: text, escaped: escaped})
	}
}

// simpleEscape decodes the one-letter C escape \c.
func simpleEscape(c byte) (byte, bool) {
	switch c {
	case 'a':
		return '\a', true
	case 'b':
		return '\b', true
	case 'f':
		return '\f', true
	case 'n':
		return '\n', true
	case 'r':
		return '\r', true
	case 't':
		return '\t', true
	case 'v':
		return '\v', true
	case 's':
		return ' ', true
	case '\\', '"', '\'':
		return c, true
	}
	return 0, false
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// unescapeAt decodes the C escape at s[i] (a backslash) into b and returns
// how many bytes it took. As systemd (EXTRACT_CUNESCAPE_RELAX), an escape
// it does not know or cannot decode (\q, "\ ", \x00, a short \x4) is kept
// as written, backslash included, and the escaped byte never separates
// words.
func unescapeAt(s string, i int, b *strings.Builder) (int, bool) {
	if i+1 >= len(s) {
		b.WriteByte('\\')
		return 1, false
	}
	c := s[i+1]
	if r, ok := simpleEscape(c); ok {
		b.WriteByte(r)
		return 2, true
	}
	literal := func() (int, bool) {
		b.WriteString(s[i : i+2])
		return 2, false
	}
	hexN := 0
	switch c {
	case 'x':
		hexN = 2
	case 'u':
		hexN = 4
	case 'U':
		hexN = 8
	}
	if hexN > 0 {
		if i+2+hexN > len(s) || !isHex(s[i+2:i+2+hexN]) {
			return literal()
		}
		v, _ := strconv.ParseUint(s[i+2:i+2+hexN], 16, 32)
		switch {
		case v == 0:
			return literal()
		case c == 'x':
			b.WriteByte(byte(v))
		case c == 'U' && !validUnichar(v):
			// systemd checks \U (not \u) for a valid code point
			return literal()
		case v >= 0xD800 && v <= 0xDFFF:
			// systemd encodes a surrogate as UTF-8 would any code point
			b.Write([]byte{byte(0xE0 | v>>12), byte(0x80 | v>>6&0x3F), byte(0x80 | v&0x3F)})
		default:
			b.WriteRune(rune(v))
		}
		return 2 + hexN, true
	}
	if c >= '0' && c <= '7' {
		if i+4 > len(s) || !isOctal(s[i+1:i+4]) {
			return literal()
		}
		v, _ := strconv.ParseUint(s[i+1:i+4], 8, 16)
		if v == 0 || v > 255 {
			return literal()
		}
		b.WriteByte(byte(v))
		return 4, true
	}
	return literal()
}

// validUnichar is systemd's unichar_is_valid.
func validUnichar(v uint64) bool {
	switch {
	case v >= 0x110000, v&0xFFFFF800 == 0xD800, v >= 0xFDD0 && v <= 0xFDEF, v&0xFFFE == 0xFFFE:
		return false
	}
	return true
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

func isOctal(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '7' {
			return false
		}
	}
	return true
}

// Command returns the program and argv to run for e on a machine: each
// word has its specifiers expanded with sp (after splitting, as current
// systemd does, so a specifier never adds words), then environment
// variables are expanded with ExpandEnv and env (unless the ":" prefix).
// argv[0] is the name the program sees; path is the program to run.
func (e Exec) Command(sp Specifiers, env []string) (path string, argv []string, err error) {
	argv = make([]string, len(e.Argv))
	for i, w := range e.Argv {
		argv[i] = ExpandSpecifiers(w, sp)
	}
	path = ExpandSpecifiers(e.Path, sp)
	sameArgv0 := e.Path == e.Argv[0]
	if !e.NoEnvExpand {
		argv = ExpandEnv(argv, env)
		if !sameArgv0 {
			path = expandBraced(path, lookup(env))
		}
	}
	if len(argv) == 0 {
		return "", nil, fmt.Errorf("line %d: command %q is empty after expanding variables", e.Line, clip(e.Raw))
	}
	if sameArgv0 {
		path = argv[0]
	}
	if path == "" {
		return "", nil, fmt.Errorf("line %d: command %q has an empty program after expansion", e.Line, clip(e.Raw))
	}
	return path, argv, nil
}

// ExpandEnv expands environment variables in argv as systemd does for
// Exec*= lines:
//
//   - a word that starts with "$" but not "${" or "$$" names a variable
//     (the rest of the word): it is replaced by the variable's value split
//     at whitespace, zero or more words; an unset variable removes the word;
//   - otherwise each ${NAME} in the word is replaced by the value as it is
//     (one word, whitespace kept; "" if unset), "$$" is a literal "$", and
//     everything else is kept as written: $NAME inside a longer word, an
//     unterminated "${", and ${NAME:-default}-style forms, which systemd
//     does not expand in command lines.
//
// env is a list of NAME=value (the last of a name wins).
func ExpandEnv(argv []string, env []string) []string {
	look := lookup(env)
	out := make([]string, 0, len(argv))
	for _, w := range argv {
		if len(w) > 0 && w[0] == '$' && (len(w) == 1 || w[1] != '{' && w[1] != '$') {
			if v, ok := look(w[1:]); ok {
				out = append(out, strings.FieldsFunc(v, func(r rune) bool {
					return r == ' ' || r == '\t' || r == '\n' || r == '\r'
				})...)
			}
			continue
		}
		out = append(out, expandBraced(w, look))
	}
	return out
}

func lookup(env []string) func(string) (string, bool) {
	m := make(map[string]string, len(env))
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	}
}

// expandBraced replaces ${NAME} and $$ in w (see ExpandEnv).
func expandBraced(w string, look func(string) (string, bool)) string {
	if strings.IndexByte(w, '$') < 0 {
		return w
	}
	var b strings.Builder
	for i := 0; i < len(w); i++ {
		c := w[i]
		if c != '$' || i+1 >= len(w) {
			b.WriteByte(c)
			continue
		}
		switch w[i+1] {
		case '$':
			b.WriteByte('$')
			i++
			continue
		case '{':
			rest := w[i+2:]
			end := strings.IndexAny(rest, ":}")
			if end < 0 || rest[end] == ':' {
				// unterminated, or ${NAME:…}: kept as written
				b.WriteString("${")
				i++
				continue
			}
			v, _ := look(rest[:end])
			b.WriteString(v)
			i += 2 + end
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

func validEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9' {
			continue
		}
		return false
	}
	return true
}
