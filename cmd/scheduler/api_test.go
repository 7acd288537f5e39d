package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestServeAPIFlagRefusals: API flags that would do nothing or expose the
// cluster are refused before anything starts.
func TestServeAPIFlagRefusals(t *testing.T) {
	for name, c := range map[string]struct {
		args []string
		want string
	}{
		"plain http off loopback": {[]string{"--api", "http://0.0.0.0:8080"}, "plain http on a non-loopback address"},
		"https without files":     {[]string{"--api", "https://127.0.0.1:8443"}, "https needs --api-cert, --api-key and --api-cacert"},
		"cert without https":      {[]string{"--api", "unix:///tmp/x.sock", "--api-cert", "c.pem"}, "need an https:// --api address"},
		"prefix without api":      {[]string{"--api-endpoint-prefix", "/x/"}, "need an --api address"},
		"bad scheme":              {[]string{"--api", "tcp://127.0.0.1:1"}, "want unix:///path"},
	} {
		data := t.TempDir()
		args := append([]string{"serve", "--data-dir", data, "--machine-id", "m1"}, c.args...)
		err := runEnv(context.Background(), args, func(string) string { return "" }, &bytes.Buffer{}, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
}
