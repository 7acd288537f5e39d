package systemd

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/flotilla/flotilla/internal/atomicfile"
)

// marker is the first line of every file flotilla writes; a file without it
// is foreign and is never overwritten or deleted.
const marker = "# flotilla: owned"

// dropInName is the name of flotilla's drop-in in "<unit>.d/". Its presence
// (with the marker) is what makes a unit one of this executor's units.
const dropInName = "50-flotilla.conf"

// knownSuffix tells the unit types flotilla may install.
func knownSuffix(s string) bool {
	switch s {
	case ".service", ".socket", ".timer", ".path", ".target", ".mount", ".automount", ".swap", ".slice":
		return true
	}
	return false
}

// unitName is a parsed unit name: "nginx@1.service" → prefix "nginx",
// instance "1", suffix ".service".
type unitName struct {
	full     string
	prefix   string
	instance string // "" for a plain unit
	suffix   string
	template bool // "nginx@.service"
}

func parseName(name string) (unitName, error) {
	n := unitName{full: name}
	if name == "" || len(name) > 255 || strings.ContainsAny(name, "/\x00") || name == "." || name == ".." {
		return n, fmt.Errorf("invalid unit name %q", name)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune(":-_.\\@", r)) {
			return n, fmt.Errorf("invalid unit name %q: character %q", name, r)
		}
	}
	dot := strings.LastIndexByte(name, '.')
	if dot <= 0 {
		return n, fmt.Errorf("invalid unit name %q: no unit type suffix", name)
	}
	n.suffix = name[dot:]
	if !knownSuffix(n.suffix) {
		return n, fmt.Errorf("invalid unit name %q: unknown unit type %q", name, n.suffix)
	}
	base := name[:dot]
	at := strings.IndexByte(base, '@')
	switch {
	case at < 0:
		n.prefix = base
	case at == 0 || strings.Count(base, "@") > 1:
		return n, fmt.Errorf("invalid unit name %q", name)
	default:
		n.prefix, n.instance = base[:at], base[at+1:]
		n.template = n.instance == ""
	}
	return n, nil
}

// templateName is "nginx@.service" for "nginx@1.service".
func (n unitName) templateName() string { return n.prefix + "@" + n.suffix }

// owned describes a file flotilla may have written.
type owned struct {
	exists bool
	owned  bool
	hash   string // recorded on the marker line: "# flotilla: owned hash=…"
	body   []byte // the file without its marker line
}

// readOwned reads path and tells whether flotilla owns it.
func readOwned(path string) (owned, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return owned{}, nil
	}
	if err != nil {
		return owned{}, err
	}
	o := owned{exists: true}
	first, rest, _ := bytes.Cut(b, []byte("\n"))
	line := string(first)
	if line != marker && !strings.HasPrefix(line, marker+" ") {
		return o, nil
	}
	o.owned = true
	o.body = rest
	for _, f := range strings.Fields(strings.TrimPrefix(line, marker)) {
		if v, ok := strings.CutPrefix(f, "hash="); ok {
			o.hash = v
		}
	}
	return o, nil
}

// ownedContent is body with the marker line (recording hash) in front.
func ownedContent(hash string, body []byte) []byte {
	var b bytes.Buffer
	b.WriteString(marker)
	if hash != "" {
		b.WriteString(" hash=" + hash)
	}
	b.WriteByte('\n')
	b.Write(body)
	if len(body) > 0 && body[len(body)-1] != '\n' {
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// bodyHash is used when a Spec carries no hash.
func bodyHash(body []byte) string {
	s := sha256.Sum256(body)
	return hex.EncodeToString(s[:])[:12]
}

// writeAtomic writes content to path through a synced temporary file in the
// same directory and a rename, so systemd never reads half a file. It
// reports whether the file changed.
func writeAtomic(path string, content []byte) (bool, error) {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, content) {
		return false, nil
	}
	if err := atomicfile.Write(path, content, 0o644); err != nil {
		return false, err
	}
	return true, nil
}

// removeOwned deletes path if flotilla owns it; it reports whether it did.
func removeOwned(path string) (bool, error) {
	o, err := readOwned(path)
	if err != nil || !o.owned {
		return false, err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	return true, nil
}

// ownedUnits lists the units that have flotilla's drop-in in dir, with the
// hash each was started with.
func ownedUnits(dir string) (map[string]string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]string{}, nil
	}
	if err != nil {
		return nil, err
	}
	out := make(map[string]string)
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".d")
		if !ok || !e.IsDir() {
			continue
		}
		if _, err := parseName(name); err != nil {
			continue
		}
		o, err := readOwned(filepath.Join(dir, e.Name(), dropInName))
		if err != nil {
			return nil, err
		}
		if o.owned {
			out[name] = o.hash
		}
	}
	return out, nil
}

// dropIn is the content of flotilla's drop-in for a unit: the machine-facts
// environment file and the binding to the agent's own unit. The unit body
// itself stays exactly as submitted.
func dropIn(n unitName, hash string, envFile string, env map[string]string, agentUnit, agentDep string) []byte {
	var b strings.Builder
	if agentUnit != "" {
		fmt.Fprintf(&b, "[Unit]\n%s=%s\n", agentDep, agentUnit)
	}
	section := map[string]string{".service": "Service", ".socket": "Socket", ".mount": "Mount", ".swap": "Swap"}[n.suffix]
	if section != "" && (envFile != "" || len(env) > 0) {
		fmt.Fprintf(&b, "[%s]\n", section)
		if envFile != "" {
			fmt.Fprintf(&b, "EnvironmentFile=-%s\n", strings.ReplaceAll(envFile, "%", "%%"))
		} else {
			for _, k := range slices.Sorted(maps.Keys(env)) {
				fmt.Fprintf(&b, "Environment=%s\n", quoteEnv(k+"="+env[k]))
			}
		}
	}
	return ownedContent(hash, []byte(b.String()))
}

// quoteEnv quotes one KEY=value assignment for Environment=: double quotes,
// with backslash, double quote and newline escaped and % doubled (systemd
// would expand it as a specifier).
func quoteEnv(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`, "%", "%%")
	return `"` + r.Replace(s) + `"`
}
