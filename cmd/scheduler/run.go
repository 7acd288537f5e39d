package main

import (
	"context"
	"flag"
	"io"
	"os"
	"strings"
	"time"

	"github.com/flotilla/flotilla/internal/cmdline"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/store"
)

const usage = `usage: scheduler [flags] COMMAND [flags] [ARGS…]

A compact fleet: systemd units scheduled across machines through etcd.

Commands:
  serve                    run this machine: agent, engine candidate (embedded
                           etcd when no --endpoints)
  submit FILE…             store unit files in the cluster
  load FILE-or-UNIT…       submit if needed, schedule to a machine
  start FILE-or-UNIT…      submit and load if needed, run
  stop UNIT…               stop (stay loaded)
  unload UNIT…             unschedule
  destroy UNIT…            stop, unschedule and remove
  restart UNIT…            stop, then start again
  cat UNIT                 print a unit file
  status UNIT…             state of units on their machines (--machine ID)
  journal UNIT             last log lines of a unit (-n N, -f to follow,
                           --machine ID for one machine of a global unit)
  list-units               UNIT MACHINE ACTIVE SUB
  list-unit-files          UNIT HASH DSTATE STATE TARGET
  list-machines            MACHINE IP METADATA (STATE when one is drained)
  token [--rotate]         print this cluster's join token (on the machine
                           holding the CA); --rotate replaces it
  revoke MACHINE           revoke a machine's certificates, remove its etcd member
  roles                    on an etcd with auth (run as root): least-privilege
                           roles and users for operators, engine, agents
                           (--machines), render and announce (--password-dir)
` + rolloutUsage + `

An instance path whose file does not exist (dir/foo@3.service) takes its body
from the template dir/foo@.service. Endpoints: --endpoints, else env
FLOTILLA_ENDPOINTS, else ETCDCTL_ENDPOINTS, else the credentials and endpoints
of a machine that runs serve (--data-dir/pki), else ` + store.DefaultEndpoint + `.
"scheduler serve --help" lists the flags of serve.`

// options are the flags every client command shares.
type options struct {
	store         store.Config
	prefix        string
	noLegend      bool
	full          bool
	noBlock       bool
	blockAttempts int
	replace       bool
	fields        string
	lines         int
	reqTimeout    time.Duration
	rollout       rolloutFlags
	follow        bool
	machine       string
	dataDir       string
	rotate        bool
	tokenTTL      time.Duration
	machines      string
	passwordDir   string
	renderPref    string
}

func (o *options) register(fs *flag.FlagSet) {
	o.store.RegisterFlags(fs)
	fs.StringVar(&o.prefix, "prefix", registry.DefaultPrefix, "etcd key prefix of the scheduler's state")
	fs.BoolVar(&o.noLegend, "no-legend", false, "do not print the header line of lists")
	fs.BoolVar(&o.full, "full", false, "do not shorten machine ids and hashes")
	fs.BoolVar(&o.noBlock, "no-block", false, "do not wait until units reach their state")
	fs.IntVar(&o.blockAttempts, "block-attempts", 0, "wait at most this many attempts (about 0.5s apart); 0: until reached")
	fs.BoolVar(&o.replace, "replace", false, "replace the body of an already submitted unit")
	fs.StringVar(&o.fields, "fields", "", "comma-separated columns of list commands (fleet's field names)")
	fs.IntVar(&o.lines, "lines", 10, "journal: number of lines")
	fs.IntVar(&o.lines, "n", 10, "journal: number of lines (short for --lines)")
	fs.DurationVar(&o.reqTimeout, "request-timeout", 5*time.Second, "journal, status: how long to wait for a machine's agent to answer")
	o.rollout.register(fs)
	o.registerFollow(fs)
	fs.StringVar(&o.dataDir, "data-dir", defaultDataDir, "a serve machine's data dir: its credentials are used when no endpoint is given")
	fs.BoolVar(&o.rotate, "rotate", false, "token: replace the join token (the old one stops working)")
	fs.DurationVar(&o.tokenTTL, "token-ttl", 24*time.Hour, "token --rotate: validity of the new token")
	fs.StringVar(&o.machines, "machines", "", "roles: comma-separated machine ids to make agent users for")
	fs.StringVar(&o.passwordDir, "password-dir", "", "roles: directory for the new users' password files")
	fs.StringVar(&o.renderPref, "render-prefixes", "/clusterstate/", "roles: comma-separated prefixes render may read")
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runEnv(ctx, args, os.Getenv, stdout, stderr)
}

func runEnv(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	verb, rest := splitVerb(args)
	if verb == "serve" {
		return serve(ctx, rest, getenv, stdout, stderr)
	}
	o := &options{store: store.Default()}
	fs := flag.NewFlagSet("scheduler", flag.ContinueOnError)
	o.register(fs)
	if err := cmdline.Parse(fs, rest, stdout, usage); err != nil {
		return err
	}
	if verb == "" {
		return cmdline.Usagef("no command given (see --help)")
	}
	cmd, ok := commandFor(verb)
	if !ok {
		return cmdline.Usagef("unknown command %q (see --help)", verb)
	}
	if err := cmd.checkArgs(fs.Args()); err != nil {
		return err
	}
	if err := checkRolloutFlags(fs, verb); err != nil {
		return err
	}
	if err := o.checkFollow(verb); err != nil {
		return err
	}
	if o.rotate && verb != "token" {
		return cmdline.Usagef("--rotate: only for the token command")
	}
	if verb == "token" {
		return tokenCmd(o, stdout)
	}
	if len(o.store.Endpoints) == 0 && getenv("FLOTILLA_ENDPOINTS") == "" && getenv("ETCDCTL_ENDPOINTS") == "" {
		if _, err := o.store.FromMachineDir(string(pkiDir(o.dataDir))); err != nil {
			return err
		}
	}
	if err := o.store.FromEnv(getenv, "FLOTILLA_ENDPOINTS"); err != nil {
		return cmdline.Usagef("%v", err)
	}
	if o.store.DialTimeout > 10*time.Second {
		o.store.DialTimeout = 10 * time.Second
	}
	c, err := store.Open(ctx, o.store)
	if err != nil {
		return err
	}
	defer c.Close()
	cl := &client{o: o, reg: registry.New(c, o.prefix), stdout: stdout, stderr: stderr, getenv: getenv}
	return cmd.run(cl, ctx, fs.Args())
}

// command is one client verb.
type command struct {
	minArgs, maxArgs int // maxArgs -1: any
	run              func(cl *client, ctx context.Context, args []string) error
}

func (c command) checkArgs(args []string) error {
	if len(args) < c.minArgs {
		return cmdline.Usagef("missing unit argument")
	}
	if c.maxArgs >= 0 && len(args) > c.maxArgs {
		return cmdline.Usagef("too many arguments: %s", strings.Join(args[c.maxArgs:], " "))
	}
	return nil
}

// commandFor returns the verb's command.
func commandFor(verb string) (command, bool) {
	switch verb {
	case "submit":
		return command{1, -1, (*client).submitCmd}, true
	case "load":
		return command{1, -1, func(cl *client, ctx context.Context, args []string) error {
			return cl.setCmd(ctx, args, registry.Loaded, submitFiles)
		}}, true
	case "start":
		return command{1, -1, func(cl *client, ctx context.Context, args []string) error {
			return cl.setCmd(ctx, args, registry.Launched, submitFiles)
		}}, true
	case "stop":
		return command{1, -1, func(cl *client, ctx context.Context, args []string) error {
			return cl.setCmd(ctx, args, registry.Loaded, namesOnly)
		}}, true
	case "unload":
		return command{1, -1, func(cl *client, ctx context.Context, args []string) error {
			return cl.setCmd(ctx, args, registry.Inactive, namesOnly)
		}}, true
	case "destroy":
		return command{1, -1, (*client).destroyCmd}, true
	case "restart":
		return command{1, -1, (*client).restartCmd}, true
	case "cat":
		return command{1, 1, (*client).catCmd}, true
	case "status":
		return command{1, -1, (*client).statusCmd}, true
	case "journal":
		return command{1, 1, (*client).journalCmd}, true
	case "list-units":
		return command{0, 0, (*client).listUnitsCmd}, true
	case "list-unit-files":
		return command{0, 0, (*client).listUnitFilesCmd}, true
	case "list-machines":
		return command{0, 0, (*client).listMachinesCmd}, true
	case "token":
		return command{0, 0, nil}, true
	case "revoke":
		return command{1, 1, (*client).revokeCmd}, true
	case "roles":
		return command{0, 0, (*client).rolesCmd}, true
	}
	return rolloutCommand(verb)
}

// splitVerb finds the command word: the first argument that is neither a
// flag nor the value of a flag that takes one. It returns the verb and the
// other arguments with every flag moved before the positional ones (after a
// "--"), so that flags may follow unit names, as fleetctl allows.
func splitVerb(args []string) (string, []string) {
	probe := flag.NewFlagSet("probe", flag.ContinueOnError)
	(&options{store: store.Default()}).register(probe)
	var verb string
	var flags, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			pos = append(pos, args[i+1:]...)
			i = len(args)
		case !strings.HasPrefix(a, "-") || a == "-":
			if verb == "" {
				verb = a
			} else {
				pos = append(pos, a)
			}
		default:
			flags = append(flags, a)
			if strings.Contains(a, "=") {
				continue
			}
			f := probe.Lookup(strings.TrimLeft(a, "-"))
			if f == nil {
				continue
			}
			if bf, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && bf.IsBoolFlag() {
				continue
			}
			if i+1 < len(args) {
				i++
				flags = append(flags, args[i])
			}
		}
	}
	if verb == "serve" {
		// serve has flags of its own: keep its arguments as given.
		for i, a := range args {
			if a == "serve" {
				return verb, append(append([]string(nil), args[:i]...), args[i+1:]...)
			}
		}
	}
	if len(pos) > 0 {
		flags = append(append(flags, "--"), pos...)
	}
	return verb, flags
}
