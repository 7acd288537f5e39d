package unit

import (
	"fmt"
	"strconv"
	"time"
)

// OnDisconnect says what a machine's agent does with a unit while it cannot
// reach etcd ([X-Flotilla] OnDisconnect=).
type OnDisconnect string

// The OnDisconnect choices.
const (
	// KeepRunning (the default, and fleet units' behaviour under flotilla):
	// the unit keeps running and supervised while its machine is cut off
	// from etcd; the engine starts a replacement elsewhere only after the
	// machine has been gone for its TTL plus the engine's --move-grace, and
	// the cut-off copy is stopped when its machine reconnects.
	KeepRunning OnDisconnect = "keep-running"
	// Stop fences the unit: the agent kills it by a local deadline that
	// falls before etcd can expire the machine's lease, so that it never
	// runs on two machines at once (see docs/design.md, "Fencing").
	Stop OnDisconnect = "stop"
)

// OnFailed says what happens to a unit that has used its restart budget on
// a machine ([X-Flotilla] OnFailed=).
type OnFailed string

// The OnFailed choices.
const (
	// Move (the default): the agent records the failure, the engine
	// places the unit on another eligible machine and avoids this one for
	// AvoidFailedFor.
	Move OnFailed = "move"
	// Stay: the unit stays failed where it is (fleet's behaviour) until it
	// is restarted by hand or its body changes.
	Stay OnFailed = "stay"
)

// The defaults of the failure policy.
const (
	DefaultRestartFailed       = 3
	DefaultRestartFailedWindow = 10 * time.Minute
	DefaultAvoidFailedFor      = time.Hour
	// MaxRestartFailed bounds RestartFailed=.
	MaxRestartFailed = 1000
	// MaxAvoidFailedFor bounds AvoidFailedFor= (a failure record is an etcd
	// lease of that TTL).
	MaxAvoidFailedFor = 30 * 24 * time.Hour
)

// Flotilla is a unit's [X-Flotilla] section: flotilla-only settings beside
// [X-Fleet] (fleet and systemd ignore X- sections). The zero Flotilla is
// the default of every setting.
type Flotilla struct {
	// OnDisconnect is KeepRunning or Stop; "" means KeepRunning.
	OnDisconnect OnDisconnect
	// RestartFailed is how many times the agent starts the unit again on
	// its machine after it failed (systemd gave up: Restart=no, or its
	// start limit hit) within RestartFailedWindow; nil means
	// DefaultRestartFailed.
	RestartFailed *int
	// RestartFailedWindow is the period over which restarts count; 0
	// means DefaultRestartFailedWindow, Infinity forever.
	RestartFailedWindow time.Duration
	// OnFailed is Move or Stay; "" means Move.
	OnFailed OnFailed
	// AvoidFailedFor is how long the engine keeps the unit off a machine
	// where it failed for good; 0 means DefaultAvoidFailedFor.
	AvoidFailedFor time.Duration
}

// FailurePolicy is a unit's failure policy with the defaults applied.
type FailurePolicy struct {
	// Restarts is the restart budget in place, counted over Window.
	Restarts int
	Window   time.Duration
	// Move says whether a unit out of budget moves to another machine.
	Move bool
	// Avoid is how long its machine is avoided after that.
	Avoid time.Duration
}

// Fenced reports whether the unit asked to be stopped when its machine
// loses etcd (OnDisconnect=stop).
func (f Flotilla) Fenced() bool { return f.OnDisconnect == Stop }

// FailurePolicy returns the unit's failure policy, defaults applied.
func (f Flotilla) FailurePolicy() FailurePolicy {
	p := FailurePolicy{
		Restarts: DefaultRestartFailed,
		Window:   f.RestartFailedWindow,
		Move:     f.OnFailed != Stay,
		Avoid:    f.AvoidFailedFor,
	}
	if f.RestartFailed != nil {
		p.Restarts = *f.RestartFailed
	}
	if p.Window == 0 {
		p.Window = DefaultRestartFailedWindow
	}
	if p.Avoid == 0 {
		p.Avoid = DefaultAvoidFailedFor
	}
	return p
}

const flotillaKeys = "OnDisconnect, RestartFailed, RestartFailedWindow, OnFailed, AvoidFailedFor"

// parseFlotilla reads the [X-Flotilla] options; unknown keys and bad values
// are errors naming the line. An empty assignment resets a key to its
// default, as in systemd.
func parseFlotilla(n Name, opts []Option) (Flotilla, error) {
	var f Flotilla
	for _, o := range opts {
		if o.Section != "X-Flotilla" {
			continue
		}
		if err := f.set(o); err != nil {
			return Flotilla{}, &Error{Unit: n.Full, Line: o.Line, Err: err}
		}
	}
	return f, nil
}

// set applies one [X-Flotilla] option.
func (f *Flotilla) set(o Option) error {
	v := o.Value
	switch o.Name {
	case "OnDisconnect":
		switch d := OnDisconnect(v); d {
		case KeepRunning, Stop, "":
			f.OnDisconnect = d
		default:
			return fmt.Errorf("OnDisconnect=%s: want keep-running or stop", v)
		}
	case "OnFailed":
		switch d := OnFailed(v); d {
		case Move, Stay, "":
			f.OnFailed = d
		default:
			return fmt.Errorf("OnFailed=%s: want move or stay", v)
		}
	case "RestartFailed":
		if v == "" {
			f.RestartFailed = nil
			return nil
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > MaxRestartFailed {
			return fmt.Errorf("RestartFailed=%s: want a number of restarts from 0 to %d", v, MaxRestartFailed)
		}
		f.RestartFailed = &n
	case "RestartFailedWindow", "AvoidFailedFor":
		var d time.Duration
		if v != "" {
			var err error
			if d, err = ParseTimespan(v); err != nil {
				return fmt.Errorf("%s=%s: %v", o.Name, v, err)
			}
			if d < time.Second {
				return fmt.Errorf("%s=%s: want at least 1s", o.Name, v)
			}
		}
		if o.Name == "RestartFailedWindow" {
			f.RestartFailedWindow = d
			return nil
		}
		if d > MaxAvoidFailedFor {
			return fmt.Errorf("AvoidFailedFor=%s: want at most %s", v, MaxAvoidFailedFor)
		}
		f.AvoidFailedFor = d
	default:
		return fmt.Errorf("unknown [X-Flotilla] key %q (known: %s)", o.Name, flotillaKeys)
	}
	return nil
}
