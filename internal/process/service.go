package process

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/flotilla/flotilla/internal/executor"
	"github.com/flotilla/flotilla/internal/unit"
)

// command is one Exec line of a unit.
type command struct {
	exec          unit.Exec
	raw           string
	ignoreFailure bool
}

type envFile struct {
	path     string
	optional bool
}

// service is what the executor needs of a unit's [Service] section, with
// systemd's defaults applied and specifiers expanded where systemd expands
// them at load time (paths).
type service struct {
	spec                      unit.Specifiers
	typ                       string // simple, oneshot or forking
	pre, start, post          []command
	stop, stopPost            []command
	restart                   string // no, on-failure or always
	restartSec                time.Duration
	startTimeout, stopTimeout time.Duration
	env                       [][2]string
	envFiles                  []envFile
	workDir                   string
	remain                    bool
	// The start rate limit (systemd's StartLimitIntervalSec=, 10s, and
	// StartLimitBurst=, 5): more than burst starts within interval fail
	// the unit; an interval of 0 disables it.
	startLimitInterval time.Duration
	startLimitBurst    int
}

// startLimit reads a unit's start rate limit: [Unit] StartLimitIntervalSec=
// and StartLimitBurst= (or their older [Service] StartLimitInterval= and
// StartLimitBurst=), systemd's defaults when absent.
func startLimit(f *unit.File) (time.Duration, int, error) {
	interval, burst := 10*time.Second, 5
	last := func(section, key string) string {
		vs := f.Values(section, key)
		if len(vs) == 0 {
			return ""
		}
		return vs[len(vs)-1]
	}
	for _, k := range [][2]string{{"Service", "StartLimitInterval"}, {"Unit", "StartLimitIntervalSec"}} {
		if v := last(k[0], k[1]); v != "" {
			d, err := unit.ParseTimespan(v)
			if err != nil {
				return 0, 0, fmt.Errorf("unit %s: %s=%s: %v", f.Name.Full, k[1], v, err)
			}
			if d == unit.Infinity {
				d = 0
			}
			interval = d
		}
	}
	for _, sec := range []string{"Service", "Unit"} {
		if v := last(sec, "StartLimitBurst"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return 0, 0, fmt.Errorf("unit %s: StartLimitBurst=%s: want a number", f.Name.Full, v)
			}
			burst = n
		}
	}
	return interval, burst, nil
}

// parseService parses spec's body (as the unit named spec.Name) into the
// executor's view of it.
func parseService(spec executor.Spec, hostname, machineID string, defTimeout time.Duration) (*service, error) {
	f, err := unit.Parse(spec.Name, spec.Body)
	if err != nil {
		return nil, err
	}
	if err := f.CheckStartable(); err != nil {
		return nil, err
	}
	if f.Name.Type != "service" {
		return nil, fmt.Errorf("unit %s: the process executor runs only .service units", spec.Name)
	}
	if machineID == "" {
		machineID = spec.Env["FLOTILLA_MACHINE_ID"]
	}
	s := f.Service
	interval, burst, err := startLimit(f)
	if err != nil {
		return nil, err
	}
	svc := &service{
		startLimitInterval: interval,
		startLimitBurst:    burst,
		spec:               unit.Specifiers{Name: f.Name, Hostname: hostname, MachineID: machineID},
		remain:             s.RemainAfterExit,
		restartSec:         s.RestartSec,
		startTimeout:       s.TimeoutStartSec,
		stopTimeout:        s.TimeoutStopSec,
	}
	switch s.Type {
	case "oneshot", "forking":
		svc.typ = s.Type
	default: // simple, exec, notify, dbus, idle: run as simple
		svc.typ = "simple"
	}
	switch s.Restart {
	case "always", "on-failure":
		svc.restart = s.Restart
	case "on-abnormal", "on-abort", "on-watchdog":
		svc.restart = "on-failure"
	default:
		svc.restart = "no"
	}
	if svc.restartSec == 0 {
		svc.restartSec = 100 * time.Millisecond
	}
	if svc.startTimeout == 0 {
		svc.startTimeout = defTimeout
	}
	if svc.stopTimeout == 0 {
		svc.stopTimeout = defTimeout
	}
	conv := func(in []unit.Exec) []command {
		out := make([]command, len(in))
		for i, e := range in {
			out[i] = command{exec: e, raw: e.Raw, ignoreFailure: e.IgnoreFailure}
		}
		return out
	}
	svc.pre, svc.start, svc.post = conv(s.ExecStartPre), conv(s.ExecStart), conv(s.ExecStartPost)
	svc.stop, svc.stopPost = conv(s.ExecStop), conv(s.ExecStopPost)
	for _, kv := range s.Environment {
		k, v, _ := strings.Cut(unit.ExpandSpecifiers(kv, svc.spec), "=")
		svc.env = append(svc.env, [2]string{k, v})
	}
	for _, ef := range s.EnvironmentFiles {
		svc.envFiles = append(svc.envFiles, envFile{path: unit.ExpandSpecifiers(ef.Path, svc.spec), optional: ef.Optional})
	}
	if wd := s.WorkingDirectory; wd != "" {
		optional := strings.HasPrefix(wd, "-")
		wd = unit.ExpandSpecifiers(strings.TrimPrefix(wd, "-"), svc.spec)
		if wd == "~" || strings.HasPrefix(wd, "~/") {
			home, _ := os.UserHomeDir()
			wd = home + wd[1:]
		}
		if _, err := os.Stat(wd); err == nil || !optional {
			svc.workDir = wd
		}
	}
	return svc, nil
}

// argv expands a command for running with env.
func (s *service) argv(c command, env []string) (path string, argv []string, err error) {
	return c.exec.Command(s.spec, env)
}
