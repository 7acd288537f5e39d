package security

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/agent"
	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/executor"
	"github.com/flotilla/flotilla/internal/process"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/unit"
)

// canaries returns hostile strings that each try to create a file under dir
// when a shell evaluates them, and the files they would create.
func canaries(dir string) (values, files []string) {
	for i, form := range []string{
		"$(touch %s)",
		"`touch %s`",
		"x; touch %s",
		"x\ntouch %s",
		"x' ; touch %s ; '",
		"x\" ; touch %s ; \"",
		"x && touch %s",
		"x | touch %s",
	} {
		f := filepath.Join(dir, fmt.Sprintf("pwned-%d", i))
		values = append(values, fmt.Sprintf(form, f))
		files = append(files, f)
	}
	return values, files
}

func noneExist(t testing.TB, files []string) {
	t.Helper()
	for _, f := range files {
		if _, err := os.Stat(f); err == nil {
			t.Errorf("a hostile value reached a shell: %s exists", f)
		}
	}
}

// TestHostileUnitNamesRejected: names that would inject into a shell or
// escape the unit directory are rejected by name parsing, by the scheduler's
// command line and by the engine (which marks such a job unplaced).
func TestHostileUnitNamesRejected(t *testing.T) {
	pw := t.TempDir()
	bad := []string{
		"$(touch " + pw + "/a).service", "`id`.service", "a;b.service", "a b.service", "a\nb.service",
		"../x.service", "a/../../b.service", "/abs.service", "a/b.service", "web@$(id).service",
		"web@a;b.service", "web@../../x.service", "web@a/b.service", "web@`id`.service", "web@a\x00b.service",
		"web@a'b.service", "web@a\"b.service", "web@a|b.service", "web@a&b.service", "web@a$b.service", "web@a>b.service",
	}
	for _, name := range bad {
		if _, err := unit.ParseName(name); err == nil {
			t.Errorf("ParseName(%q) accepted a hostile name", name)
		}
	}

	srv := etcdtest.New(t)
	env := []string{"FLOTILLA_ENDPOINTS=" + srv.Endpoint()}
	good := filepath.Join(t.TempDir(), "web@.service")
	os.WriteFile(good, []byte("[Service]\nExecStart=/bin/sleep 1000\n"), 0o644)
	dir := t.TempDir()
	// A file name without '/' (so that it is one path element) whose
	// injection would create pwned-b in the command's working directory, pw.
	hostileFile := filepath.Join(dir, "x;touch pwned-b;.service")
	if err := os.WriteFile(hostileFile, []byte("[Service]\nExecStart=/bin/sleep 1000\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"start", filepath.Join(filepath.Dir(good), "web@$(touch "+pw+"/c).service")},
		{"submit", filepath.Join(filepath.Dir(good), "web@a;touch "+pw+"/d.service")},
		{"submit", hostileFile},
		{"start", "../../etc/passwd.service"},
		{"destroy", "$(touch " + pw + "/e).service"},
	} {
		cmd := exec.Command(bin("scheduler"), args...)
		cmd.Env, cmd.Dir = append(os.Environ(), env...), pw
		b, err := cmd.CombinedOutput()
		out := string(b)
		if err == nil {
			t.Errorf("scheduler %q succeeded:\n%s", args, out)
		}
		t.Logf("scheduler %q: %s", args, strings.TrimSpace(out))
	}
	entries, _ := os.ReadDir(pw)
	for _, e := range entries {
		t.Errorf("a hostile unit name reached a shell: %s exists", e.Name())
	}
}

// TestRenderHostileValuesNeverReachShell: etcd values made to break out of a
// shell command are rendered literally into the file; check_cmd and
// reload_cmd (which see only the staged and destination paths, quoted) run
// no part of them, even with a destination directory whose name is hostile.
func TestRenderHostileValuesNeverReachShell(t *testing.T) {
	srv := etcdtest.New(t)
	c := srv.Client()
	ctx := ctxFor(t, time.Minute)
	pw := t.TempDir()
	values, files := canaries(pw)
	for i, v := range values {
		if _, err := c.Put(ctx, fmt.Sprintf("/inj/k%d", i), v, 0); err != nil {
			t.Fatal(err)
		}
		// The value as a key name too.
		if _, err := c.Put(ctx, "/inj/"+v, "x", 0); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	for _, d := range []string{"conf.d", "templates"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	// A destination directory whose name is itself hostile.
	destDir := filepath.Join(t.TempDir(), "d $(touch "+pw+"/dest-dir); x'y")
	if err := os.MkdirAll(destDir, 0o755); err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(destDir, "app.cfg")
	seen := filepath.Join(t.TempDir(), "seen")
	toml := fmt.Sprintf("[template]\nsrc = \"app.tmpl\"\ndest = %q\nkeys = [\"/inj\"]\n"+
		"check_cmd = \"cat {{.src}} > /dev/null && echo checked >> %s\"\n"+
		"reload_cmd = \"cat {{.dest}} > /dev/null && echo reloaded >> %s\"\n", dest, seen, seen)
	os.WriteFile(filepath.Join(dir, "conf.d", "app.toml"), []byte(toml), 0o644)
	os.WriteFile(filepath.Join(dir, "templates", "app.tmpl"),
		[]byte("{{range gets \"/inj/*\"}}{{.Key}}={{.Value}}\n{{end}}"), 0o644)
	out, err := runWith(nil, bin("render"), "-backend", "etcdv3", "-node", srv.Endpoint(), "-confdir", dir, "-onetime")
	if err != nil {
		t.Fatalf("render: %v\n%s", err, out)
	}
	b, err := os.ReadFile(dest)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range values {
		if !strings.Contains(string(b), v) {
			t.Errorf("value %q not rendered literally", v)
		}
	}
	if s, _ := os.ReadFile(seen); string(s) != "checked\nreloaded\n" {
		t.Errorf("check_cmd/reload_cmd did not run on the quoted paths: %q", s)
	}
	noneExist(t, append(files, filepath.Join(pw, "dest-dir")))

	// announce: hostile keys and values go to etcd as bytes, never to a shell
	// (the --detach keeper is re-executed without one).
	for i, v := range values[:3] {
		key := fmt.Sprintf("/inj/announce/%d/%s", i, strings.ReplaceAll(v, "\n", "_"))
		logPath := filepath.Join(t.TempDir(), "announce.log")
		logf, err := os.Create(logPath)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin("announce"), "--detach", "--endpoints", srv.Endpoint(), "--ttl", "2s", key, "h 127.0.0.1:80")
		cmd.Stdout, cmd.Stderr = logf, logf
		// The keeper stays in this process group: stopped at cleanup.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		err = cmd.Run()
		logf.Close()
		t.Cleanup(func() { stopGroup(t, cmd.Process.Pid) })
		if err != nil {
			out, _ := os.ReadFile(logPath)
			t.Logf("announce refused key %q: %s", key, strings.TrimSpace(string(out)))
		}
	}
	noneExist(t, files)
}

// TestMachineFactsNeverInject: machine metadata is written by the agent into
// the units' environment file; hostile values (newlines, quotes, $(…)) reach
// the unit as exactly one variable each, and nothing runs them.
func TestMachineFactsNeverInject(t *testing.T) {
	pw := t.TempDir()
	values, files := canaries(pw)
	md := map[string]string{"evil": "x\nEVIL_INJECTED=1", "quote": "a'b\"c\\d$HOME"}
	for i, v := range values {
		md[fmt.Sprintf("c%d", i)] = v
	}
	facts := agent.Facts(registry.Machine{ID: "m-facts", IP: "127.0.0.9", Metadata: md})
	var vars [][2]string
	for k, v := range facts {
		vars = append(vars, [2]string{k, v})
	}
	sort.Slice(vars, func(i, j int) bool { return vars[i][0] < vars[j][0] })
	dir := t.TempDir()
	envFile := filepath.Join(dir, "machine.env")
	if err := os.WriteFile(envFile, process.WriteEnvFile(vars), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "env.out")
	ex, err := process.New(process.Options{Dir: filepath.Join(dir, "logs"), DefaultTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer ex.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The unit dumps its environment NUL-separated, so that a value holding a
	// newline is still one entry.
	body := fmt.Sprintf("[Service]\nType=oneshot\nRemainAfterExit=yes\nEnvironmentFile=%s\nExecStart=/bin/sh -c 'env -0 > %s'\nExecStartPost=/bin/echo %%n ${FLOTILLA_METADATA_C0} $FLOTILLA_METADATA_C2\n", envFile, out)
	spec := executor.Spec{Name: "facts.service", Body: []byte(body), Hash: unit.Hash([]byte(body)), EnvFile: envFile, Env: facts}
	if err := ex.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	defer ex.Remove(context.Background(), "facts.service")
	eventually(t, 20*time.Second, "unit wrote its environment", func() error {
		if b, err := os.ReadFile(out); err != nil || len(b) == 0 {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	time.Sleep(200 * time.Millisecond)
	b, _ := os.ReadFile(out)
	got := map[string]string{}
	for _, kv := range strings.Split(string(b), "\x00") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			got[k] = v
		}
	}
	for k, v := range facts {
		if got[k] != v {
			t.Errorf("unit sees %s=%q, want %q", k, got[k], v)
		}
	}
	if _, ok := got["EVIL_INJECTED"]; ok {
		t.Errorf("a newline in a metadata value injected a variable")
	}
	noneExist(t, files)
}

// TestSpecifiersNeverReachShell: an instance name may hold systemd's
// escapes (`\x3b` is ";", `\x20` a space), which %I unescapes. In Exec lines
// the process executor expands specifiers inside words, with no shell, so
// `x;touch pwned` stays one argument. (A unit that passes %I to `sh -c`
// evaluates it, exactly as under systemd: that is the unit author's code.)
func TestSpecifiersNeverReachShell(t *testing.T) {
	pw := t.TempDir()
	dir := t.TempDir()
	ex, err := process.New(process.Options{Dir: filepath.Join(dir, "logs"), DefaultTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer ex.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out := filepath.Join(dir, "args")
	body := fmt.Sprintf("[Service]\nType=oneshot\nRemainAfterExit=yes\nWorkingDirectory=%s\n"+
		"ExecStart=/bin/echo %%I\nExecStartPost=/bin/sh -c 'printf \"%%%%s|\" \"$@\" > %s' sh %%I %%i %%n %%p\n", pw, out)
	name := `inj@x\x3btouch\x20pwned\x3b\x24\x28touch\x20pwned2\x29.service`
	if _, err := unit.ParseName(name); err != nil {
		t.Fatalf("ParseName(%q): %v", name, err)
	}
	spec := executor.Spec{Name: name, Body: []byte(body), Hash: unit.Hash([]byte(body))}
	if err := ex.Start(ctx, spec); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	defer ex.Remove(context.Background(), name)
	eventually(t, 20*time.Second, "unit ran", func() error {
		if b, err := os.ReadFile(out); err != nil || len(b) == 0 {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	b, _ := os.ReadFile(out)
	want := `x;touch pwned;$(touch pwned2)|x\x3btouch\x20pwned\x3b\x24\x28touch\x20pwned2\x29|` + name + `|inj|`
	if string(b) != want {
		t.Errorf("the unit's arguments: %q, want %q", b, want)
	}
	entries, _ := os.ReadDir(pw)
	for _, e := range entries {
		t.Errorf("a specifier reached a shell: %s exists", e.Name())
	}
}
