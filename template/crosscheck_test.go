package template

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The cross-checks render every golden case with the real confd binaries
// and with this package, both seeing the same keys, environment, host name,
// resolver and interfaces, and require identical bytes. They need the
// binaries (never committed): build them from the confd sources into /tmp,
//
//	git clone https://github.com/kelseyhightower/confd && (cd confd && go build -mod=vendor -o /tmp/confd-bin/confd .)
//	git clone https://github.com/abtreece/confd fork && (cd fork && go build -mod=vendor -o /tmp/confd-bin/confd-fork ./cmd/confd)
//
// and run
//
//	CONFD_BIN=/tmp/confd-bin/confd CONFD_FORK_BIN=/tmp/confd-bin/confd-fork \
//	    go test ./template -run Matches -v
//
// Last run: confd 0.17.0-dev (kelseyhightower/confd 919444eb) and
// abtreece/confd b208352e, both built with go1.26.8: all cases identical
// except the documented divergences below.

// crossOptions is goldenOptions with the real host name, resolver and
// interfaces, which the confd binaries use too.
func crossOptions(dir string) Options {
	o := goldenOptions()
	o.Dir = dir
	o.Hostname, o.LookupIP, o.LookupSRV, o.InterfaceAddrs = nil, nil, nil, nil
	return o
}

// forkDiffers lists the confd_* cases where the fork deliberately differs
// from the original confd, whose meaning this package keeps.
var forkDiffers = map[string]string{
	"confd_seq":     "the fork counts down when first > last; confd returns nothing",
	"confd_reverse": "the fork's reverse returns a copy; confd reverses in place",
}

func TestGoldenMatchesConfd(t *testing.T) {
	bin := os.Getenv("CONFD_BIN")
	if bin == "" {
		t.Skip("CONFD_BIN not set: no confd binary to cross-check against")
	}
	for _, c := range loadGoldenCases(t) {
		if !strings.HasPrefix(c.name, "confd_") || c.name == "confd_datetime" {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			crossCheck(t, c, func(confdir, keys string) *exec.Cmd {
				return exec.Command(bin, "-onetime", "-backend", "file", "-file", keys, "-confdir", confdir, "-log-level", "error")
			})
		})
	}
}

func TestGoldenMatchesFork(t *testing.T) {
	bin := os.Getenv("CONFD_FORK_BIN")
	if bin == "" {
		t.Skip("CONFD_FORK_BIN not set: no abtreece/confd binary to cross-check against")
	}
	for _, c := range loadGoldenCases(t) {
		if !(strings.HasPrefix(c.name, "confd_") || strings.HasPrefix(c.name, "fork_")) || c.name == "confd_datetime" {
			continue // sprig_* and flotilla_* are our additions
		}
		if why, ok := forkDiffers[c.name]; ok {
			t.Logf("%s: skipped: %s", c.name, why)
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			crossCheck(t, c, func(confdir, keys string) *exec.Cmd {
				return exec.Command(bin, "file", "--file", keys, "--onetime", "--confdir", confdir,
					"--config-file", filepath.Join(confdir, "none.toml"), "--log-level", "error")
			})
		})
	}
}

func crossCheck(t *testing.T, c goldenCase, command func(confdir, keys string) *exec.Cmd) {
	crossCheckKeys(t, c, mustReadFile(t, filepath.Join(goldenDir, c.name+".json")), command)
}

func crossCheckKeys(t *testing.T, c goldenCase, keysJSON []byte, command func(confdir, keys string) *exec.Cmd) {
	dir := t.TempDir()
	confdir := filepath.Join(dir, "confd")
	tdir := filepath.Join(confdir, "templates")
	if err := os.CopyFS(tdir, os.DirFS(filepath.Join(goldenDir, "include"))); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(confdir, "conf.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(dir, "out")
	toml := fmt.Sprintf("[template]\nsrc = %q\ndest = %q\nkeys = [\"/\"]\n", c.name+".tmpl", dest)
	keys := filepath.Join(dir, "keys.json")
	for name, body := range map[string][]byte{
		filepath.Join(confdir, "conf.d", "t.toml"): []byte(toml),
		filepath.Join(tdir, c.name+".tmpl"):        c.tmpl,
		keys:                                       keysJSON,
	} {
		if err := os.WriteFile(name, body, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := command(confdir, keys)
	cmd = exec.CommandContext(ctx, cmd.Path, cmd.Args[1:]...)
	env := os.Environ()
	for k, v := range maps.All(goldenEnv) {
		env = append(env, k+"="+v)
	}
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", cmd, err, out)
	}
	want := mustReadFile(t, dest)

	tp, err := Parse(c.name+".tmpl", c.tmpl, crossOptions(tdir))
	if err != nil {
		t.Fatal(err)
	}
	got, err := tp.Render(NewStore(c.keys))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s: we render\n%q\nconfd renders\n%q", c.name, got, want)
	}
}

func mustReadFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRandomMatchesConfd renders random key trees through ls, lsdir, gets,
// getvs, exists and the sorting functions, with confd and with this
// package, and requires identical bytes: a differential test of the
// store's edge cases against the real thing.
func TestRandomMatchesConfd(t *testing.T) {
	bin := os.Getenv("CONFD_BIN")
	if bin == "" {
		t.Skip("CONFD_BIN not set: no confd binary to cross-check against")
	}
	segs := []string{"a", "b", "ab", "a.b", "x-1", "nginx@1.service", "nginx@10.service", "_"}
	args := []string{"/", "/a", "/a/", "/a/b", "/ab", "/a/b/", "/x-1", "/a/*", "/*/b", "/*", "/a/[ab]*", "/?/*", "/a/b/*", "/*/*/*"}
	var src strings.Builder
	for _, a := range args {
		fmt.Fprintf(&src, "%[1]s: ls=%[2]v lsdir=%[3]v gets=%[4]v getvs=%[5]v exists=%[6]v\n",
			a, `{{ls "`+a+`"}}`, `{{lsdir "`+a+`"}}`, `{{gets "`+a+`"}}`, `{{getvs "`+a+`"}}`, `{{exists "`+a+`"}}`)
	}
	src.WriteString(`{{range sortKVByLength (gets "/*/*")}}{{.Key}} {{end}}
{{sortByLength (getvs "/*/*")}} {{reverse (sortByLength (ls "/a"))}}
`)
	rng := rand.New(rand.NewPCG(7, 7))
	for round := range 15 {
		keys := map[string]string{}
		for i := range 5 + rng.IntN(25) {
			var b strings.Builder
			for range 1 + rng.IntN(3) {
				b.WriteString("/" + segs[rng.IntN(len(segs))])
			}
			keys[b.String()] = fmt.Sprintf("v%02d", i%7)
		}
		js, err := json.Marshal(keys)
		if err != nil {
			t.Fatal(err)
		}
		c := goldenCase{name: fmt.Sprintf("random%d", round), tmpl: []byte(src.String()), keys: keys}
		t.Run(c.name, func(t *testing.T) {
			crossCheckKeys(t, c, js, func(confdir, keys string) *exec.Cmd {
				return exec.Command(bin, "-onetime", "-backend", "file", "-file", keys, "-confdir", confdir, "-log-level", "error")
			})
		})
	}
}
