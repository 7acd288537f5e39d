package main

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/announce"
)

// FuzzFlags feeds announce's command-line parser arbitrary arguments (NUL
// separates them in the fuzz input) and environment-free lookups: it never
// panics, and whatever it accepts is a valid key, a non-empty value and a
// whole-second TTL of at least 1s.
func FuzzFlags(f *testing.F) {
	for _, seed := range []string{
		"/clusterstate/ns/web\x00h 127.0.0.1:80",
		"--ttl\x002s\x00--addr\x00127.0.0.1:8080\x00--host\x00h\x00/k",
		"--format\x00json\x00--addr\x00127.0.0.1:1\x00--unit\x00u.service\x00--machine\x00m\x00/k",
		"--delete\x00/k",
		"--delete\x00/k\x00h 127.0.0.1:1",
		"--withdraw\x00--drain-timeout\x001s\x00/k\x00h 127.0.0.1:1",
		"--detach\x00--delete\x00/k",
		"--ttl\x001500ms\x00/k\x00v",
		"--ttl\x00-1s\x00/k\x00v",
		"--check\x00http://127.0.0.1:1/\x00--check-interval\x000s\x00/k\x00v",
		"--endpoints\x00\x00/k\x00v",
		"--endpoints\x00ftp://x\x00/k\x00v",
		"/k\x00\xff\xfe",
		"\x00",
		"../../etc/passwd\x00v",
		"/k\x00$(touch /tmp/x)",
		"--addr\x00:80\x00--ip\x00iface:\x00/k",
		"--log-level\x00loud\x00/k\x00v",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		args := strings.Split(raw, "\x00")
		getenv := func(string) string { return "" }
		o, err := parse(args, io.Discard, getenv)
		if err != nil {
			return
		}
		if err := announce.ValidateKey(o.cfg.Key); err != nil {
			t.Fatalf("accepted an invalid key %q: %v", o.cfg.Key, err)
		}
		if strings.TrimSpace(o.cfg.Value) == "" {
			t.Fatalf("accepted an empty value for %q", args)
		}
		if o.delete || o.withdraw {
			return
		}
		if o.cfg.TTL < time.Second || o.cfg.TTL%time.Second != 0 {
			t.Fatalf("accepted ttl %s", o.cfg.TTL)
		}
	})
}
