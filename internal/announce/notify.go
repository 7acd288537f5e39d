package announce

import (
	"context"
	"log/slog"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Systemd speaks systemd's notify protocol on $NOTIFY_SOCKET: READY=1,
// WATCHDOG=1, STOPPING=1 and STATUS=. Without NOTIFY_SOCKET every method does
// nothing. The zero value is ready to use (logs discarded); it is safe for
// concurrent use.
type Systemd struct {
	// Logger receives notify errors; nil discards.
	Logger *slog.Logger
}

func (s *Systemd) notify(state string) {
	if _, err := daemon.SdNotify(false, state); err != nil && s.Logger != nil {
		s.Logger.Warn("sd_notify failed", "state", state, "err", err)
	}
}

// Ready sends READY=1 with a status line.
func (s *Systemd) Ready(status string) { s.notify("READY=1\nSTATUS=" + status) }

// Status sends a status line.
func (s *Systemd) Status(status string) { s.notify("STATUS=" + status) }

// Stopping sends STOPPING=1.
func (s *Systemd) Stopping() { s.notify("STOPPING=1") }

// Watchdog sends WATCHDOG=1 every half of $WATCHDOG_USEC until ctx ends; it
// returns at once when systemd asked for no watchdog (or for another pid).
func (s *Systemd) Watchdog(ctx context.Context) {
	every, err := daemon.SdWatchdogEnabled(false)
	if err != nil && s.Logger != nil {
		s.Logger.Warn("watchdog settings", "err", err)
	}
	if err != nil || every <= 0 {
		return
	}
	t := time.NewTicker(every / 2)
	defer t.Stop()
	for {
		s.notify("WATCHDOG=1")
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
