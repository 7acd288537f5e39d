package main

import (
	"context"
	"flag"
	"io"

	"github.com/flotilla/flotilla/internal/cmdline"
)

const usage = `usage: announce [flags]

(skeleton: the command is being built)`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("announce", flag.ContinueOnError)
	if err := cmdline.Parse(fs, args, stdout, usage); err != nil {
		return err
	}
	return cmdline.Usagef("not implemented yet")
}
