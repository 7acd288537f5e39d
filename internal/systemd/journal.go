package systemd

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
)

// journalTimeout bounds one journalctl run.
const journalTimeout = 10 * time.Second

// Journal returns up to lines last journal lines of a unit (journalctl -u,
// or --user-unit for a user manager). When the journal has none, the first
// line says so and the rest is what systemd reports about the unit: its
// states and result, and each Exec command's last exit status.
func (e *Executor) Journal(ctx context.Context, name string, lines int) ([]string, error) {
	if _, err := parseName(name); err != nil {
		return nil, fmt.Errorf("systemd: journal: %w", err)
	}
	if lines <= 0 {
		lines = 10
	}
	out, jerr := e.journalctl(ctx, name, lines)
	if jerr == nil && len(out) > 0 {
		return out, nil
	}
	why := "journald has no entries for it"
	if jerr != nil {
		why = jerr.Error()
	}
	c, err := e.bus(ctx)
	if err != nil {
		return nil, fmt.Errorf("systemd: journal %s: %s; %w", name, why, err)
	}
	status, err := e.status(ctx, c, name)
	if err != nil {
		return nil, fmt.Errorf("systemd: journal %s: %s; status: %w", name, why, err)
	}
	return append([]string{fmt.Sprintf("-- no journal for %s (%s); systemd reports: --", name, why)}, status...), nil
}

func (e *Executor) journalctl(ctx context.Context, name string, lines int) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, journalTimeout)
	defer cancel()
	sel := "-u"
	if e.opts.User {
		sel = "--user-unit"
	}
	args := []string{"--no-pager", "--quiet", "-o", "cat", "-n", strconv.Itoa(lines), sel, name}
	if e.opts.JournalDir != "" {
		args = append(args, "-D", e.opts.JournalDir)
	}
	cmd := exec.CommandContext(ctx, "journalctl", args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("journalctl %s %s: %w: %s", sel, name, err, strings.TrimSpace(stderr.String()))
	}
	text := strings.TrimRight(stdout.String(), "\n")
	if text == "" {
		return nil, nil
	}
	return strings.Split(text, "\n"), nil
}

// status describes a unit from its D-Bus properties, for when the journal
// cannot.
func (e *Executor) status(ctx context.Context, c *sddbus.Conn, name string) ([]string, error) {
	u, err := c.GetUnitPropertiesContext(ctx, name)
	if err != nil {
		return nil, err
	}
	str := func(m map[string]any, k string) string { s, _ := m[k].(string); return s }
	line := fmt.Sprintf("%s: %s %s/%s", name, str(u, "LoadState"), str(u, "ActiveState"), str(u, "SubState"))
	if ts, ok := u["StateChangeTimestamp"].(uint64); ok && ts > 0 {
		line += " since " + time.UnixMicro(int64(ts)).UTC().Format(time.RFC3339)
	}
	out := []string{line}
	if msg := strings.TrimPrefix(loadError(u), ": "); msg != "" {
		out = append(out, "load error: "+msg)
	}
	typ := unitType(name)
	if typ != "Service" && typ != "Socket" && typ != "Mount" && typ != "Swap" {
		return out, nil
	}
	s, err := c.GetUnitTypePropertiesContext(ctx, name, typ)
	if err != nil {
		return out, nil //nolint:nilerr // the unit's states are still worth showing
	}
	if r := str(s, "Result"); r != "" {
		extra := ""
		if n, ok := s["NRestarts"].(uint32); ok && n > 0 {
			extra = fmt.Sprintf(", restarted %d times", n)
		}
		out = append(out, "result: "+r+extra)
	}
	if t := str(s, "StatusText"); t != "" {
		out = append(out, "status: "+t)
	}
	for _, k := range []string{"ExecStartPre", "ExecStart", "ExecStartPost", "ExecReload", "ExecStop", "ExecStopPost"} {
		cmds, _ := s[k].([][]any)
		for _, c := range cmds {
			if l := execLine(k, c); l != "" {
				out = append(out, l)
			}
		}
	}
	return out, nil
}

// execLine formats one (sasbttttuii) Exec entry: path, argv, ignore-failure,
// start/exit timestamps, pid, code (CLD_*), status.
func execLine(key string, c []any) string {
	if len(c) < 10 {
		return ""
	}
	argv, _ := c[1].([]string)
	pid, _ := c[7].(uint32)
	code, _ := c[8].(int32)
	status, _ := c[9].(int32)
	cmdline := strings.Join(argv, " ")
	if len(cmdline) > 200 {
		cmdline = cmdline[:200] + "…"
	}
	var how string
	switch code {
	case 0:
		if pid == 0 {
			how = "not run"
		} else {
			how = fmt.Sprintf("running (pid %d)", pid)
		}
	case 1:
		how = fmt.Sprintf("exited with status %d (pid %d)", status, pid)
	case 2:
		how = fmt.Sprintf("killed by signal %d (pid %d)", status, pid)
	case 3:
		how = fmt.Sprintf("dumped core on signal %d (pid %d)", status, pid)
	default:
		how = fmt.Sprintf("code %d status %d (pid %d)", code, status, pid)
	}
	return fmt.Sprintf("%s=%s: %s", key, cmdline, how)
}
