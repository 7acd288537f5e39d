package deploy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// serviceEnv is what systemd gives every service before its own
// Environment=: not the environment of the shell that started it.
var serviceEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"}

// standinDir holds, in each machine's private /run, the stand-ins' state:
// pid files and logs of the services started, and the address → machine
// table the scp stand-in reads.
const standinDir = "/run/flotilla-deploy-test"

// unitDirs are where the systemctl stand-in looks for unit files, in
// systemd's order: the administrator's, then the packages'.
var unitDirs = []string{"/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system"}

// service is what the systemctl stand-in reads from a unit's [Service].
type service struct {
	env    []string // Environment= and EnvironmentFile= in order
	start  string   // ExecStart=
	reload []string // ExecReload=
}

// systemctlMain is systemctl inside the test's machines, which have no
// systemd: enough of it for the doc's commands and render's reload_cmd.
// start (and enable --now) runs the unit's ExecStart= in the background with
// its Environment= and EnvironmentFile=; stop sends SIGTERM and waits;
// reload runs ExecReload= with $MAINPID. For `scheduler serve`, the process
// executor stands in for systemd: `--executor systemd` becomes `--executor
// process` and `--agent-unit` is dropped.
func systemctlMain(args []string, stdout, stderr io.Writer) int {
	var verbs []string
	now := false
	for _, a := range args {
		switch {
		case a == "--now":
			now = true
		case strings.HasPrefix(a, "-"):
		default:
			verbs = append(verbs, a)
		}
	}
	if len(verbs) == 0 {
		fmt.Fprintln(stderr, "systemctl (test stand-in): no verb")
		return 1
	}
	verb, units := verbs[0], verbs[1:]
	if verb == "daemon-reload" {
		return 0
	}
	for _, u := range units {
		var err error
		switch verb {
		case "enable":
			if now {
				err = startUnit(u)
			}
		case "start":
			err = startUnit(u)
		case "stop":
			err = stopUnit(u)
		case "restart":
			if err = stopUnit(u); err == nil {
				err = startUnit(u)
			}
		case "reload":
			err = reloadUnit(u)
		case "is-active":
			if _, ok := mainPID(u); !ok {
				fmt.Fprintln(stdout, "inactive")
				return 3
			}
			fmt.Fprintln(stdout, "active")
		default:
			err = fmt.Errorf("verb %q is not part of the stand-in", verb)
		}
		if err != nil {
			fmt.Fprintf(stderr, "systemctl (test stand-in) %s %s: %v\n", verb, u, err)
			return 1
		}
	}
	return 0
}

// readService parses the unit file of name.
func readService(name string) (*service, error) {
	var text []byte
	var err error
	for _, d := range unitDirs {
		if text, err = os.ReadFile(filepath.Join(d, name)); err == nil {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("unit %s not found: %w", name, err)
	}
	s := &service{}
	section := ""
	joined := strings.ReplaceAll(string(text), "\\\n", " ")
	for _, line := range strings.Split(joined, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if line[0] == '[' {
			section = line
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || section != "[Service]" {
			continue
		}
		v = strings.TrimSpace(v)
		switch strings.TrimSpace(k) {
		case "Environment":
			s.env = append(s.env, splitQuoted(v)...)
		case "EnvironmentFile":
			vars, err := readEnvFile(v)
			if err != nil {
				return nil, err
			}
			s.env = append(s.env, vars...)
		case "ExecStart":
			s.start = strings.TrimLeft(v, "-@+!:")
		case "ExecReload":
			s.reload = append(s.reload, strings.TrimLeft(v, "-@+!:"))
		}
	}
	if s.start == "" {
		return nil, fmt.Errorf("unit %s: no ExecStart=", name)
	}
	return s, nil
}

// splitQuoted splits Environment='s value into assignments: space
// separated, double quotes grouping.
func splitQuoted(v string) []string {
	var out []string
	var cur strings.Builder
	quoted := false
	for _, r := range v {
		switch {
		case r == '"':
			quoted = !quoted
		case r == ' ' && !quoted:
			if cur.Len() > 0 {
				out = append(out, cur.String())
				cur.Reset()
			}
		default:
			cur.WriteRune(r)
		}
	}
	if cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}

// readEnvFile reads KEY=VALUE lines; a leading "-" makes a missing file fine.
func readEnvFile(spec string) ([]string, error) {
	optional := strings.HasPrefix(spec, "-")
	f, err := os.Open(strings.TrimPrefix(spec, "-"))
	if err != nil {
		if optional && errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		out = append(out, k+"="+strings.Trim(v, `"'`))
	}
	return out, sc.Err()
}

// agentFlags are the systemd executor's flags of `scheduler serve`, which
// the process executor replaces in the machines of the test.
var agentFlags = regexp.MustCompile(`--agent-unit[ =]\S+`)

// standIn rewrites a command line for the test's machines.
func standIn(cmdline string) string {
	if !strings.Contains(cmdline, "scheduler serve") {
		return cmdline
	}
	cmdline = strings.ReplaceAll(cmdline, "--executor systemd", "--executor process")
	return agentFlags.ReplaceAllString(cmdline, "")
}

func pidFile(unit string) string { return filepath.Join(standinDir, unit+".pid") }

// LogFile is where the stand-in sends a service's output.
func logFile(unit string) string { return filepath.Join(standinDir, unit+".log") }

// mainPID returns the running main process of unit.
func mainPID(unit string) (int, bool) {
	b, err := os.ReadFile(pidFile(unit))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid, err == nil && alive(pid)
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && len(s) > i+2 && s[i+2] != 'Z'
}

func startUnit(unit string) error {
	if _, ok := mainPID(unit); ok {
		return nil
	}
	s, err := readService(unit)
	if err != nil {
		return err
	}
	log, err := os.OpenFile(logFile(unit), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer log.Close()
	line := standIn(s.start)
	fmt.Fprintf(log, "--- systemctl start %s: %s\n", unit, line)
	cmd := exec.Command("sh", "-c", "exec "+line)
	cmd.Env = append(append([]string{}, serviceEnv...), s.env...)
	cmd.Dir = "/"
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	return os.WriteFile(pidFile(unit), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644)
}

func stopUnit(unit string) error {
	pid, ok := mainPID(unit)
	if !ok {
		return nil
	}
	syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(90 * time.Second) // systemd's TimeoutStopSec default
	for alive(pid) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	syscall.Kill(-pid, syscall.SIGKILL) // what is left of the service (KillMode=mixed)
	return os.Remove(pidFile(unit))
}

func reloadUnit(unit string) error {
	pid, ok := mainPID(unit)
	if !ok {
		return errors.New("not active")
	}
	s, err := readService(unit)
	if err != nil {
		return err
	}
	for _, r := range s.reload {
		cmd := exec.Command("sh", "-c", r)
		cmd.Env = append(append(append([]string{}, serviceEnv...), s.env...), "MAINPID="+strconv.Itoa(pid))
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("ExecReload=%s: %v: %s", r, err, out)
		}
	}
	return nil
}

// scpMain copies a file to another of the test's machines: scp SRC HOST:DST.
func scpMain(args []string, stderr io.Writer) int {
	var files []string
	for _, a := range args {
		if !strings.HasPrefix(a, "-") {
			files = append(files, a)
		}
	}
	if len(files) != 2 || !strings.Contains(files[1], ":") {
		fmt.Fprintln(stderr, "scp (test stand-in): want SRC HOST:DST")
		return 1
	}
	host, dst, _ := strings.Cut(files[1], ":")
	host = host[strings.LastIndexByte(host, '@')+1:]
	table, err := os.ReadFile(filepath.Join(standinDir, "hosts"))
	if err != nil {
		fmt.Fprintln(stderr, "scp (test stand-in):", err)
		return 1
	}
	for _, l := range strings.Split(string(table), "\n") {
		f := strings.Fields(l)
		if len(f) != 2 || f[0] != host {
			continue
		}
		data, err := os.ReadFile(files[0])
		if err == nil {
			target := filepath.Join("/proc", f[1], "root", dst)
			if strings.HasSuffix(dst, "/") {
				target = filepath.Join(target, filepath.Base(files[0]))
			}
			err = os.WriteFile(target, data, 0o600)
		}
		if err != nil {
			fmt.Fprintln(stderr, "scp (test stand-in):", err)
			return 1
		}
		return 0
	}
	fmt.Fprintf(stderr, "scp (test stand-in): no machine %s\n", host)
	return 1
}
