package main

import (
	"context"
	"flag"
	"io"
	"os"
	"slices"
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
"scheduler COMMAND --help" lists the flags COMMAND takes; a flag of another
command is refused.`

// options are the flags of the client verbs. Each verb registers only the
// ones it takes (command.flags), so a flag given to a verb it does nothing
// for is refused rather than ignored.
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

// registerShared registers the flags of every verb that talks to etcd: the
// endpoints, TLS and auth of the store, the key prefix, and the data dir
// whose credentials stand in when no endpoint is given.
func (o *options) registerShared(fs *flag.FlagSet) {
	o.store.RegisterFlags(fs)
	fs.StringVar(&o.prefix, "prefix", registry.DefaultPrefix, "etcd key prefix of the scheduler's state")
	o.registerDataDir(fs)
}

func (o *options) registerDataDir(fs *flag.FlagSet) {
	fs.StringVar(&o.dataDir, "data-dir", defaultDataDir, "a serve machine's data dir: its credentials are used when no endpoint is given (token, revoke: where the cluster CA is)")
}

func (o *options) registerFull(fs *flag.FlagSet) {
	fs.BoolVar(&o.full, "full", false, "do not shorten machine ids and hashes")
}

// registerBlock registers the flags of the verbs that wait until their
// units reach the state they asked for.
func (o *options) registerBlock(fs *flag.FlagSet) {
	fs.BoolVar(&o.noBlock, "no-block", false, "do not wait until units reach their state")
	fs.IntVar(&o.blockAttempts, "block-attempts", 0, "wait at most this many attempts (about 0.5s apart); 0: until reached")
	o.registerFull(fs)
}

func (o *options) registerReplace(fs *flag.FlagSet) {
	fs.BoolVar(&o.replace, "replace", false, "replace the body of an already submitted unit")
}

func (o *options) registerList(fs *flag.FlagSet) {
	fs.BoolVar(&o.noLegend, "no-legend", false, "do not print the header line")
	fs.StringVar(&o.fields, "fields", "", "comma-separated columns (fleet's field names)")
	o.registerFull(fs)
}

// registerLines registers the flags of the verbs that show a unit's last
// log lines.
func (o *options) registerLines(fs *flag.FlagSet) {
	fs.IntVar(&o.lines, "lines", 10, "number of log lines")
	fs.IntVar(&o.lines, "n", 10, "number of log lines (short for --lines)")
	fs.DurationVar(&o.reqTimeout, "request-timeout", 5*time.Second, "how long to wait for a machine's agent to answer")
	o.registerMachine(fs)
}

func (o *options) registerToken(fs *flag.FlagSet) {
	o.registerDataDir(fs)
	fs.BoolVar(&o.rotate, "rotate", false, "replace the join token (the old one stops working)")
	fs.DurationVar(&o.tokenTTL, "token-ttl", 24*time.Hour, "--rotate: validity of the new token")
}

func (o *options) registerRoles(fs *flag.FlagSet) {
	fs.StringVar(&o.machines, "machines", "", "comma-separated machine ids to make agent users for")
	fs.StringVar(&o.passwordDir, "password-dir", "", "directory for the new users' password files")
	fs.StringVar(&o.renderPref, "render-prefixes", "/clusterstate/", "comma-separated prefixes render may read")
	o.registerRollout(fs, "roles")
}

// registerRollout registers the planned-change flags that apply to verb
// (rolloutFlagVerbs), and --no-block where checkRolloutFlags judges it.
func (o *options) registerRollout(fs *flag.FlagSet, verb string) {
	all := flag.NewFlagSet("rollout", flag.ContinueOnError)
	o.rollout.register(all)
	all.VisitAll(func(f *flag.Flag) {
		if slices.Contains(rolloutFlagVerbs(f.Name), verb) {
			fs.Var(f.Value, f.Name, f.Usage)
		}
	})
	switch verb {
	case "roll", "drain", "move":
		fs.BoolVar(&o.noBlock, "no-block", false, "store the change and return at once (serve's rollout driver carries it out; scheduler rollouts shows it)")
	case "rollouts":
		fs.BoolVar(&o.noBlock, "no-block", false, "with an ID: print the record once, do not follow it")
		fs.BoolVar(&o.noLegend, "no-legend", false, "do not print the header line")
	}
	o.registerFull(fs)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runEnv(ctx, args, os.Getenv, stdout, stderr)
}

func runEnv(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	verb, rest := splitVerb(args)
	if verb == "serve" {
		return serve(ctx, rest, getenv, stdout, stderr)
	}
	cl := &client{o: &options{store: store.Default()}, stdout: stdout, stderr: stderr, getenv: getenv}
	if verb == "" {
		// Only --help and --version make sense without a command.
		if err := cmdline.Parse(allFlags(), rest, stdout, usage); err != nil {
			return err
		}
		return cmdline.Usagef("no command given (see --help)")
	}
	cmd, ok := cl.command(verb)
	if !ok {
		return cmdline.Usagef("unknown command %q (see --help)", verb)
	}
	fs := flag.NewFlagSet("scheduler "+verb, flag.ContinueOnError)
	cmd.flags(fs)
	if err := refuseForeign(fs, verb, rest); err != nil {
		return err
	}
	if err := cmdline.Parse(fs, rest, stdout, usage); err != nil {
		return err
	}
	if err := cmd.checkArgs(fs.Args()); err != nil {
		return err
	}
	if cmd.local {
		return cmd.run(ctx, fs.Args())
	}
	if err := checkRolloutFlags(fs, verb); err != nil {
		return err
	}
	c, err := cl.open(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	return cmd.run(ctx, fs.Args())
}

// open connects cl to the cluster: --endpoints, else the environment, else
// the credentials of a machine that runs serve.
func (cl *client) open(ctx context.Context) (*store.Client, error) {
	o, getenv := cl.o, cl.getenv
	if len(o.store.Endpoints) == 0 && getenv("FLOTILLA_ENDPOINTS") == "" && getenv("ETCDCTL_ENDPOINTS") == "" {
		if _, err := o.store.FromMachineDir(string(pkiDir(o.dataDir))); err != nil {
			return nil, err
		}
	}
	if err := o.store.FromEnv(getenv, "FLOTILLA_ENDPOINTS"); err != nil {
		return nil, cmdline.Usagef("%v", err)
	}
	if o.store.DialTimeout > 10*time.Second {
		o.store.DialTimeout = 10 * time.Second
	}
	c, err := store.Open(ctx, o.store)
	if err != nil {
		return nil, err
	}
	cl.reg = registry.New(c, o.prefix)
	return c, nil
}

// command is one client verb.
type command struct {
	minArgs, maxArgs int                    // maxArgs -1: any
	flags            func(fs *flag.FlagSet) // the flags the verb takes
	local            bool                   // runs without etcd
	run              func(ctx context.Context, args []string) error
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

// verbs returns the client verbs, in the order of the usage text.
func verbs() []string {
	return []string{
		"submit", "load", "start", "stop", "unload", "destroy", "restart", "cat", "status", "journal",
		"list-units", "list-unit-files", "list-machines", "token", "revoke", "roles",
		"roll", "move", "drain", "undrain",
	}
}

// command returns the verb's command, bound to cl.
func (cl *client) command(verb string) (command, bool) {
	o := cl.o
	set := func(d registry.Desired, sub submitFirst) func(context.Context, []string) error {
		return func(ctx context.Context, args []string) error { return cl.setCmd(ctx, args, d, sub) }
	}
	with := func(groups ...func(*flag.FlagSet)) func(*flag.FlagSet) {
		return func(fs *flag.FlagSet) {
			o.registerShared(fs)
			for _, g := range groups {
				g(fs)
			}
		}
	}
	switch verb {
	case "submit":
		return command{minArgs: 1, maxArgs: -1, flags: with(o.registerReplace, o.registerBlock), run: cl.submitCmd}, true
	case "load":
		return command{minArgs: 1, maxArgs: -1, flags: with(o.registerReplace, o.registerBlock), run: set(registry.Loaded, submitFiles)}, true
	case "start":
		return command{minArgs: 1, maxArgs: -1, flags: with(o.registerReplace, o.registerBlock), run: set(registry.Launched, submitFiles)}, true
	case "stop":
		return command{minArgs: 1, maxArgs: -1, flags: with(o.registerBlock), run: set(registry.Loaded, namesOnly)}, true
	case "unload":
		return command{minArgs: 1, maxArgs: -1, flags: with(o.registerBlock), run: set(registry.Inactive, namesOnly)}, true
	case "destroy":
		return command{minArgs: 1, maxArgs: -1, flags: with(o.registerBlock), run: cl.destroyCmd}, true
	case "restart":
		return command{minArgs: 1, maxArgs: -1, flags: with(o.registerBlock), run: cl.restartCmd}, true
	case "cat":
		return command{minArgs: 1, maxArgs: 1, flags: with(), run: cl.catCmd}, true
	case "status":
		return command{minArgs: 1, maxArgs: -1, flags: with(o.registerLines, o.registerFull), run: cl.statusCmd}, true
	case "journal":
		return command{minArgs: 1, maxArgs: 1, flags: with(o.registerLines, o.registerFollow), run: cl.journalCmd}, true
	case "list-units":
		return command{minArgs: 0, maxArgs: 0, flags: with(o.registerList), run: cl.listUnitsCmd}, true
	case "list-unit-files":
		return command{minArgs: 0, maxArgs: 0, flags: with(o.registerList), run: cl.listUnitFilesCmd}, true
	case "list-machines":
		return command{minArgs: 0, maxArgs: 0, flags: with(o.registerList), run: cl.listMachinesCmd}, true
	case "token":
		return command{minArgs: 0, maxArgs: 0, flags: o.registerToken, local: true, run: func(context.Context, []string) error { return tokenCmd(o, cl.stdout) }}, true
	case "revoke":
		return command{minArgs: 1, maxArgs: 1, flags: with(), run: cl.revokeCmd}, true
	case "roles":
		return command{minArgs: 0, maxArgs: 0, flags: with(o.registerRoles), run: cl.rolesCmd}, true
	}
	c, ok := cl.rolloutCommand(verb)
	c.flags = with(func(fs *flag.FlagSet) { o.registerRollout(fs, verb) })
	return c, ok
}

// allFlags is every client verb's flags in one set: what --help without a
// command lists, and what splitVerb looks flags up in.
func allFlags() *flag.FlagSet {
	all := flag.NewFlagSet("scheduler", flag.ContinueOnError)
	for _, v := range verbs() {
		for _, f := range verbFlags(v) {
			if all.Lookup(f.Name) == nil {
				all.Var(f.Value, f.Name, f.Usage)
			}
		}
	}
	return all
}

// verbFlags returns the flags verb takes (nil for an unknown verb).
func verbFlags(verb string) []*flag.Flag {
	cl := &client{o: &options{store: store.Default()}}
	cmd, ok := cl.command(verb)
	if !ok {
		return nil
	}
	fs := flag.NewFlagSet(verb, flag.ContinueOnError)
	cmd.flags(fs)
	var fl []*flag.Flag
	fs.VisitAll(func(f *flag.Flag) { fl = append(fl, f) })
	return fl
}

// refuseForeign refuses, before parsing, a flag that other verbs take but
// verb does not, naming the verbs it applies to (the flag package's own
// message would only say it is not defined).
func refuseForeign(fs *flag.FlagSet, verb string, args []string) error {
	for _, a := range args {
		if a == "--" {
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if name == "help" || name == "h" || name == "version" || fs.Lookup(name) != nil {
			continue
		}
		var takers []string
		for _, v := range verbs() {
			if slices.ContainsFunc(verbFlags(v), func(f *flag.Flag) bool { return f.Name == name }) {
				takers = append(takers, v)
			}
		}
		if len(takers) > 0 {
			return cmdline.Usagef("%s applies only to %s, not %s (see scheduler %s --help)", flagName(name), strings.Join(takers, ", "), verb, verb)
		}
	}
	return nil
}

// flagName spells a flag as the usage text does: -f, --follow.
func flagName(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

// splitVerb finds the command word: the first argument that is neither a
// flag nor the value of a flag that takes one. It returns the verb and the
// other arguments with every flag moved before the positional ones (after a
// "--"), so that flags may follow unit names, as fleetctl allows.
func splitVerb(args []string) (string, []string) {
	probe := allFlags()
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
