package unit

import "fmt"

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

// Flotilla is a unit's [X-Flotilla] section: flotilla-only settings beside
// [X-Fleet] (fleet and systemd ignore X- sections). The zero Flotilla is
// the default of every setting.
type Flotilla struct {
	// OnDisconnect is KeepRunning or Stop; "" means KeepRunning.
	OnDisconnect OnDisconnect
}

// Fenced reports whether the unit asked to be stopped when its machine
// loses etcd (OnDisconnect=stop).
func (f Flotilla) Fenced() bool { return f.OnDisconnect == Stop }

// parseFlotilla reads the [X-Flotilla] options; unknown keys and bad values
// are errors naming the line.
func parseFlotilla(n Name, opts []Option) (Flotilla, error) {
	var f Flotilla
	for _, o := range opts {
		if o.Section != "X-Flotilla" {
			continue
		}
		switch o.Name {
		case "OnDisconnect":
			switch v := OnDisconnect(o.Value); v {
			case KeepRunning, Stop:
				f.OnDisconnect = v
			case "": // an empty assignment resets to the default, as in systemd
				f.OnDisconnect = ""
			default:
				return Flotilla{}, &Error{Unit: n.Full, Line: o.Line, Err: fmt.Errorf("OnDisconnect=%s: want keep-running or stop", o.Value)}
			}
		default:
			return Flotilla{}, &Error{Unit: n.Full, Line: o.Line, Err: fmt.Errorf("unknown [X-Flotilla] key %q (known: OnDisconnect)", o.Name)}
		}
	}
	return f, nil
}
