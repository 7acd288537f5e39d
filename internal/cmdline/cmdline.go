// Package cmdline holds what the three flotilla commands share at their edge:
// a signal-aware main, flag parsing with --help and --version, and exit codes
// (0 ok, 1 failure, 2 bad command line).
package cmdline

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/flotilla/flotilla/internal/version"
)

// ErrHelp is returned by Parse when --help or --version was answered; the
// command should return nil.
var ErrHelp = errors.New("cmdline: help shown")

// UsageError is a bad command line; Main exits 2 for it.
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// ExitError makes Exit return Code without printing anything: a command
// that ran a child in its place (render -exec) exits with the child's status.
type ExitError struct{ Code int }

func (e *ExitError) Error() string { return fmt.Sprintf("exit status %d", e.Code) }

// Usagef returns a UsageError with a formatted message.
func Usagef(format string, args ...any) error {
	return &UsageError{Err: fmt.Errorf(format, args...)}
}

// RunFunc is the shape of every command's run function.
type RunFunc func(ctx context.Context, args []string, stdout, stderr io.Writer) error

// Main runs run with a context cancelled on SIGINT or SIGTERM, prints its error
// as one line on stderr, and exits: 0, 2 for a UsageError, else 1.
func Main(name string, run RunFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(Exit(name, err, os.Stderr))
}

// Exit prints err (if any) to stderr as "name: err" and returns the exit code.
func Exit(name string, err error, stderr io.Writer) int {
	if err == nil || errors.Is(err, ErrHelp) {
		return 0
	}
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code // the status of a child the command stood for
	}
	fmt.Fprintf(stderr, "%s: %s\n", name, strings.ReplaceAll(err.Error(), "\n", " "))
	var ue *UsageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

// Parse parses args into fs, answering --help (usage on stdout) and --version.
// It returns ErrHelp when it answered, a UsageError for a bad command line.
// usage is the text printed before the flag list.
func Parse(fs *flag.FlagSet, args []string, stdout io.Writer, usage string) error {
	var version bool
	fs.BoolVar(&version, "version", false, "print the version and exit")
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		PrintUsage(fs, stdout, usage)
		return ErrHelp
	}
	if err != nil {
		return &UsageError{Err: fmt.Errorf("%v (see --help)", err)}
	}
	if version {
		fmt.Fprintf(stdout, "%s %s\n", fs.Name(), Version())
		return ErrHelp
	}
	return nil
}

// PrintUsage writes usage then fs's flags to w.
func PrintUsage(fs *flag.FlagSet, w io.Writer, usage string) {
	fmt.Fprintln(w, strings.TrimRight(usage, "\n"))
	fmt.Fprintln(w, "\nFlags:")
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}

// Version returns this build's version, commit and Go version (see
// internal/version).
func Version() string { return version.Read().String() }
