package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSecureFlagsRefused: flags that could not do what they say are refused
// with a message naming them, before anything is written.
func TestSecureFlagsRefused(t *testing.T) {
	noenv := func(string) string { return "" }
	for name, tc := range map[string]struct {
		args []string
		env  func(string) string
		want string
	}{
		"token without join":      {[]string{"--token", "flt1.x"}, noenv, "--token"},
		"join with endpoints":     {[]string{"--join", "127.0.0.1:1", "--token", "t", "--endpoints", "http://127.0.0.1:1"}, noenv, "--join and --endpoints"},
		"join with insecure":      {[]string{"--join", "127.0.0.1:1", "--token", "t", "--insecure"}, noenv, "--join and --insecure"},
		"join without a token":    {[]string{"--join", "127.0.0.1:1"}, noenv, "give --token"},
		"join, malformed token":   {[]string{"--join", "127.0.0.1:1", "--token", "nope"}, noenv, "malformed join token"},
		"join, env token checked": {[]string{"--join", "127.0.0.1:1"}, func(k string) string { return map[string]string{"FLOTILLA_TOKEN": "bad"}[k] }, "malformed join token"},
		"join, bad address":       {[]string{"--join", "http://host", "--token", "t"}, noenv, "--join"},
		"join, default port":      {[]string{"--join", "127.0.0.1", "--token", "flt1." + strings.Repeat("a", 64) + ".0123456789abcdef"}, noenv, "127.0.0.1:2378"},
		"insecure with endpoints": {[]string{"--insecure", "--endpoints", "http://127.0.0.1:1"}, noenv, "--insecure"},
		"join with env endpoints": {[]string{"--join", "127.0.0.1:1", "--token", "t"}, func(k string) string { return map[string]string{"ETCDCTL_ENDPOINTS": "http://x:1"}[k] }, "pick one"},
		"token ttl":               {[]string{"--token-ttl", "0s"}, noenv, "--token-ttl"},
	} {
		t.Run(name, func(t *testing.T) {
			data := filepath.Join(t.TempDir(), "d")
			args := append([]string{"serve", "--data-dir", data, "--executor", "process", "--dial-timeout", "1s"}, tc.args...)
			err := runEnv(context.Background(), args, tc.env, &bytes.Buffer{}, &bytes.Buffer{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want one naming %q", err, tc.want)
			}
			if _, err := os.Stat(data); !os.IsNotExist(err) {
				t.Errorf("data dir written (%v)", err)
			}
		})
	}
}

func TestTokenNeedsTheCA(t *testing.T) {
	err := runEnv(context.Background(), []string{"token", "--data-dir", t.TempDir()}, func(string) string { return "" }, &bytes.Buffer{}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "holds no cluster CA") {
		t.Fatalf("err %v", err)
	}
	err = runEnv(context.Background(), []string{"list-units", "--rotate"}, func(string) string { return "" }, &bytes.Buffer{}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "--rotate") {
		t.Fatalf("--rotate outside token: %v", err)
	}
}
