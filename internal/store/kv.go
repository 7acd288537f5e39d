package store

import (
	"context"
	"errors"
	"fmt"
	"iter"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"
)

// LeaseID identifies an etcd lease; 0 means none.
type LeaseID int64

// KV is one key with its value and revisions.
type KV struct {
	Key            string
	Value          []byte
	CreateRevision int64
	ModRevision    int64
	Version        int64
	Lease          LeaseID
}

func fromPB(kv *mvccpb.KeyValue) KV {
	return KV{
		Key:            string(kv.Key),
		Value:          kv.Value,
		CreateRevision: kv.CreateRevision,
		ModRevision:    kv.ModRevision,
		Version:        kv.Version,
		Lease:          LeaseID(kv.Lease),
	}
}

// Get reads one key. found is false when it does not exist; rev is the store
// revision the read saw.
func (c *Client) Get(ctx context.Context, key string) (kv KV, found bool, rev int64, err error) {
	resp, err := c.cli.Get(ctx, key)
	if err != nil {
		return KV{}, false, 0, fmt.Errorf("get %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return KV{}, false, resp.Header.Revision, nil
	}
	return fromPB(resp.Kvs[0]), true, resp.Header.Revision, nil
}

// GetPrefix reads every key that starts with prefix, sorted by key, and the
// revision of that consistent snapshot.
func (c *Client) GetPrefix(ctx context.Context, prefix string) ([]KV, int64, error) {
	resp, err := c.cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, 0, fmt.Errorf("get prefix %s: %w", prefix, err)
	}
	out := make([]KV, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		out[i] = fromPB(kv)
	}
	return out, resp.Header.Revision, nil
}

// GetPrefixes reads several prefixes in one consistent snapshot, so that a
// caller watching them all can resume from one revision. Any number of
// prefixes is fine: they are read MaxTxnOps at a time, every request after
// the first pinned to the revision the first one saw (see rangePrefixes).
func (c *Client) GetPrefixes(ctx context.Context, prefixes []string) (map[string][]KV, int64, error) {
	resps, rev, err := c.rangePrefixes(ctx, prefixes)
	if err != nil {
		return nil, 0, err
	}
	out := make(map[string][]KV, len(prefixes))
	for i, rr := range resps {
		kvs := make([]KV, len(rr.Kvs))
		for j, kv := range rr.Kvs {
			kvs[j] = fromPB(kv)
		}
		out[prefixes[i]] = kvs
	}
	return out, rev, nil
}

// ScanPrefixes is GetPrefixes for a caller that wants only keys and values,
// all prefixes together: it returns how many pairs were read, an iterator
// over them (prefix after prefix, each in key order) and the revision. No
// intermediate list is built: a large read costs the decoded responses.
func (c *Client) ScanPrefixes(ctx context.Context, prefixes []string) (n int, pairs iter.Seq2[string, []byte], rev int64, err error) {
	resps, rev, err := c.rangePrefixes(ctx, prefixes)
	if err != nil {
		return 0, nil, 0, err
	}
	for _, rr := range resps {
		n += len(rr.Kvs)
	}
	pairs = func(yield func(string, []byte) bool) {
		for _, rr := range resps {
			for _, kv := range rr.Kvs {
				if !yield(string(kv.Key), kv.Value) {
					return
				}
			}
		}
	}
	return n, pairs, rev, nil
}

// MaxTxnOps is the most operations the store puts in one etcd request: etcd
// refuses a transaction with more than its --max-txn-ops (default 128). A
// server configured lower makes the store halve its chunks until they pass.
const MaxTxnOps = 128

// readParallel bounds the chunk requests of one read in flight at once.
const readParallel = 4

// rangePrefixes reads every key under each prefix, in key order: one range
// response per prefix, all at one revision. The prefixes go in chunks of at
// most MaxTxnOps reads per transaction (etcd's --max-txn-ops); the first
// chunk fixes the revision and every other chunk reads at that revision, so
// the result is one consistent snapshot however many prefixes there are. A
// compaction past that revision while the chunks are read (the history they
// need is gone) starts the read over at a new revision.
func (c *Client) rangePrefixes(ctx context.Context, prefixes []string) ([]*etcdserverpb.RangeResponse, int64, error) {
	size := MaxTxnOps
	for attempt := 0; ; attempt++ {
		resps, rev, err := c.rangeChunks(ctx, prefixes, size)
		switch {
		case err == nil:
			return resps, rev, nil
		case errors.Is(err, rpctypes.ErrTooManyOps) || errors.Is(err, rpctypes.ErrGRPCTooManyOps):
			if size == 1 {
				return nil, 0, fmt.Errorf("get %d prefixes: %w", len(prefixes), err)
			}
			size = max(size/2, 1) // a server with a lower --max-txn-ops
		case (errors.Is(err, rpctypes.ErrCompacted) || errors.Is(err, rpctypes.ErrGRPCCompacted)) && attempt < 3:
			// the pinned revision was compacted between chunks: read again
		default:
			return nil, 0, fmt.Errorf("get %d prefixes %s: %w", len(prefixes), describePrefixes(prefixes), err)
		}
	}
}

func (c *Client) rangeChunks(ctx context.Context, prefixes []string, size int) ([]*etcdserverpb.RangeResponse, int64, error) {
	resps := make([]*etcdserverpb.RangeResponse, len(prefixes))
	read := func(ctx context.Context, lo, hi int, rev int64) (int64, error) {
		opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend)}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		if hi-lo == 1 { // one prefix: a plain range, no transaction
			g, err := c.cli.Get(ctx, prefixes[lo], opts...)
			if err != nil {
				return 0, err
			}
			resps[lo] = (*etcdserverpb.RangeResponse)(g)
			return g.Header.Revision, nil
		}
		ops := make([]clientv3.Op, hi-lo)
		for i, p := range prefixes[lo:hi] {
			ops[i] = clientv3.OpGet(p, opts...)
		}
		resp, err := c.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return 0, err
		}
		for i, r := range resp.Responses {
			resps[lo+i] = r.GetResponseRange()
		}
		return resp.Header.Revision, nil
	}
	if len(prefixes) == 0 { // nothing to read: only the revision
		resp, err := c.cli.Txn(ctx).Commit()
		if err != nil {
			return nil, 0, err
		}
		return resps, resp.Header.Revision, nil
	}
	first := min(size, len(prefixes))
	rev, err := read(ctx, 0, first, 0)
	if err != nil || first == len(prefixes) {
		return resps, rev, err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(readParallel)
	for lo := first; lo < len(prefixes); lo += size {
		hi := min(lo+size, len(prefixes))
		g.Go(func() error {
			_, err := read(gctx, lo, hi, rev)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, 0, err
	}
	return resps, rev, nil
}

// describePrefixes names the prefixes of a read in an error: all of them
// when they are few, else the first few and how many more.
func describePrefixes(prefixes []string) string {
	const show = 4
	if len(prefixes) <= show {
		return fmt.Sprintf("%q", prefixes)
	}
	return fmt.Sprintf("%q and %d more", prefixes[:show], len(prefixes)-show)
}

// Put writes key=value, bound to lease when lease is not 0. It returns the new
// store revision.
func (c *Client) Put(ctx context.Context, key, value string, lease LeaseID) (int64, error) {
	var opts []clientv3.OpOption
	if lease != 0 {
		opts = append(opts, clientv3.WithLease(clientv3.LeaseID(lease)))
	}
	resp, err := c.cli.Put(ctx, key, value, opts...)
	if err != nil {
		return 0, fmt.Errorf("put %s: %w", key, err)
	}
	return resp.Header.Revision, nil
}

// Delete removes one key. It returns how many keys were deleted (0 or 1).
func (c *Client) Delete(ctx context.Context, key string) (int64, error) {
	resp, err := c.cli.Delete(ctx, key)
	if err != nil {
		return 0, fmt.Errorf("delete %s: %w", key, err)
	}
	return resp.Deleted, nil
}

// DeletePrefix removes every key under prefix and returns how many.
func (c *Client) DeletePrefix(ctx context.Context, prefix string) (int64, error) {
	resp, err := c.cli.Delete(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return 0, fmt.Errorf("delete prefix %s: %w", prefix, err)
	}
	return resp.Deleted, nil
}

// Compact compacts the store's history up to rev (an administrative operation,
// used by tests and tools).
func (c *Client) Compact(ctx context.Context, rev int64) error {
	if _, err := c.cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		return fmt.Errorf("compact at revision %d: %w", rev, err)
	}
	return nil
}

// Cmp is a condition of a transaction; build it with the functions below.
type Cmp struct{ c clientv3.Cmp }

// ModRevisionIs holds when key was last modified at rev (0: key absent).
func ModRevisionIs(key string, rev int64) Cmp {
	return Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", rev)}
}

// CreateRevisionIs holds when key was created at rev (0: key absent).
func CreateRevisionIs(key string, rev int64) Cmp {
	return Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", rev)}
}

// Missing holds when key does not exist.
func Missing(key string) Cmp { return CreateRevisionIs(key, 0) }

// Op is an operation of a transaction.
type Op struct{ op clientv3.Op }

// OpPut writes key=value, bound to lease when lease is not 0.
func OpPut(key, value string, lease LeaseID) Op {
	if lease != 0 {
		return Op{clientv3.OpPut(key, value, clientv3.WithLease(clientv3.LeaseID(lease)))}
	}
	return Op{clientv3.OpPut(key, value)}
}

// OpDelete deletes one key.
func OpDelete(key string) Op { return Op{clientv3.OpDelete(key)} }

// Txn applies then when every condition in ifs holds, otherwise orElse. It
// reports which branch ran and the resulting revision.
func (c *Client) Txn(ctx context.Context, ifs []Cmp, then, orElse []Op) (succeeded bool, rev int64, err error) {
	cmps := make([]clientv3.Cmp, len(ifs))
	for i, x := range ifs {
		cmps[i] = x.c
	}
	resp, err := c.cli.Txn(ctx).If(cmps...).Then(ops(then)...).Else(ops(orElse)...).Commit()
	if err != nil {
		return false, 0, fmt.Errorf("transaction (%d conditions, %d ops): %w", len(ifs), len(then), err)
	}
	return resp.Succeeded, resp.Header.Revision, nil
}

func ops(in []Op) []clientv3.Op {
	out := make([]clientv3.Op, len(in))
	for i, o := range in {
		out[i] = o.op
	}
	return out
}
