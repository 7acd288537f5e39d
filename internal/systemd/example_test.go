package systemd_test

import (
	"context"
	"log/slog"
	"os"

	"github.com/flotilla/flotilla/internal/executor"
	"github.com/flotilla/flotilla/internal/systemd"
)

// Example shows how a machine's agent drives the executor: connect, adopt
// what is still targeted here (stopping the rest), start units with the
// machine's facts, and report states whenever systemd says they changed.
func Example() {
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	e, err := systemd.New(ctx, systemd.Options{
		// The agent runs as flotilla.service: its units die with it.
		AgentUnit: "flotilla.service",
		Logger:    log,
	})
	if err != nil {
		log.Error("systemd executor", "err", err)
		return
	}
	defer e.Close()

	// On agent start: units installed by a previous run that the engine no
	// longer targets at this machine are stopped and removed.
	targeted := map[string]bool{"nginx@1.service": true}
	if _, err := e.Adopt(ctx, func(name string) bool { return targeted[name] }); err != nil {
		log.Error("adopt", "err", err)
	}

	// Start (or keep running) what is targeted here: nginx@1.service runs
	// from the template nginx@.service, with the machine's facts.
	err = e.Start(ctx, executor.Spec{
		Name:    "nginx@1.service",
		Body:    []byte("[Service]\nExecStart=/usr/sbin/nginx -g 'daemon off;'\nExecStartPost=/usr/bin/announce --detach --addr ${PUBLIC_IP}:80 /clusterstate/www/%n\n"),
		Hash:    "afa1506",
		EnvFile: "/run/flotilla/machine.env",
	})
	if err != nil {
		log.Error("start", "err", err)
	}

	// Report on every change (the agent writes these to etcd).
	for range e.Changes() {
		states, err := e.States(ctx)
		if err != nil {
			log.Error("states", "err", err)
			continue
		}
		for name, st := range states {
			log.Info("unit", "unit", name, "active", st.Active, "sub", st.Sub)
		}
	}
}
