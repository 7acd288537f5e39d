package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"os"

	"github.com/flotilla/flotilla/internal/cmdline"
)

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o := &options{}
	fs := newFlagSet(o)
	if err := cmdline.Parse(fs, args, stdout, usage); err != nil {
		return err
	}
	if fs.NArg() > 0 { // the fork's form: BACKEND then its flags
		b := fs.Arg(0)
		if _, ok := backendName(b); !ok {
			return cmdline.Usagef("unknown backend or argument %q (want etcdv3, etcd or file)", b)
		}
		if err := fs.Parse(fs.Args()[1:]); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				cmdline.PrintUsage(fs, stdout, usage)
				return cmdline.ErrHelp
			}
			return cmdline.Usagef("%v (see --help)", err)
		}
		if fs.NArg() > 0 {
			return cmdline.Usagef("unexpected argument %q", fs.Arg(0))
		}
		if err := fs.Set("backend", b); err != nil {
			return err
		}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if err := applyEnv(fs, set); err != nil {
		return err
	}
	log, err := o.log.Logger(stderr)
	if err != nil {
		return err
	}
	// The config file, for what neither flags nor env gave.
	cfgFile, explicit := o.configFile, o.configFile != ""
	if !explicit {
		cfgFile = "/etc/confd/confd.toml"
	}
	if err := applyConfigFile(fs, set, cfgFile, explicit, o.strict, log); err != nil {
		return err
	}
	if log, err = o.log.Logger(stderr); err != nil {
		return err
	}
	if err := o.check(set, os.Getenv("NOTIFY_SOCKET") != ""); err != nil {
		return err
	}
	return wire(ctx, o, set, log, stdout)
}
