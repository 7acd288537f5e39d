package process

import (
	"fmt"
	"os"
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
	svc := &service{
		spec:         unit.Specifiers{Name: f.Name, Hostname: hostname, MachineID: machineID},
		remain:       s.RemainAfterExit,
		restartSec:   s.RestartSec,
		startTimeout: s.TimeoutStartSec,
		stopTimeout:  s.TimeoutStopSec,
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
