// Command floor is the least a onetime render can do: start a Go process
// that links etcd's client, connect, read every key under a prefix (one
// range, as render reads one prefix) and exit. `make bench` runs it beside
// `render -onetime` over the same keys: render's time over the floor's is
// what rendering, the snapshot and writing add to what no renderer can skip.
//
//	floor -endpoints http://127.0.0.1:2379 -prefix /bench
//
// It prints the number of keys and values' bytes read.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flotilla/flotilla/internal/cmdline"
)

func main() { cmdline.Main("floor", run) }

func run(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := flag.NewFlagSet("floor", flag.ContinueOnError)
	endpoints := fs.String("endpoints", "http://127.0.0.1:2379", "etcd endpoints, comma-separated")
	prefix := fs.String("prefix", "/", "the prefix read")
	timeout := fs.Duration("timeout", 10*time.Second, "bound on connecting and reading")
	if err := cmdline.Parse(fs, args, stdout, "usage: floor [-endpoints URLS] [-prefix P]\n\nReads every key under a prefix with etcd's client and exits.\n"); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	cli, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(*endpoints, ","), DialTimeout: *timeout, Context: ctx})
	if err != nil {
		return fmt.Errorf("connect %s: %w", *endpoints, err)
	}
	defer cli.Close()
	resp, err := cli.Get(ctx, *prefix, clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("read %s: %w", *prefix, err)
	}
	n := 0
	for _, kv := range resp.Kvs {
		n += len(kv.Value)
	}
	_, err = fmt.Fprintf(stdout, "%d keys, %d bytes\n", len(resp.Kvs), n)
	return err
}
