package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/flotilla/flotilla/internal/agent"
	"github.com/flotilla/flotilla/internal/cmdline"
	"github.com/flotilla/flotilla/internal/engine"
	"github.com/flotilla/flotilla/internal/executor"
	"github.com/flotilla/flotilla/internal/process"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/rollout"
	"github.com/flotilla/flotilla/internal/store"
	"github.com/flotilla/flotilla/internal/systemd"
)

const serveUsage = `usage: scheduler serve [flags]

Runs this machine: registers it (presence under a lease of --ttl), runs the
units the engine targets at it through the executor, and stands as an engine
candidate and a rollout driver candidate, both on the presence lease. Without --endpoints (or FLOTILLA_ENDPOINTS / ETCDCTL_ENDPOINTS) it
starts an embedded single-node etcd listening on --etcd-listen, with its data
under --data-dir: one command brings up a cluster of one, and other machines
join it with --endpoints http://<that address>.

Off loopback (--etcd-listen 0.0.0.0:2379) the embedded etcd serves mutual TLS
only: the first start creates a cluster CA and certificates under
--data-dir/pki and prints a join token (again: scheduler token). Another
machine joins with --join HOST:2378 --token TOKEN (or FLOTILLA_TOKEN); the
first three machines become etcd members, later ones clients. A restart needs
no token. --insecure serves plain http off loopback instead (never do this
on a network others reach).`

// defaultDataDir is where serve keeps its state unless told otherwise.
const defaultDataDir = "/var/lib/flotilla"

type serveOptions struct {
	store        store.Config
	prefix       string
	dataDir      string
	etcdListen   string
	etcdPeer     string
	machineID    string
	metadata     string
	publicIP     string
	executor     string
	systemdUser  bool
	agentUnit    string
	ttl          time.Duration
	enginePeriod time.Duration
	moveGrace    time.Duration
	capacity     int
	log          cmdline.LogFlags
	api          apiOptions
	sec          secureOptions
}

// register registers serve's flags.
func (o *serveOptions) register(fs *flag.FlagSet) {
	o.store.RegisterFlags(fs)
	fs.StringVar(&o.prefix, "prefix", registry.DefaultPrefix, "etcd key prefix of the scheduler's state")
	fs.StringVar(&o.dataDir, "data-dir", defaultDataDir, "state of this machine: embedded etcd data, machine id, unit logs")
	fs.StringVar(&o.etcdListen, "etcd-listen", "127.0.0.1:2379", "embedded etcd: client address (host:port)")
	fs.StringVar(&o.etcdPeer, "etcd-peer-listen", "", "embedded etcd: peer address (default: a free loopback port)")
	fs.StringVar(&o.machineID, "machine-id", "", "this machine's id (default: persisted in --data-dir; /etc/machine-id for the default data dir)")
	fs.StringVar(&o.metadata, "metadata", "", "machine metadata, k=v,k2=v2")
	fs.StringVar(&o.publicIP, "public-ip", "", "this machine's public IP (default: the first non-loopback IPv4 address)")
	fs.StringVar(&o.executor, "executor", "auto", "how units run: auto, systemd or process")
	fs.BoolVar(&o.systemdUser, "systemd-user", false, "systemd executor: use the user manager instead of the system one")
	fs.StringVar(&o.agentUnit, "agent-unit", systemd.AgentUnitAuto, "systemd executor: the unit this agent runs as (auto: the service it runs in, if any): a restart of it (an upgrade) leaves the units running for the next run, a stop stops them; fenced units ([X-Flotilla] OnDisconnect=stop) get BindsTo= it")
	fs.DurationVar(&o.ttl, "ttl", 10*time.Second, "machine presence TTL: a machine silent this long is gone (its units move --move-grace later; they keep running while it is cut off)")
	fs.DurationVar(&o.moveGrace, "move-grace", engine.DefaultMoveGrace, "engine: how long a gone machine's presence must stay absent, counted while etcd is healthy, before its units move (0: at once; fenced units wait 1s)")
	fs.DurationVar(&o.enginePeriod, "engine-period", 30*time.Second, "engine: longest time between two reconcile passes")
	fs.IntVar(&o.capacity, "capacity", 0, "most non-global units this machine takes (0: no limit)")
	o.log.Register(fs)
	o.api.register(fs)
	fs.BoolVar(&o.sec.insecure, "insecure", false, "embedded etcd: serve plain http without authentication off loopback (dangerous; logged at every start)")
	fs.StringVar(&o.sec.join, "join", "", "join the cluster whose first machine serves its join endpoint at HOST:PORT (port 2378 by default)")
	fs.StringVar(&o.sec.token, "token", "", "join token for --join (env FLOTILLA_TOKEN); needed only the first time")
	fs.StringVar(&o.sec.joinListen, "join-listen", "", "join endpoint address on the machine holding the CA (default: --etcd-listen's host, port "+defaultJoinPort+")")
	fs.DurationVar(&o.sec.tokenTTL, "token-ttl", 24*time.Hour, "validity of the join token created on the first start")
}

// check refuses bad flag values; it returns the machine's metadata and IP.
func (o *serveOptions) check() (map[string]string, string, error) {
	md, err := parseMetadata(o.metadata)
	if err != nil {
		return nil, "", cmdline.Usagef("--metadata: %v", err)
	}
	switch o.executor {
	case "auto", "systemd", "process":
	default:
		return nil, "", cmdline.Usagef("--executor %q: want auto, systemd or process", o.executor)
	}
	if err := o.api.check(); err != nil {
		return nil, "", err
	}
	if o.moveGrace < 0 {
		return nil, "", cmdline.Usagef("--move-grace %s: must not be negative", o.moveGrace)
	}
	if o.ttl < store.MinTTL {
		return nil, "", cmdline.Usagef("--ttl %s: at least %s", o.ttl, store.MinTTL)
	}
	ip := o.publicIP
	if ip == "" {
		ip = defaultIP()
	} else if net.ParseIP(ip) == nil {
		return nil, "", cmdline.Usagef("--public-ip %q: not an IP address", ip)
	}
	return md, ip, nil
}

func serve(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	o := serveOptions{store: store.Default()}
	fs := flag.NewFlagSet("scheduler serve", flag.ContinueOnError)
	o.register(fs)
	if err := cmdline.Parse(fs, args, stdout, serveUsage); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return cmdline.Usagef("serve takes no arguments: %s", strings.Join(fs.Args(), " "))
	}
	log, err := o.log.Logger(stderr)
	if err != nil {
		return err
	}
	md, ip, err := o.check()
	if err != nil {
		return err
	}
	if err := o.checkSecureFlags(getenv); err != nil {
		return err
	}
	joined, err := joinFirst(ctx, &o, ip)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(o.dataDir, 0o755); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	id, err := machineID(o.machineID, o.dataDir)
	if err != nil {
		return err
	}
	log = log.With("machine", id)

	// etcd: given, or embedded.
	if len(o.store.Endpoints) == 0 {
		o.store.Endpoints = store.EnvEndpoints(getenv, "FLOTILLA_ENDPOINTS", "ETCDCTL_ENDPOINTS")
	}
	sec, err := startEtcd(ctx, &o, id, ip, joined, log, stdout, stderr)
	if err != nil {
		return err
	}
	defer sec.Close()
	if err := o.store.FromEnv(getenv, "FLOTILLA_ENDPOINTS"); err != nil {
		return cmdline.Usagef("%v", err)
	}
	// The client outlives ctx (SIGTERM): a shutdown still has to stop the
	// units, revoke the presence lease and resign the leaderships. It ends
	// resignGrace after the agent is done, since etcd's election retries a
	// candidate's resignation with the client's context, for ever if etcd is
	// gone.
	cctx, cancelClient := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelClient()
	c, err := store.Open(cctx, o.store)
	if err != nil {
		return err
	}
	defer c.Close()
	reg := registry.New(c, o.prefix)
	api, err := o.api.start(reg, log.With("component", "api"))
	if err != nil {
		return err
	}
	defer api.close()

	machine := registry.Machine{ID: id, IP: ip, Metadata: md, Version: cmdline.Version(), Capacity: o.capacity}
	ex, err := newExecutor(ctx, o, log, &machine)
	if err != nil {
		return err
	}
	defer ex.Close()

	ag, err := agent.New(agent.Options{
		Registry: reg, Executor: ex, Machine: machine, TTL: o.ttl,
		EnvFile: filepath.Join(o.dataDir, "machine.env"), LeaseFile: filepath.Join(o.dataDir, "presence.lease"),
		Logger: log.With("component", "agent"), Handover: handover(ex, log),
	})
	if err != nil {
		return err
	}
	// The engine candidate and the rollout driver candidate campaign with
	// the agent's presence lease: one lease, one keepalive, per machine
	// (docs/design.md, "One lease per machine").
	en, err := engine.New(engine.Options{
		Registry: reg, ID: id, Leases: ag, Period: o.enginePeriod, MoveGrace: moveGrace(o.moveGrace),
		Logger: log.With("component", "engine"), OnPass: api.onPass,
	})
	if err != nil {
		return err
	}
	dr, err := rollout.NewDriver(rollout.DriverOptions{Registry: reg, ID: id, Leases: ag, Logger: log.With("component", "rollout")})
	if err != nil {
		return err
	}
	log.Info("machine serving", "ip", ip, "metadata", o.metadata, "endpoints", strings.Join(o.store.Endpoints, ","))
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer time.AfterFunc(resignGrace, cancelClient)
		return ag.Run(gctx)
	})
	g.Go(func() error { return en.Run(gctx) })
	g.Go(func() error { return dr.Run(gctx) })
	g.Go(func() error { return api.run(gctx) })
	g.Go(func() error { return sec.run(gctx, &o, c) })
	return g.Wait()
}

// resignGrace is how long the engine and the rollout driver may take to
// resign once the agent has stopped.
const resignGrace = 5 * time.Second

func newExecutor(ctx context.Context, o serveOptions, log *slog.Logger, m *registry.Machine) (executor.Executor, error) {
	kind := o.executor
	if kind == "auto" {
		kind = "process"
		if o.systemdUser || systemd.Available() {
			kind = "systemd"
		}
	}
	if kind == "systemd" {
		ex, err := systemd.New(ctx, systemd.Options{User: o.systemdUser, AgentUnit: o.agentUnit, Logger: log.With("component", "systemd")})
		if err != nil {
			return nil, err
		}
		log.Info("executor: systemd", "unit-dir", ex.UnitDir(), "agent-unit", ex.AgentUnit())
		return ex, nil
	}
	if o.agentUnit != systemd.AgentUnitAuto && o.agentUnit != "" {
		return nil, cmdline.Usagef("--agent-unit %s: only the systemd executor binds units to the agent's unit (this machine runs the process executor, whose units end with the agent)", o.agentUnit)
	}
	logs, err := filepath.Abs(filepath.Join(o.dataDir, "logs"))
	if err != nil {
		return nil, err
	}
	ex, err := process.New(process.Options{Dir: logs, MachineID: m.ID, Logger: log.With("component", "process")})
	if err != nil {
		return nil, err
	}
	m.LogDir = logs
	log.Info("executor: process", "logs", logs)
	return ex, nil
}

// handover is the agent's Handover for the systemd executor with
// --agent-unit: a restart of the agent's unit (an upgrade) keeps the units
// running for the next run; a stop stops them. nil otherwise.
func handover(ex executor.Executor, log *slog.Logger) func(context.Context) bool {
	sd, ok := ex.(*systemd.Executor)
	if !ok {
		return nil
	}
	return func(ctx context.Context) bool {
		restarting, err := sd.AgentRestarting(ctx)
		if err != nil {
			log.Warn("cannot tell a restart of the agent's unit from a stop; stopping the units", "err", err)
		}
		return restarting
	}
}

// moveGrace maps the flag to engine.Options.MoveGrace, where zero means the
// default and a negative value none.
func moveGrace(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

// parseMetadata parses "k=v,k2=v2".
func parseMetadata(s string) (map[string]string, error) {
	md := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		kv = strings.TrimSpace(kv)
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || k == "" {
			return nil, fmt.Errorf("%q is not key=value", kv)
		}
		md[k] = v
	}
	return md, nil
}

// machineID returns the flag's id, else the one persisted in dataDir, else
// /etc/machine-id when dataDir is the default one, else a new random id,
// which it persists.
func machineID(flagID, dataDir string) (string, error) {
	if flagID != "" {
		if strings.ContainsAny(flagID, "/ \t\n") {
			return "", cmdline.Usagef("--machine-id %q: no slashes or spaces", flagID)
		}
		return flagID, nil
	}
	path := filepath.Join(dataDir, "machine-id")
	if b, err := os.ReadFile(path); err == nil {
		if id := strings.TrimSpace(string(b)); id != "" {
			return id, nil
		}
	}
	var id string
	if filepath.Clean(dataDir) == defaultDataDir {
		if b, err := os.ReadFile("/etc/machine-id"); err == nil {
			id = strings.TrimSpace(string(b))
		}
	}
	if id == "" {
		b := make([]byte, 16)
		if _, err := rand.Read(b); err != nil {
			return "", err
		}
		id = hex.EncodeToString(b)
	}
	if err := os.WriteFile(path, []byte(id+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("persist machine id: %w", err)
	}
	return id, nil
}

// defaultIP is the first non-loopback IPv4 address of the host.
func defaultIP() string {
	addrs, err := net.InterfaceAddrs()
	if err == nil {
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
				return n.IP.String()
			}
		}
	}
	return "127.0.0.1"
}
