package process

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strings"
)

// envList is an ordered environment where a later set of a name wins.
type envList struct {
	order []string
	vals  map[string]string
}

func newEnv() *envList { return &envList{vals: map[string]string{}} }

func (e *envList) set(k, v string) {
	if _, ok := e.vals[k]; !ok {
		e.order = append(e.order, k)
	}
	e.vals[k] = v
}

func (e *envList) get(k string) (string, bool) {
	v, ok := e.vals[k]
	return v, ok
}

func (e *envList) merge(kvs [][2]string) {
	for _, kv := range kvs {
		e.set(kv[0], kv[1])
	}
}

func (e *envList) list() []string {
	out := make([]string, len(e.order))
	for i, k := range e.order {
		out[i] = k + "=" + e.vals[k]
	}
	return out
}

// readEnvFile reads an environment file as systemd's EnvironmentFile= does.
func readEnvFile(path string) ([][2]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	vars, err := parseEnvFile(b)
	if err != nil {
		return nil, fmt.Errorf("%s:%w", path, err)
	}
	return vars, nil
}

// parseEnvFile parses NAME=value lines: blank lines and lines starting with
// # or ; are skipped, an optional "export " prefix is allowed, a value may
// be quoted with "…" (backslash escapes \" \\ \$ \` and \n) or '…' (literal),
// and a line ending in a backslash continues on the next. Errors are
// "LINE: problem".
func parseEnvFile(b []byte) ([][2]string, error) {
	var out [][2]string
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 4096), 1<<20)
	lineNo, start := 0, 0
	var pending strings.Builder
	for sc.Scan() {
		lineNo++
		line := sc.Text()
		if pending.Len() == 0 {
			start = lineNo
		}
		if strings.HasSuffix(line, `\`) && !strings.HasSuffix(line, `\\`) {
			pending.WriteString(strings.TrimSuffix(line, `\`))
			continue
		}
		pending.WriteString(line)
		full := strings.TrimSpace(pending.String())
		pending.Reset()
		if full == "" || full[0] == '#' || full[0] == ';' {
			continue
		}
		full = strings.TrimPrefix(full, "export ")
		k, v, ok := strings.Cut(full, "=")
		k = strings.TrimSpace(k)
		if !ok || !validName(k) {
			return nil, fmt.Errorf("%d: %q is not NAME=value", start, clip(full))
		}
		v, err := unquote(strings.TrimSpace(v))
		if err != nil {
			return nil, fmt.Errorf("%d: %s: %w", start, k, err)
		}
		out = append(out, [2]string{k, v})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%d: %w", lineNo, err)
	}
	if pending.Len() > 0 {
		return nil, fmt.Errorf("%d: continuation at end of file", start)
	}
	return out, nil
}

func unquote(v string) (string, error) {
	if v == "" {
		return "", nil
	}
	switch q := v[0]; q {
	case '\'':
		if len(v) < 2 || v[len(v)-1] != '\'' {
			return "", fmt.Errorf("unterminated quote")
		}
		return v[1 : len(v)-1], nil
	case '"':
		if len(v) < 2 || v[len(v)-1] != '"' || strings.HasSuffix(v[:len(v)-1], `\`) && !strings.HasSuffix(v[:len(v)-1], `\\`) {
			return "", fmt.Errorf("unterminated quote")
		}
		var b strings.Builder
		in := v[1 : len(v)-1]
		for i := 0; i < len(in); i++ {
			c := in[i]
			if c == '\\' && i+1 < len(in) {
				i++
				switch in[i] {
				case 'n':
					b.WriteByte('\n')
				case '"', '\\', '$', '`':
					b.WriteByte(in[i])
				default:
					b.WriteByte('\\')
					b.WriteByte(in[i])
				}
				continue
			}
			b.WriteByte(c)
		}
		return b.String(), nil
	}
	return v, nil
}

func validName(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || i > 0 && c >= '0' && c <= '9' {
			continue
		}
		return false
	}
	return true
}

func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// WriteEnvFile renders vars (sorted by the caller) as an environment file
// that readEnvFile and systemd's EnvironmentFile= read back unchanged.
func WriteEnvFile(vars [][2]string) []byte {
	var b strings.Builder
	for _, kv := range vars {
		v := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`, "$", `\$`, "`", "\\`").Replace(kv[1])
		fmt.Fprintf(&b, "%s=\"%s\"\n", kv[0], v)
	}
	return []byte(b.String())
}
