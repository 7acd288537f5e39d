package render

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.yaml.in/yaml/v2"

	"github.com/flotilla/flotilla/internal/store"
)

// Source is where keys come from: etcd, or a file for trying templates.
type Source interface {
	// List returns every key equal to or below each prefix (string prefix:
	// the runner filters), sorted by key without duplicates, and the
	// revision it was read at.
	List(ctx context.Context, prefixes []string) ([]Change, int64, error)
	// Watch streams changes of keys under prefix from revision fromRev. The
	// channel closes after a batch with Err set, or when ctx ends.
	Watch(ctx context.Context, prefix string, fromRev int64) Watcher
	// Ping reports whether the source answers.
	Ping(ctx context.Context) error
}

// Watcher is a running watch. Close is idempotent and waits for its goroutine.
type Watcher interface {
	C() <-chan Batch
	Close()
}

// Batch is a set of changes up to Rev. Resync asks for a full List (the file
// source says so on every change); Err ends the watch.
type Batch struct {
	Rev     int64
	Changes []Change
	Resync  bool
	Err     error
}

// Change is one key set or deleted.
type Change struct {
	Key, Value string
	Deleted    bool
}

// EtcdSource reads etcd through internal/store. It opens its client lazily and
// again after a failed open, so render starts (and waits) while etcd is down.
// Safe for concurrent use; Close it when done.
type EtcdSource struct {
	cfg store.Config
	o   EtcdSourceOptions
	mu  sync.Mutex
	c   *store.Client
	// dropped closes when c is dropped to find the endpoints again: its
	// watches end then.
	dropped chan struct{}
}

// EtcdSourceOptions tune an EtcdSource; the zero value is NewEtcdSource's.
type EtcdSourceOptions struct {
	// ReadTimeout bounds one full read of the keys (0: twice the dial
	// timeout).
	ReadTimeout time.Duration
	// Endpoints, when set, finds the endpoints before every connect (SRV
	// discovery): the source connects to what it returns, and after a
	// failed read or ping closes its client, so that the next use looks
	// the endpoints up again (a watch on the closed client ends, and the
	// runner resyncs through the new one).
	Endpoints func(ctx context.Context) ([]string, error)
}

var _ Source = (*EtcdSource)(nil)

// NewEtcdSource returns a source for cfg. It does not connect yet.
func NewEtcdSource(cfg store.Config) *EtcdSource { return &EtcdSource{cfg: cfg} }

// NewEtcdSourceWith is NewEtcdSource with options.
func NewEtcdSourceWith(cfg store.Config, o EtcdSourceOptions) *EtcdSource {
	return &EtcdSource{cfg: cfg, o: o}
}

func (s *EtcdSource) client(ctx context.Context) (*store.Client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c != nil {
		return s.c, nil
	}
	cfg := s.cfg
	if s.o.Endpoints != nil {
		eps, err := s.o.Endpoints(ctx)
		if err != nil {
			return nil, err
		}
		cfg.Endpoints = eps
	}
	c, err := store.Open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	s.c, s.dropped = c, make(chan struct{})
	return c, nil
}

// client returns the client and the channel closed when it is dropped.
func (s *EtcdSource) clientDropped(ctx context.Context) (*store.Client, <-chan struct{}, error) {
	c, err := s.client(ctx)
	if err != nil {
		return nil, nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c != c { // dropped meanwhile
		d := make(chan struct{})
		close(d)
		return c, d, nil
	}
	return c, s.dropped, nil
}

// failed drops c after an error when the endpoints are discovered, so that
// the next use discovers them again.
func (s *EtcdSource) failed(c *store.Client) {
	if s.o.Endpoints == nil {
		return
	}
	s.mu.Lock()
	drop := s.c == c
	if drop {
		s.c = nil
		close(s.dropped)
	}
	s.mu.Unlock()
	if drop {
		c.Close() // a watch on it ends
	}
}

// List reads the prefixes at one revision, within the read timeout.
func (s *EtcdSource) List(ctx context.Context, prefixes []string) ([]Change, int64, error) {
	c, err := s.client(ctx)
	if err != nil {
		return nil, 0, err
	}
	limit := s.o.ReadTimeout
	if limit <= 0 {
		limit = 2 * s.cfg.DialTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	n, pairs, rev, err := c.ScanPrefixes(ctx, prefixes)
	if err != nil {
		s.failed(c)
		return nil, 0, err
	}
	out := make([]Change, 0, n)
	for k, v := range pairs {
		out = append(out, Change{Key: k, Value: string(v)})
	}
	return sortChanges(out), rev, nil
}

// sortChanges sorts by key and drops duplicates (overlapping prefixes).
func sortChanges(cs []Change) []Change {
	if !sort.SliceIsSorted(cs, func(i, j int) bool { return cs[i].Key < cs[j].Key }) {
		sort.SliceStable(cs, func(i, j int) bool { return cs[i].Key < cs[j].Key })
	}
	out := cs[:0]
	for i, c := range cs {
		if i > 0 && c.Key == cs[i-1].Key {
			continue
		}
		out = append(out, c)
	}
	return out
}

// Ping asks etcd for nothing.
func (s *EtcdSource) Ping(ctx context.Context) error {
	c, err := s.client(ctx)
	if err != nil {
		return err
	}
	if err := c.Ping(ctx); err != nil {
		s.failed(c)
		return err
	}
	return nil
}

// Watch watches prefix through one store watch (which resumes by itself
// after a disconnect and ends on compaction).
func (s *EtcdSource) Watch(ctx context.Context, prefix string, fromRev int64) Watcher {
	c, dropped, err := s.clientDropped(ctx)
	if err != nil {
		ch := make(chan Batch, 1)
		ch <- Batch{Err: err}
		close(ch)
		return &chanWatcher{ch: ch}
	}
	ctx, cancel := context.WithCancel(ctx)
	w := c.WatchPrefix(ctx, prefix, fromRev)
	out := make(chan Batch)
	cw := &chanWatcher{ch: out, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(cw.done)
		defer close(out)
		defer w.Close()
		for {
			var wb store.WatchBatch
			var ok bool
			select {
			case wb, ok = <-w.C:
			case <-dropped:
				wb, ok = store.WatchBatch{Err: errors.New("etcd did not answer: finding its endpoints again")}, true
			}
			if !ok {
				return
			}
			b := Batch{Rev: wb.Rev, Err: wb.Err}
			for _, ev := range wb.Events {
				b.Changes = append(b.Changes, Change{Key: ev.KV.Key, Value: string(ev.KV.Value), Deleted: ev.Type == store.EventDelete})
			}
			select {
			case out <- b:
			case <-ctx.Done():
				return
			}
			if b.Err != nil {
				return
			}
		}
	}()
	return cw
}

// Close closes the client, if open.
func (s *EtcdSource) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c == nil {
		return nil
	}
	err := s.c.Close()
	s.c = nil
	return err
}

type chanWatcher struct {
	ch     chan Batch
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

func (w *chanWatcher) C() <-chan Batch { return w.ch }

func (w *chanWatcher) Close() {
	w.once.Do(func() {
		if w.cancel != nil {
			w.cancel()
			<-w.done
		}
	})
}

// FilePollInterval is how often a FileSource watch also compares its files
// with what it last read, for changes inotify does not report.
const FilePollInterval = time.Second

// FileSource serves keys from YAML or JSON files (confd's file backend):
// nested maps become paths ("/a/b"), list items their index ("/a/0").
// Its watch asks for a resync whenever a file changes.
type FileSource struct {
	Files []string
	rev   int64
	mu    sync.Mutex
	// listed is each file as List saw it (taken before reading): a watch
	// started later compares, so that a change between List and the
	// watch's start is not lost.
	listed map[string]fileStamp
}

// fileStamp identifies a version of a file: a rewrite changes its size or
// modification time, a rename over it its inode.
type fileStamp struct {
	size  int64
	mtime int64
	ino   uint64
	ok    bool
}

func stampOf(name string) fileStamp {
	st, err := os.Stat(name)
	if err != nil {
		return fileStamp{}
	}
	fs := fileStamp{size: st.Size(), mtime: st.ModTime().UnixNano(), ok: true}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		fs.ino = sys.Ino
	}
	return fs
}

var _ Source = (*FileSource)(nil)

// List reads every file.
func (s *FileSource) List(_ context.Context, _ []string) ([]Change, int64, error) {
	out := map[string]string{}
	stamps := make(map[string]fileStamp, len(s.Files))
	for _, f := range s.Files {
		stamps[f] = stampOf(f)
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, 0, fmt.Errorf("file backend: %w", err)
		}
		var v any
		if err := yaml.Unmarshal(b, &v); err != nil {
			return nil, 0, fmt.Errorf("file backend %s: %w", f, err)
		}
		if err := flatten(out, "", v); err != nil {
			return nil, 0, fmt.Errorf("file backend %s: %w", f, err)
		}
	}
	s.mu.Lock()
	s.rev++
	rev := s.rev
	s.listed = stamps
	s.mu.Unlock()
	cs := make([]Change, 0, len(out))
	for k, v := range out {
		cs = append(cs, Change{Key: k, Value: v})
	}
	return sortChanges(cs), rev, nil
}

func flatten(out map[string]string, p string, v any) error {
	switch x := v.(type) {
	case map[any]any:
		for k, vv := range x {
			if err := flatten(out, p+"/"+fmt.Sprint(k), vv); err != nil {
				return err
			}
		}
	case map[string]any:
		for k, vv := range x {
			if err := flatten(out, p+"/"+k, vv); err != nil {
				return err
			}
		}
	case []any:
		for i, vv := range x {
			if err := flatten(out, p+"/"+strconv.Itoa(i), vv); err != nil {
				return err
			}
		}
	case nil:
		if p != "" {
			out[p] = ""
		}
	default:
		if p == "" {
			return errors.New("want a map at the top")
		}
		out[p] = fmt.Sprint(x)
	}
	return nil
}

// Ping always succeeds.
func (s *FileSource) Ping(context.Context) error { return nil }

// Watch watches the files' directories and sends a Resync batch when one of
// the files changes.
func (s *FileSource) Watch(ctx context.Context, _ string, _ int64) Watcher {
	fw, err := fsnotify.NewWatcher()
	if err == nil {
		dirs := map[string]bool{}
		for _, f := range s.Files {
			dirs[filepath.Dir(f)] = true
		}
		names := make([]string, 0, len(dirs))
		for d := range dirs {
			names = append(names, d)
		}
		sort.Strings(names)
		for _, d := range names {
			if err = fw.Add(d); err != nil {
				fw.Close()
				break
			}
		}
	}
	if err != nil {
		ch := make(chan Batch, 1)
		ch <- Batch{Err: fmt.Errorf("file backend: watch: %w", err)}
		close(ch)
		return &chanWatcher{ch: ch}
	}
	files := map[string]bool{}
	for _, f := range s.Files {
		files[filepath.Clean(f)] = true
	}
	// What List saw: a file that differs from it now (changed between List
	// and this watch) or later (an event inotify does not give, such as a
	// write to the target of a symlink in another directory) gets a resync
	// too, found by comparing stamps at the start and every FilePollInterval.
	s.mu.Lock()
	last := make(map[string]fileStamp, len(s.Files))
	for _, f := range s.Files {
		last[f] = s.listed[f]
	}
	s.mu.Unlock()
	changed := func() bool {
		c := false
		for _, f := range s.Files {
			if st := stampOf(f); st != last[f] {
				last[f], c = st, true
			}
		}
		return c
	}
	out := make(chan Batch)
	ctx, cancel := context.WithCancel(ctx)
	cw := &chanWatcher{ch: out, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(cw.done)
		defer close(out)
		defer fw.Close()
		tick := time.NewTicker(FilePollInterval)
		defer tick.Stop()
		resync := changed()
		for {
			if resync {
				select {
				case out <- Batch{Resync: true}:
				case <-ctx.Done():
					return
				}
			}
			resync = false
			select {
			case <-ctx.Done():
				return
			case ev, ok := <-fw.Events:
				if !ok {
					return
				}
				resync = files[filepath.Clean(ev.Name)] && !strings.HasPrefix(filepath.Base(ev.Name), ".")
			case <-tick.C:
				resync = changed()
			case <-fw.Errors:
			}
		}
	}()
	return cw
}
