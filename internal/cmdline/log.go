package cmdline

import (
	"flag"
	"io"
	"log/slog"
	"strings"
)

// LogFlags are the --log-level and --log-format flags every command takes;
// Logger builds the logger they describe. The zero value is info, text.
type LogFlags struct {
	Level  string // debug, info, warn or error (confd's warning, fatal and panic too)
	Format string // text or json
}

// Register adds --log-level and --log-format to fs.
func (f *LogFlags) Register(fs *flag.FlagSet) {
	fs.StringVar(&f.Level, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&f.Format, "log-format", "text", "text or json (logs go to stderr)")
}

// Logger returns a logger writing to w at the level and in the format of
// f; an unknown level or format is a UsageError naming the flag.
func (f LogFlags) Logger(w io.Writer) (*slog.Logger, error) {
	var l slog.Level
	switch strings.ToLower(f.Level) {
	case "debug":
		l = slog.LevelDebug
	case "", "info":
		l = slog.LevelInfo
	case "warn", "warning":
		l = slog.LevelWarn
	case "error", "fatal", "panic":
		l = slog.LevelError
	default:
		return nil, Usagef("--log-level %q: want debug, info, warn or error", f.Level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch strings.ToLower(f.Format) {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, Usagef("--log-format %q: want text or json", f.Format)
}
