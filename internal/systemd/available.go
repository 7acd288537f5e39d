package systemd

import (
	"context"
	"fmt"
	"os"
	"time"
)

// Available reports whether a system manager can be used here: systemd is
// PID 1 (sd_booted: /run/systemd/system exists) or a systemd manager answers
// on the system bus within two seconds. It is what `--executor auto` asks.
func Available() bool {
	if fi, err := os.Stat("/run/systemd/system"); err == nil && fi.IsDir() {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return Probe(ctx, Options{}) == nil
}

// Probe connects as New would with opts and asks the manager for its
// version; it returns why that failed.
func Probe(ctx context.Context, opts Options) error {
	addr := busAddress(opts)
	conn, err := dial(ctx, addr)
	if err != nil {
		return fmt.Errorf("systemd: connect to %s: %w", addr, err)
	}
	defer conn.Close()
	if _, err := conn.SystemStateContext(ctx); err != nil {
		return fmt.Errorf("systemd: no systemd manager on %s: %w", addr, err)
	}
	return nil
}
