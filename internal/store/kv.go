package store

import (
	"context"
	"fmt"
	"iter"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
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

// GetPrefixes reads several prefixes in one consistent snapshot (one
// transaction), so that a caller watching them all can resume from one revision.
func (c *Client) GetPrefixes(ctx context.Context, prefixes []string) (map[string][]KV, int64, error) {
	resp, err := c.rangePrefixes(ctx, prefixes)
	if err != nil {
		return nil, 0, err
	}
	out := make(map[string][]KV, len(prefixes))
	for i, r := range resp.Responses {
		rr := r.GetResponseRange()
		kvs := make([]KV, len(rr.Kvs))
		for j, kv := range rr.Kvs {
			kvs[j] = fromPB(kv)
		}
		out[prefixes[i]] = kvs
	}
	return out, resp.Header.Revision, nil
}

// ScanPrefixes is GetPrefixes for a caller that wants only keys and values,
// all prefixes together: it returns how many pairs were read, an iterator
// over them (prefix after prefix, each in key order) and the revision. No
// intermediate list is built: a large read costs one decoded response.
func (c *Client) ScanPrefixes(ctx context.Context, prefixes []string) (n int, pairs iter.Seq2[string, []byte], rev int64, err error) {
	resp, err := c.rangePrefixes(ctx, prefixes)
	if err != nil {
		return 0, nil, 0, err
	}
	for _, r := range resp.Responses {
		n += len(r.GetResponseRange().Kvs)
	}
	pairs = func(yield func(string, []byte) bool) {
		for _, r := range resp.Responses {
			for _, kv := range r.GetResponseRange().Kvs {
				if !yield(string(kv.Key), kv.Value) {
					return
				}
			}
		}
	}
	return n, pairs, resp.Header.Revision, nil
}

// rangePrefixes reads every key under each prefix, in key order, in one
// transaction: one response per prefix, all at one revision.
func (c *Client) rangePrefixes(ctx context.Context, prefixes []string) (*clientv3.TxnResponse, error) {
	ops := make([]clientv3.Op, len(prefixes))
	for i, p := range prefixes {
		ops[i] = clientv3.OpGet(p, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	}
	resp, err := c.cli.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return nil, fmt.Errorf("get prefixes %q: %w", prefixes, err)
	}
	return resp, nil
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

// ValueIs holds when key exists with exactly this value.
func ValueIs(key, value string) Cmp {
	return Cmp{clientv3.Compare(clientv3.Value(key), "=", value)}
}

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

// OpDeletePrefix deletes every key under prefix.
func OpDeletePrefix(prefix string) Op { return Op{clientv3.OpDelete(prefix, clientv3.WithPrefix())} }

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
