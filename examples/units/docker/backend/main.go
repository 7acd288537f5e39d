// Command backend is the static HTTP server in the docker scenario's
// `FROM scratch` image: it answers every request with "NAME on HOST ADDR\n"
// (as the example nginx@ instances do) and the header X-Backend: NAME.
//
//	backend -listen :8080 -name nginx@1 -host worker-2 -addr 127.0.0.3:8080
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/flotilla/flotilla/internal/cmdline"
)

func main() { cmdline.Main("backend", run) }

const usage = `usage: backend [-listen :8080] -name NAME [-host HOST] [-addr IP:PORT]

Answers every HTTP request with "NAME on HOST ADDR". Stops on SIGTERM/SIGINT.`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("backend", flag.ContinueOnError)
	listen := fs.String("listen", ":8080", "address to listen on")
	name := fs.String("name", "", "name to answer with (required)")
	host := fs.String("host", "", "host name to answer with")
	addr := fs.String("addr", "", "announced address to answer with (default: -listen)")
	if err := cmdline.Parse(fs, args, stdout, usage); err != nil {
		return err
	}
	if *name == "" || fs.NArg() > 0 {
		return cmdline.Usagef("backend: -name is required and no arguments are taken")
	}
	if *addr == "" {
		*addr = *listen
	}
	text := fmt.Sprintf("%s on %s %s\n", *name, *host, *addr)
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", *listen, err)
	}
	srv := &http.Server{
		ReadHeaderTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Backend", *name)
			w.Header().Set("Content-Type", "text/plain")
			io.WriteString(w, text)
		}),
	}
	fmt.Fprintf(stderr, "backend %s listening on %s\n", *name, l.Addr())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve %s: %w", *listen, err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err = srv.Shutdown(sctx)
	if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) {
		return fmt.Errorf("serve %s: %w", *listen, serr)
	}
	return err
}
