// Package faults is flotilla's fault suite: real etcd members (Debian's etcd
// binary), real announce and render processes, machines running the real
// agent and engine with the process executor, a real haproxy fed by render,
// and requests sent through it while members, machines and links are killed.
//
// The test binary plays two extra roles, chosen by FLOTILLA_FAULTS_ROLE in
// TestMain: "machine" (one scheduler machine: agent + engine candidate, as
// `scheduler serve` runs them) and "backend" (the HTTP server a unit runs).
// That way a machine is a process the suite can kill -9 without depending on
// how cmd/scheduler spells its flags.
//
// FLOTILLA_FAULTS_LONG=1 makes the outages longer and the kill loop 50
// iterations instead of 10.
package faults

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/flotilla/flotilla/internal/agent"
	"github.com/flotilla/flotilla/internal/engine"
	"github.com/flotilla/flotilla/internal/process"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/store"
	"github.com/flotilla/flotilla/internal/testmain"
)

// Environment of the extra roles.
const (
	envRole      = "FLOTILLA_FAULTS_ROLE"
	envEndpoints = "FLOTILLA_FAULTS_ENDPOINTS"
	envMachineID = "FLOTILLA_FAULTS_MACHINE"
	envMachineIP = "FLOTILLA_FAULTS_IP"
	envDir       = "FLOTILLA_FAULTS_DIR"
	envTTL       = "FLOTILLA_FAULTS_TTL"
	envLong      = "FLOTILLA_FAULTS_LONG"
	envGrace     = "FLOTILLA_FAULTS_GRACE"
)

// moveGrace is the engine's --move-grace in the suite: short, to keep the
// suite short, but longer than the hiccups of a loaded test machine.
const moveGrace = 3 * time.Second

// bin returns the path of a binary built by TestMain ("announce", "render").
func bin(name string) string { return testmain.Bin(name) }

// self returns the test binary, which plays the machine and backend roles.
func self(t testing.TB) string {
	t.Helper()
	p, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestMain(m *testing.M) {
	switch os.Getenv(envRole) {
	case "machine":
		os.Exit(machineMain())
	case "backend":
		os.Exit(backendMain(os.Args[1:]))
	}
	testmain.Run(m, "announce", "render")
}

// long reports whether the long variant of the suite was asked for.
func long() bool { return os.Getenv(envLong) == "1" }

// machineMain runs one scheduler machine (agent + engine candidate) until
// SIGTERM, as `scheduler serve` does. Its logs go to stderr.
func machineMain() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if err := runMachine(ctx, log); err != nil {
		log.Error("machine", "err", err)
		return 1
	}
	return 0
}

func runMachine(ctx context.Context, log *slog.Logger) error {
	ttl, err := time.ParseDuration(os.Getenv(envTTL))
	if err != nil {
		return fmt.Errorf("machine: %s: %w", envTTL, err)
	}
	grace, err := time.ParseDuration(os.Getenv(envGrace))
	if err != nil {
		return fmt.Errorf("machine: %s: %w", envGrace, err)
	}
	id, dir := os.Getenv(envMachineID), os.Getenv(envDir)
	cfg := store.Default()
	cfg.Endpoints = strings.Split(os.Getenv(envEndpoints), ",")
	cfg.DialTimeout = 2 * time.Second
	var c *store.Client
	for { // a machine started while etcd is unreachable keeps trying
		c, err = store.Open(ctx, cfg)
		if err == nil {
			break
		}
		log.Warn("open etcd", "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
	defer c.Close()
	reg := registry.New(c, "")
	ex, err := process.New(process.Options{Dir: filepath.Join(dir, "logs"), DefaultTimeout: 5 * time.Second,
		Hostname: id, MachineID: id, Logger: log.With("part", "executor")})
	if err != nil {
		return err
	}
	defer ex.Close()
	a, err := agent.New(agent.Options{
		Registry: reg, Executor: ex, TTL: ttl, PollInterval: 200 * time.Millisecond, StopTimeout: 10 * time.Second,
		Machine: registry.Machine{ID: id, IP: os.Getenv(envMachineIP)},
		EnvFile: filepath.Join(dir, "machine.env"), LeaseFile: filepath.Join(dir, "presence.lease"),
		Logger: log.With("part", "agent"),
	})
	if err != nil {
		return err
	}
	e, err := engine.New(engine.Options{Registry: reg, ID: id, TTL: ttl, Period: 2 * time.Second, MoveGrace: grace,
		Logger: log.With("part", "engine")})
	if err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return a.Run(gctx) })
	g.Go(func() error { return e.Run(gctx) })
	return g.Wait()
}

// backendMain serves "NAME on ADDR\n" on ADDR until SIGTERM: the program the
// suite's units run. args: TOKEN NAME ADDR (TOKEN ties the process to one test).
func backendMain(args []string) int {
	if len(args) != 3 {
		fmt.Fprintln(os.Stderr, "backend: want TOKEN NAME ADDR")
		return 2
	}
	name, addr := args[1], args[2]
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var l net.Listener
	var err error
	for i := 0; i < 100; i++ { // the previous instance's port may linger a moment
		if l, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "backend:", err)
		return 1
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Backend", name)
		fmt.Fprintf(w, "%s on %s\n", name, addr)
	})}
	var g errgroup.Group
	g.Go(func() error {
		if err := srv.Serve(l); err != http.ErrServerClosed {
			return err
		}
		return nil
	})
	<-ctx.Done()
	srv.Close()
	if err := g.Wait(); err != nil {
		fmt.Fprintln(os.Stderr, "backend:", err)
		return 1
	}
	return 0
}
