package unit

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
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
// (\n \t \\ \" \' \s \xNN \NNN \uNNNN) are decoded.
// An empty value yields no commands.
func ParseExec(value string, line int) ([]Exec, error) {
	words, err := splitWords(value)
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

// SplitWords splits s into words with systemd's rules for command lines
// and lists (Environment=): whitespace separates words except inside "…"
// or '…' (quotes may open anywhere in a word, as in --opt="a b", and are
// removed); C escapes are decoded inside and outside quotes.
func SplitWords(s string) ([]string, error) {
	ws, err := splitWords(s)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(ws))
	for i, w := range ws {
		out[i] = w.text
	}
	return out, nil
}

func splitWords(s string) ([]word, error) {
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
		for i < len(s) && (quote != 0 || !isSpace(s[i])) {
			c := s[i]
			switch {
			case c == '\\':
				escaped = true
				n, err := unescapeAt(s, i, &b)
				if err != nil {
					return nil, err
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
		out = append(out, word{text: b.String(), escaped: escaped})
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
	case 's', ' ':
		return ' ', true
	case '\\', '"', '\'', ';':
		return c, true
	}
	return 0, false
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// unescapeAt decodes the C escape at s[i] (a backslash) into b and returns
// how many bytes it took.
func unescapeAt(s string, i int, b *strings.Builder) (int, error) {
	if i+1 >= len(s) {
		return 0, fmt.Errorf("backslash at the end of the line")
	}
	c := s[i+1]
	if r, ok := simpleEscape(c); ok {
		b.WriteByte(r)
		return 2, nil
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
		if i+2+hexN > len(s) {
			return 0, fmt.Errorf("short escape \\%c", c)
		}
		v, err := strconv.ParseUint(s[i+2:i+2+hexN], 16, 32)
		if err != nil {
			return 0, fmt.Errorf("bad escape %q", s[i:i+2+hexN])
		}
		if c == 'x' {
			if v == 0 {
				return 0, fmt.Errorf("escape \\x00 (NUL) is not allowed")
			}
			b.WriteByte(byte(v))
		} else {
			if v == 0 || v > utf8.MaxRune {
				return 0, fmt.Errorf("bad escape %q", s[i:i+2+hexN])
			}
			b.WriteRune(rune(v))
		}
		return 2 + hexN, nil
	}
	if c >= '0' && c <= '7' {
		if i+4 > len(s) {
			return 0, fmt.Errorf("short octal escape")
		}
		v, err := strconv.ParseUint(s[i+1:i+4], 8, 8)
		if err != nil || v == 0 {
			return 0, fmt.Errorf("bad octal escape %q", s[i:i+4])
		}
		b.WriteByte(byte(v))
		return 4, nil
	}
	return 0, fmt.Errorf("unknown escape \\%c", c)
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

// ExpandEnv expands environment variables in argv with systemd's rules:
// a word that is exactly $NAME is replaced by NAME's value split at
// whitespace (zero or more words); ${NAME} anywhere in a word is replaced
// by the value as it is (one word, whitespace kept); ${NAME:-default} and
// ${NAME:+alternative} as in the shell; "$$" is a literal "$". Unset
// variables expand to "". env is a list of NAME=value (the last wins).
// $NAME inside a longer word is left as written.
func ExpandEnv(argv []string, env []string) []string {
	look := lookup(env)
	out := make([]string, 0, len(argv))
	for _, w := range argv {
		if len(w) > 1 && w[0] == '$' && validEnvName(w[1:]) {
			out = append(out, strings.Fields(look(w[1:]))...)
			continue
		}
		out = append(out, expandBraced(w, look))
	}
	return out
}

func lookup(env []string) func(string) string {
	m := make(map[string]string, len(env))
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return func(k string) string { return m[k] }
}

func expandBraced(w string, look func(string) string) string {
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
			end := strings.IndexByte(w[i+2:], '}')
			if end < 0 {
				b.WriteByte(c)
				continue
			}
			expr := w[i+2 : i+2+end]
			name, alt, op := expr, "", ""
			if j := strings.Index(expr, ":-"); j >= 0 {
				name, alt, op = expr[:j], expr[j+2:], "-"
			} else if j := strings.Index(expr, ":+"); j >= 0 {
				name, alt, op = expr[:j], expr[j+2:], "+"
			}
			if !validEnvName(name) {
				b.WriteByte(c)
				continue
			}
			v := look(name)
			switch {
			case op == "-" && v == "":
				v = alt
			case op == "+":
				if v != "" {
					v = alt
				}
			}
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
