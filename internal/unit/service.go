package unit

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Infinity is the duration "infinity" parses to (no timeout).
const Infinity = time.Duration(math.MaxInt64)

// Service is the [Service] section of a .service unit, validated. Zero
// durations mean "not set" (the executor applies systemd's defaults: 90s
// timeouts, 100ms RestartSec); Infinity means no limit (a timeout written
// as "infinity" or "0").
type Service struct {
	// Type is simple (the default), exec, forking, oneshot, dbus, notify,
	// notify-reload or idle.
	Type string
	// The commands of each Exec*= key, in order (an empty assignment
	// resets the list, as in systemd).
	ExecStartPre, ExecStart, ExecStartPost, ExecStop, ExecStopPost []Exec
	// Restart is no (the default), on-success, on-failure, on-abnormal,
	// on-watchdog, on-abort or always.
	Restart                         string
	RestartSec                      time.Duration
	TimeoutStartSec, TimeoutStopSec time.Duration
	// Environment holds NAME=value assignments in order (the last of a
	// name wins).
	Environment      []string
	EnvironmentFiles []EnvFile
	// WorkingDirectory is as written ("-" prefix allowed, "~" for home).
	WorkingDirectory string
	User             string
	RemainAfterExit  bool
}

// EnvFile is an EnvironmentFile= entry; Optional is the "-" prefix (a
// missing file is not an error).
type EnvFile struct {
	Path     string
	Optional bool
	Line     int
}

func validServiceType(t string) bool {
	switch t {
	case "simple", "exec", "forking", "oneshot", "dbus", "notify", "notify-reload", "idle":
		return true
	}
	return false
}

func validRestart(r string) bool {
	switch r {
	case "no", "on-success", "on-failure", "on-abnormal", "on-watchdog", "on-abort", "always":
		return true
	}
	return false
}

// parseService reads and validates the [Service] section of unit n.
func parseService(n Name, opts []Option) (Service, error) {
	s := Service{Type: "simple", Restart: "no"}
	fail := func(line int, format string, a ...any) (Service, error) {
		return Service{}, &Error{Unit: n.Full, Line: line, Err: fmt.Errorf(format, a...)}
	}
	var startLine, typeLine int
	for _, o := range opts {
		if o.Section != "Service" {
			continue
		}
		v := o.Value
		switch o.Name {
		case "Type":
			if !validServiceType(v) {
				return fail(o.Line, "Type=%s: unknown service type (want simple, exec, forking, oneshot, notify, dbus, idle)", v)
			}
			s.Type, typeLine = v, o.Line
		case "ExecStartPre", "ExecStart", "ExecStartPost", "ExecStop", "ExecStopPost":
			dst := s.execList(o.Name)
			if v == "" {
				*dst = nil
				continue
			}
			cmds, err := ParseExec(v, o.Line)
			if err != nil {
				return fail(o.Line, "%s=: %v", o.Name, err)
			}
			for _, c := range cmds {
				if bad := CheckSpecifiers(c.Raw); bad != "" {
					return fail(o.Line, "%s=: unknown specifier %q", o.Name, bad)
				}
				if !strings.HasPrefix(c.Path, "/") && !strings.HasPrefix(c.Path, "%") && !strings.HasPrefix(c.Path, "$") && strings.Contains(c.Path, "/") {
					return fail(o.Line, "%s=: program %q must be an absolute path or a plain name", o.Name, c.Path)
				}
			}
			*dst = append(*dst, cmds...)
			if o.Name == "ExecStart" {
				startLine = o.Line
			}
		case "Restart":
			if !validRestart(v) {
				return fail(o.Line, "Restart=%s: unknown value (want no, on-success, on-failure, on-abnormal, on-watchdog, on-abort, always)", v)
			}
			s.Restart = v
		case "RestartSec", "TimeoutStartSec", "TimeoutStopSec", "TimeoutSec":
			d, err := ParseTimespan(v)
			if err != nil {
				return fail(o.Line, "%s=%s: %v", o.Name, v, err)
			}
			if d == 0 && o.Name != "RestartSec" {
				d = Infinity // systemd: a zero timeout disables it
			}
			switch o.Name {
			case "RestartSec":
				s.RestartSec = d
			case "TimeoutStartSec":
				s.TimeoutStartSec = d
			case "TimeoutStopSec":
				s.TimeoutStopSec = d
			default:
				s.TimeoutStartSec, s.TimeoutStopSec = d, d
			}
		case "Environment":
			if v == "" {
				s.Environment = nil
				continue
			}
			words, err := SplitWords(v)
			if err != nil {
				return fail(o.Line, "Environment=: %v", err)
			}
			for _, w := range words {
				k, _, ok := strings.Cut(w, "=")
				if !ok || !validEnvName(k) {
					return fail(o.Line, "Environment=: %q is not NAME=value", w)
				}
				s.Environment = append(s.Environment, w)
			}
		case "EnvironmentFile":
			if v == "" {
				s.EnvironmentFiles = nil
				continue
			}
			ef := EnvFile{Path: v, Line: o.Line}
			if strings.HasPrefix(v, "-") {
				ef.Path, ef.Optional = v[1:], true
			}
			if !strings.HasPrefix(ef.Path, "/") && !strings.HasPrefix(ef.Path, "%") {
				return fail(o.Line, "EnvironmentFile=%s: not an absolute path", v)
			}
			s.EnvironmentFiles = append(s.EnvironmentFiles, ef)
		case "WorkingDirectory":
			p := strings.TrimPrefix(v, "-")
			if p != "" && p != "~" && !strings.HasPrefix(p, "/") && !strings.HasPrefix(p, "%") && !strings.HasPrefix(p, "~/") {
				return fail(o.Line, "WorkingDirectory=%s: not an absolute path or ~", v)
			}
			s.WorkingDirectory = v
		case "User":
			s.User = v
		case "RemainAfterExit":
			b, err := ParseBool(v)
			if err != nil {
				return fail(o.Line, "RemainAfterExit=%s: %v", v, err)
			}
			s.RemainAfterExit = b
		}
	}
	switch {
	case len(s.ExecStart) == 0 && s.Type != "oneshot":
		return fail(typeLine, "service has no ExecStart= (only Type=oneshot may omit it)")
	case len(s.ExecStart) == 0 && len(s.ExecStop) == 0:
		return fail(typeLine, "service has neither ExecStart= nor ExecStop=")
	case len(s.ExecStart) > 1 && s.Type != "oneshot":
		return fail(startLine, "Type=%s allows one ExecStart= command, found %d (only Type=oneshot allows several)", s.Type, len(s.ExecStart))
	}
	return s, nil
}

// execList returns the list an Exec*= key fills.
func (s *Service) execList(key string) *[]Exec {
	switch key {
	case "ExecStartPre":
		return &s.ExecStartPre
	case "ExecStart":
		return &s.ExecStart
	case "ExecStartPost":
		return &s.ExecStartPost
	case "ExecStop":
		return &s.ExecStop
	default:
		return &s.ExecStopPost
	}
}

// timeUnit returns the length of one of systemd's time span units.
func timeUnit(u string) (time.Duration, bool) {
	switch u {
	case "us", "usec", "µs":
		return time.Microsecond, true
	case "ms", "msec":
		return time.Millisecond, true
	case "s", "sec", "second", "seconds":
		return time.Second, true
	case "m", "min", "minute", "minutes":
		return time.Minute, true
	case "h", "hr", "hour", "hours":
		return time.Hour, true
	case "d", "day", "days":
		return 24 * time.Hour, true
	case "w", "week", "weeks":
		return 7 * 24 * time.Hour, true
	case "M", "month", "months":
		return 2629800 * time.Second, true
	case "y", "year", "years":
		return 31557600 * time.Second, true
	}
	return 0, false
}

// ParseTimespan parses a systemd time span: "90", "5s", "1min 30s",
// "1.5h", "100ms", "infinity". A number without a unit is seconds;
// components add up ("5 10s" is 15s), as systemd-analyze timespan says.
// "infinity" is Infinity.
func ParseTimespan(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, fmt.Errorf("empty time span")
	}
	if s == "infinity" {
		return Infinity, nil
	}
	var total time.Duration
	rest := s
	for {
		rest = strings.TrimLeft(rest, " \t")
		if rest == "" {
			break
		}
		i := 0
		for i < len(rest) && (rest[i] >= '0' && rest[i] <= '9' || rest[i] == '.') {
			i++
		}
		if i == 0 {
			return 0, fmt.Errorf("time span %q: expected a number at %q", s, rest)
		}
		num, err := strconv.ParseFloat(rest[:i], 64)
		if err != nil {
			return 0, fmt.Errorf("time span %q: bad number %q", s, rest[:i])
		}
		rest = strings.TrimLeft(rest[i:], " \t")
		j := 0
		for j < len(rest) && !(rest[j] >= '0' && rest[j] <= '9') && rest[j] != ' ' && rest[j] != '\t' && rest[j] != '.' {
			j++
		}
		unit := time.Second
		if j > 0 {
			u, ok := timeUnit(rest[:j])
			if !ok {
				return 0, fmt.Errorf("time span %q: unknown unit %q (use us, ms, s, min, h, d, w)", s, rest[:j])
			}
			unit = u
		}
		rest = rest[j:]
		d := math.Round(num * float64(unit)) // 1.000001s is 1000001µs, not 1000000.999…
		if d > float64(math.MaxInt64)-float64(total) {
			return 0, fmt.Errorf("time span %q is too long", s)
		}
		total += time.Duration(d)
	}
	return total, nil
}
