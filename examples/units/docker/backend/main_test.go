package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/flotilla/flotilla/internal/cmdline"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestUsage(t *testing.T) {
	tests := map[string]struct {
		args []string
		code int
		want string
	}{
		"no name":     {args: nil, code: 2, want: "-name is required"},
		"extra arg":   {args: []string{"-name", "x", "y"}, code: 2, want: "no arguments"},
		"bad flag":    {args: []string{"-nope"}, code: 2, want: "-nope"},
		"bad listen":  {args: []string{"-name", "x", "-listen", "256.0.0.1:1"}, code: 1, want: "listen 256.0.0.1:1"},
		"help exit 0": {args: []string{"--help"}, code: 0},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), tc.args, &stdout, &stderr)
			if code := cmdline.Exit("backend", err, &stderr); code != tc.code {
				t.Fatalf("exit %d, want %d (%v)", code, tc.code, err)
			}
			if !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("stderr %q does not say %q", stderr.String(), tc.want)
			}
		})
	}
}

// TestAnswersItsNameAndStops serves, answers "NAME on HOST ADDR", and stops
// cleanly when its context ends (SIGTERM in the container).
func TestAnswersItsNameAndStops(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-listen", addr, "-name", "nginx@1", "-host", "worker-2", "-addr", "10.0.0.2:8080"}, io.Discard, io.Discard)
	}()
	var body string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		resp, err := http.Get("http://" + addr + "/anything")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
			if got := resp.Header.Get("X-Backend"); got != "nginx@1" {
				t.Errorf("X-Backend = %q", got)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("backend never answered: %v", err)
		}
	}
	if body != "nginx@1 on worker-2 10.0.0.2:8080\n" {
		t.Errorf("body = %q", body)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("run after stop: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("backend did not stop")
	}
}
