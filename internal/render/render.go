// Package render is the runner behind cmd/render: it keeps every resource of
// a confd directory rendered from one shared watch of the key source.
//
// One goroutine owns all state: it applies watch batches to a per-resource
// in-memory snapshot (only resources whose keys changed become dirty), renders
// a dirty resource once its quiescence window closes, retries failures with
// backoff, defers throttled reloads, and reloads its configuration when
// conf.d or templates change (fsnotify) or on request (SIGHUP).
package render

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	"golang.org/x/sync/errgroup"

	"github.com/flotilla/flotilla/resources"
	"github.com/flotilla/flotilla/template"
)

// Mode says how Run keeps files current.
type Mode int

const (
	// Watch follows the source's changes (-watch).
	Watch Mode = iota
	// Poll lists the source every Interval (confd without -watch).
	Poll
)

// Config is what the runner needs. Zero durations take the defaults.
type Config struct {
	// ConfDir holds conf.d/ and templates/.
	ConfDir string
	// Prefix is the global key prefix.
	Prefix string
	// Source gives the keys.
	Source Source
	// Mode and Interval: watch, or poll every Interval (default 10m).
	Mode     Mode
	Interval time.Duration
	// Wait is the global quiescence window (-wait); a resource's own wins.
	Wait resources.Wait
	// Noop prints diffs to Diff and writes nothing; SyncOnly writes without
	// check/reload; KeepStageFile keeps staged files; Strict makes unknown
	// keys in resource files errors.
	Noop, SyncOnly, KeepStageFile, Strict bool
	Diff                                  io.Writer
	// DiffContext, DiffColor and DiffNamesOnly shape what Noop prints (see
	// resources.ApplyOptions).
	DiffContext              int
	DiffColor, DiffNamesOnly bool
	// Only, when not empty, names the resources to render (conf.d file
	// names, with or without .toml); the others are not loaded. A name
	// that matches no file is an error.
	Only []string
	// FailFast makes Onetime stop at the first resource that fails: the
	// resources after it are neither rendered nor reloaded.
	FailFast bool
	// MaxAttempts bounds the attempts (0: no bound) at reading the keys in
	// Onetime and CheckConfig (backing off RetryMin..RetryMax between
	// them; 0 means one attempt there), and at rendering or reloading one
	// resource in Run: after MaxAttempts failures in a row the resource
	// waits for its next change instead of retrying.
	MaxAttempts int
	// WatchErrorBackoff is the wait after a watch fails before the keys are
	// read again (0: at once).
	WatchErrorBackoff time.Duration
	// ShutdownTimeout bounds how long Run, once ctx ends, waits for running
	// checks and reloads (0: as long as their own timeouts); Run returns an
	// error when some were still running.
	ShutdownTimeout time.Duration
	// CheckTimeout and ReloadTimeout are the defaults for resources that set
	// none (zero: resources.DefaultCheckTimeout, DefaultReloadTimeout).
	CheckTimeout, ReloadTimeout time.Duration
	// RetryMin and RetryMax bound the backoff after a failure (1s, 1m).
	RetryMin, RetryMax time.Duration
	// PingInterval is how often the source's health is probed (5s).
	PingInterval time.Duration
	// ConfigDebounce gathers file events before a config reload (100ms).
	ConfigDebounce time.Duration
	// NoConfigWatch turns off fsnotify on conf.d and templates.
	NoConfigWatch bool
	// Reload requests a config reload (SIGHUP).
	Reload <-chan struct{}
	// Notify receives sd_notify states ("READY=1", …); nil drops them.
	Notify func(state string)
	// WatchdogInterval sends WATCHDOG=1 this often from the loop (0: never).
	WatchdogInterval time.Duration
	// Changed, when set, is called on the runner's goroutine after a render
	// that changed a destination file (not with Noop); it must not block.
	Changed func(resource string)
	// Logger, Metrics: nil discards.
	Logger  *slog.Logger
	Metrics *Metrics
	// Applied, if set, receives every resource's applied revision whenever
	// one changes (see reportApplied), from the loop: it must not block.
	Applied func([]Applied)
}

func (c *Config) defaults() {
	if c.Interval <= 0 {
		c.Interval = 10 * time.Minute
	}
	if c.RetryMin <= 0 {
		c.RetryMin = time.Second
	}
	if c.RetryMax <= 0 {
		c.RetryMax = time.Minute
	}
	if c.RetryMax < c.RetryMin {
		c.RetryMax = c.RetryMin
	}
	if c.PingInterval <= 0 {
		c.PingInterval = 5 * time.Second
	}
	if c.ConfigDebounce <= 0 {
		c.ConfigDebounce = 100 * time.Millisecond
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Notify == nil {
		c.Notify = func(string) {}
	}
}

func (c *Config) confDir() string      { return filepath.Join(c.ConfDir, "conf.d") }
func (c *Config) templatesDir() string { return filepath.Join(c.ConfDir, "templates") }

// configPath reports whether a config watch event on name concerns render's
// configuration: conf.d and templates themselves (created, removed, renamed)
// and anything below them. Other files in the confdir (a log, a file a
// reload_cmd writes, a rendered file) are none of its business: reacting to
// them would re-render for nothing, or forever if render's own writes land
// there.
func (c *Config) configPath(name string) bool {
	name = filepath.Clean(name)
	for _, d := range []string{c.confDir(), c.templatesDir()} {
		d = filepath.Clean(d)
		if name == d || strings.HasPrefix(name, d+string(filepath.Separator)) {
			return true
		}
	}
	return false
}

// entry is one resource's state; owned by the loop goroutine.
type entry struct {
	res      *resources.Resource
	tmpl     *template.Template
	tmplText []byte
	store    *template.Store // nil until the first resync

	dirty        bool
	first, last  time.Time // first and last change not yet rendered
	since        time.Time // arrival of the oldest unrendered watch batch
	failures     int
	retryAt      time.Time
	reloadWanted bool
	reloadSeq    int       // counts the renders that wanted a reload
	reloadKey    string    // the reload it shares (resources.Resource.ReloadKey)
	rendering    bool      // a render job of it is running
	reloadSince  time.Time // when the pending reload was first wanted
	reloadAt     time.Time
	reloadFails  int
	lastReload   time.Time
	rendered     bool  // attempted at least once
	gaveUp       bool  // MaxAttempts failures in a row: waits for a change
	applied      int64 // revision installed and reloaded (see reportApplied)
	seen         int64 // revision of the last change under its keys, or of the last full read
	// successor replaced this entry when its resource file changed; a job
	// of this entry still running hands its pending reload over to it.
	successor *entry
}

type runner struct {
	cfg     Config
	log     *slog.Logger
	entries map[string]*entry // by resource file path
	byName  []*entry          // sorted's result, until entries change
	// reloadCtx runs reloads: it outlives the loop's context (a reload that
	// started is let finish on shutdown) until ShutdownTimeout kills them.
	reloadCtx context.Context
	rev       int64
	// lastApplied is what cfg.Applied last received.
	lastApplied []Applied
	// now is the runner's clock (time.Now; tests set their own).
	now func() time.Time
}

func newRunner(cfg Config) *runner {
	cfg.defaults()
	return &runner{cfg: cfg, log: cfg.Logger, entries: map[string]*entry{}, now: time.Now}
}

// loadConfig reads conf.d and templates. A file that fails keeps its previous
// good entry, if any. It reports whether any entry changed, and the errors.
func (r *runner) loadConfig() (changed bool, errs []error) {
	names, err := resources.Files(r.cfg.confDir())
	if err != nil {
		return false, []error{err}
	}
	if _, err := os.Stat(r.cfg.confDir()); err != nil {
		errs = append(errs, fmt.Errorf("confdir: %w", err))
	}
	opts := resources.LoadOptions{
		Prefix: r.cfg.Prefix, TemplatesDir: r.cfg.templatesDir(),
		Strict: r.cfg.Strict, KeepStageFile: r.cfg.KeepStageFile,
		CheckTimeout: r.cfg.CheckTimeout, ReloadTimeout: r.cfg.ReloadTimeout,
	}
	if len(r.cfg.Only) > 0 {
		var only []string
		only, errs = r.only(names, errs)
		names = only
	}
	next := make(map[string]*entry, len(names))
	for _, n := range names {
		old := r.entries[n]
		e, err := loadEntry(n, opts)
		if err != nil {
			errs = append(errs, err)
			if old != nil {
				r.log.Error("resource broken; keeping its last good version", "resource", filepath.Base(n), "err", err)
				next[n] = old
			} else {
				r.log.Error("resource skipped", "resource", filepath.Base(n), "err", err)
			}
			continue
		}
		for _, w := range e.res.Warnings {
			r.log.Warn(w)
		}
		if old != nil && old.res.Equal(e.res) && string(old.tmplText) == string(e.tmplText) {
			next[n] = old
			continue
		}
		if old != nil {
			e.inherit(old)
		}
		changed = true
		next[n] = e
	}
	if len(next) != len(r.entries) {
		changed = true
	}
	r.entries, r.byName = next, nil
	return changed, errs
}

// only keeps the names Config.Only asks for; a name asked for that has no
// file is an error.
func (r *runner) only(names []string, errs []error) ([]string, []error) {
	byName := map[string]string{}
	for _, n := range names {
		base := filepath.Base(n)
		byName[base], byName[strings.TrimSuffix(base, ".toml")] = n, n
	}
	var out []string
	seen := map[string]bool{}
	for _, want := range r.cfg.Only {
		n, ok := byName[want]
		if !ok {
			errs = append(errs, fmt.Errorf("resource %q: no such file in %s", want, r.cfg.confDir()))
			continue
		}
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	return out, errs
}

// inherit takes over what old owes the service: the file in place is what
// old rendered, so a reload old was waiting to run (deferred by
// min_reload_interval, or retrying) must still run, and the interval counts
// from old's last reload.
func (e *entry) inherit(old *entry) {
	old.successor = e
	e.lastReload = old.lastReload
	e.takeReload(old)
}

// takeReload moves old's pending reload, if any, to e.
func (e *entry) takeReload(old *entry) {
	if !old.reloadWanted {
		return
	}
	if !e.reloadWanted || old.reloadSince.Before(e.reloadSince) {
		e.reloadSince = old.reloadSince
	}
	if !e.reloadWanted || old.reloadAt.Before(e.reloadAt) {
		e.reloadAt = old.reloadAt
	}
	e.reloadWanted, e.reloadFails = true, max(e.reloadFails, old.reloadFails)
	old.reloadWanted = false
}

// current follows e's successors to the entry that stands for its resource now.
func (e *entry) current() *entry {
	for e.successor != nil {
		e = e.successor
	}
	return e
}

func loadEntry(file string, opts resources.LoadOptions) (*entry, error) {
	res, err := resources.Load(file, opts)
	if err != nil {
		return nil, err
	}
	text, err := os.ReadFile(res.Src)
	if err != nil {
		return nil, fmt.Errorf("resource %s: template: %w", file, err)
	}
	t, err := template.Parse(filepath.Base(res.Src), text, template.Options{Delims: res.Delims, Dir: opts.TemplatesDir, MissingKey: missingKey(res.MissingKey)})
	if err != nil {
		return nil, fmt.Errorf("resource %s: %w", file, err)
	}
	if st, err := os.Stat(res.Dest); err == nil {
		t.SizeHint(int(st.Size())) // the next output is likely about as large
	}
	return &entry{res: res, tmpl: t, tmplText: text, reloadKey: res.ReloadKey()}, nil
}

// sorted returns the entries by file name; the list is kept until the
// configuration changes (the loop asks for it on every event).
func (r *runner) sorted() []*entry {
	if r.byName != nil {
		return r.byName
	}
	names := make([]string, 0, len(r.entries))
	for n := range r.entries {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]*entry, len(names))
	for i, n := range names {
		out[i] = r.entries[n]
	}
	r.byName = out
	return out
}

// prefixes returns every resource key (deduplicated) and the longest common
// string prefix of them, which the one shared watch follows.
func (r *runner) prefixes() (keys []string, common string) {
	seen := map[string]bool{}
	for _, e := range r.entries {
		for _, k := range e.res.Keys {
			if !seen[k] {
				seen[k] = true
				keys = append(keys, k)
			}
		}
	}
	sort.Strings(keys)
	if len(keys) == 0 {
		return nil, ""
	}
	common = keys[0]
	for _, k := range keys[1:] {
		i := 0
		for i < len(common) && i < len(k) && common[i] == k[i] {
			i++
		}
		common = common[:i]
	}
	return keys, common
}

// resync lists every key and rebuilds each resource's snapshot; a resource
// whose snapshot differs (or that is new) becomes dirty.
func (r *runner) resync(ctx context.Context, now time.Time) error {
	keys, _ := r.prefixes()
	if len(keys) == 0 {
		return nil
	}
	start := r.now()
	kvs, rev, err := r.cfg.Source.List(ctx, keys)
	if err != nil {
		return err
	}
	r.log.Debug("keys read", "keys", len(kvs), "rev", rev, "took", r.now().Sub(start))
	r.rev = rev
	r.cfg.Metrics.setKeys(len(kvs))
	for _, e := range r.entries {
		e.seen = rev
		// kvs is sorted: the B-tree fills from the right, cheaply. A
		// store rebuilt from an earlier one keeps its getvs indexes.
		var st *template.Store
		same := e.store != nil
		if same {
			st = e.store.Fresh()
		} else {
			st = template.NewStore(nil)
		}
		for _, i := range matching(kvs, e.res.Keys) {
			kv := kvs[i]
			rel := e.res.Relative(kv.Key)
			st.Set(rel, kv.Value)
			if same {
				if v, ok := e.store.Get(rel); !ok || v != kv.Value {
					same = false
				}
			}
		}
		if same && e.store.Len() == st.Len() {
			continue
		}
		e.store = st
		r.markDirty(e, now, time.Time{})
	}
	return nil
}

// matching returns the indexes, in order, of the changes of kvs (sorted by
// key) under any of keys: a binary search per key, then its range, so that
// many resources over many keys cost what they read, not resources × keys.
func matching(kvs []Change, keys []string) []int {
	var out []int
	for _, key := range keys {
		lo := sort.Search(len(kvs), func(i int) bool { return kvs[i].Key >= key })
		for i := lo; i < len(kvs) && strings.HasPrefix(kvs[i].Key, key); i++ {
			if resources.MatchKey(key, kvs[i].Key) {
				out = append(out, i)
			}
		}
	}
	if len(keys) > 1 { // overlapping or unordered keys
		sort.Ints(out)
		out = slices.Compact(out)
	}
	return out
}

func (r *runner) markDirty(e *entry, now, arrived time.Time) {
	if e.gaveUp { // a new change: a new budget of attempts
		e.gaveUp, e.failures = false, 0
	}
	if !e.dirty {
		e.dirty = true
		e.first = now
		e.since = arrived
	}
	e.last = now
}

// apply applies one watch batch to the snapshots.
func (r *runner) apply(b Batch, now time.Time) {
	if b.Rev > r.rev {
		r.rev = b.Rev
	}
	for _, c := range b.Changes {
		for _, e := range r.entries {
			if e.store == nil || !e.res.Match(c.Key) {
				continue
			}
			e.seen = max(e.seen, b.Rev)
			rel := e.res.Relative(c.Key)
			old, had := e.store.Get(rel)
			if c.Deleted {
				if !had {
					continue
				}
				e.store.Delete(rel)
			} else {
				if had && old == c.Value {
					continue
				}
				e.store.Set(rel, c.Value)
			}
			r.markDirty(e, now, now)
		}
	}
}

func (r *runner) wait(e *entry) resources.Wait {
	if !e.res.Wait.IsZero() {
		return e.res.Wait
	}
	return r.cfg.Wait
}

// due returns when e next needs the loop (zero: nothing pending).
func (r *runner) due(e *entry) time.Time {
	var t time.Time
	if e.dirty {
		t = r.renderDue(e)
	} else if e.failures > 0 && !e.gaveUp {
		t = e.retryAt
	}
	if e.reloadWanted && (t.IsZero() || r.reloadDue(e).Before(t)) {
		t = r.reloadDue(e)
	}
	return t
}

func (r *runner) backoff(n int) time.Duration {
	d := r.cfg.RetryMin
	for i := 1; i < n && d < r.cfg.RetryMax; i++ {
		d *= 2
	}
	return min(d, r.cfg.RetryMax)
}

// job is one render (or reload) of one resource, run off the loop so that a
// slow check or reload of one resource never holds back another.
type job struct {
	e      *entry
	reload bool
	// group is, for a reload, every resource it stands for (e among them)
	// with the reloadSeq each had when the reload started.
	group map[*entry]int
	store *template.Store // the snapshot to render (a Clone)
	since time.Time
}

// result is a finished job.
type result struct {
	job
	changed bool
	err     error
}

// exec runs j; it touches no runner state, so it may run on any goroutine.
func (r *runner) exec(ctx context.Context, j job) result {
	log := r.log.With("resource", j.e.res.Name)
	if j.reload {
		// A reload that has started is let finish on shutdown: only its
		// timeout stops it.
		rctx := r.reloadCtx
		if rctx == nil {
			rctx = context.WithoutCancel(ctx)
		}
		return result{job: j, err: j.e.res.Reload(rctx, log)}
	}
	opts := resources.ApplyOptions{
		Noop: r.cfg.Noop, Diff: r.cfg.Diff, SyncOnly: r.cfg.SyncOnly, Logger: log,
		DiffContext: r.cfg.DiffContext, DiffColor: r.cfg.DiffColor, DiffNamesOnly: r.cfg.DiffNamesOnly,
	}
	if j.e.res.Per != resources.PerNone {
		return r.execEach(ctx, j, log, opts)
	}
	start := r.now()
	content, err := j.e.tmpl.Render(j.store)
	if err != nil {
		return result{job: j, err: fmt.Errorf("render %s: %w", j.e.res.Name, err)}
	}
	log.Debug("template executed", "bytes", len(content), "took", r.now().Sub(start))
	changed, err := j.e.res.Apply(ctx, content, opts)
	j.e.tmpl.Recycle(content) // Apply keeps nothing of it
	return result{job: j, changed: changed, err: err}
}

// renderJob takes e's pending changes into a job.
func (r *runner) renderJob(e *entry) job {
	j := job{e: e, store: e.store.Clone(), since: e.since}
	e.dirty, e.rendering = false, true
	return j
}

// finish applies a job's outcome to its entry (on the loop goroutine). A job
// of an entry replaced meanwhile (its resource file changed) still counts:
// what it rendered is in place, so the reload it calls for carries over to
// the entry that replaced it, and so does the time of a reload it ran.
func (r *runner) finish(ctx context.Context, res result) {
	r.finishEntry(ctx, res)
	e := res.e
	if e.successor == nil {
		return
	}
	// A reload that ran may have been one cur inherited: cur runs it once
	// more (after min_reload_interval), as one reload too many is harmless
	// and one too few leaves the service on an old file.
	cur := e.current()
	if e.lastReload.After(cur.lastReload) {
		cur.lastReload = e.lastReload
	}
	cur.takeReload(e)
}

// finishReload applies a reload's outcome to m, one of the resources it
// stood for; seq is m.reloadSeq when it started: a render of m since then
// wants a reload of its own still.
func (r *runner) finishReload(m *entry, seq int, err error, now time.Time) {
	name := m.res.Name
	m.lastReload = now
	r.cfg.Metrics.reloaded(name, err)
	if err != nil {
		m.reloadFails++
		if n := r.cfg.MaxAttempts; n > 0 && m.reloadFails >= n {
			m.reloadWanted, m.reloadFails = false, 0
			r.log.Error("reload failed; giving up until the next change", "resource", name, "attempts", n, "err", err)
			return
		}
		wait := r.backoff(m.reloadFails)
		m.reloadAt = now.Add(wait)
		r.log.Error("reload failed; will retry", "resource", name, "retry_in", wait, "err", err)
		return
	}
	m.reloadFails = 0
	if m.reloadSeq == seq {
		m.reloadWanted = false
	}
	r.log.Info("reloaded", "resource", name)
}

func (r *runner) finishEntry(ctx context.Context, res result) {
	e, name, now := res.e, res.e.res.Name, r.now()
	if res.reload {
		group := res.group
		if group == nil {
			group = map[*entry]int{e: e.reloadSeq}
		}
		for m, seq := range group {
			r.finishReload(m, seq, res.err, now)
		}
		return
	}
	e.rendering = false
	e.rendered = true
	if res.err == nil {
		e.failures = 0
		r.cfg.Metrics.rendered(name, res.changed, now)
		if !res.since.IsZero() {
			r.cfg.Metrics.lag(now.Sub(res.since))
		}
		if !res.changed {
			r.log.Debug("unchanged", "resource", name, "rev", r.rev)
			return
		}
		r.log.Info("rendered", "resource", name, "dest", e.res.Dest, "rev", r.rev, "noop", r.cfg.Noop)
		r.onChange(e, now)
		return
	}
	if res.changed { // some outputs of a resource with several are in place
		r.onChange(e, now)
	}
	if ctx.Err() != nil {
		e.dirty = true // not a failure of the resource: try again next run
		return
	}
	e.failures++
	if m := r.cfg.MaxAttempts; m > 0 && e.failures >= m {
		e.gaveUp = true
		r.cfg.Metrics.failed(name)
		r.log.Error("render failed; giving up until the next change", "resource", name, "attempts", m, "err", res.err)
		return
	}
	wait := r.backoff(e.failures)
	e.retryAt = now.Add(wait)
	r.cfg.Metrics.failed(name)
	r.log.Error("render failed; will retry", "resource", name, "retry_in", wait, "err", res.err)
}

// onChange records that e's file (or some of its outputs) changed: the
// reload it calls for.
func (r *runner) onChange(e *entry, now time.Time) {
	name := e.res.Name
	if r.cfg.Changed != nil && !r.cfg.Noop {
		r.cfg.Changed(name)
	}
	if r.cfg.Noop || r.cfg.SyncOnly || e.res.ReloadCmd == "" {
		return
	}
	if !e.reloadWanted {
		e.reloadSince = now
	}
	e.reloadWanted, e.reloadFails = true, 0
	e.reloadSeq++
	e.reloadAt = now
	if mri := e.res.MinReloadInterval; mri > 0 && !e.lastReload.IsZero() && now.Sub(e.lastReload) < mri {
		e.reloadAt = e.lastReload.Add(mri)
		r.log.Info("reload deferred by min_reload_interval", "resource", name, "until", e.reloadAt.Format(time.RFC3339Nano))
	}
}

// workers runs jobs off the loop: at most one per destination at a time.
type workers struct {
	results   chan result
	busy      map[string]bool // by dest
	reloading map[string]bool // by reload key
	inflight  int
}

func newWorkers() *workers {
	return &workers{results: make(chan result), busy: map[string]bool{}, reloading: map[string]bool{}}
}

func (w *workers) start(ctx context.Context, r *runner, j job) {
	w.busy[j.e.res.Dest] = true
	if j.reload {
		w.reloading[j.e.reloadKey] = true
	}
	w.inflight++
	go func() { w.results <- r.exec(ctx, j) }()
}

func (w *workers) done(res result) {
	delete(w.busy, res.e.res.Dest)
	if res.reload {
		delete(w.reloading, res.e.reloadKey)
	}
	w.inflight--
}

// process starts the renders that are due, takes in what the watch queued
// meanwhile (drain), then starts the reloads that are due. A resource that
// changed again renders again before it reloads, so a burst of changes costs
// one reload (at most one per maxReloadHold while changes keep coming).
func (r *runner) process(ctx context.Context, w *workers, drain func()) {
	for _, e := range r.sorted() {
		now := r.now()
		d := r.due(e)
		if d.IsZero() || d.After(now) || ctx.Err() != nil || w.busy[e.res.Dest] {
			continue
		}
		if e.dirty || (e.failures > 0 && !e.gaveUp && !e.retryAt.After(now)) {
			w.start(ctx, r, r.renderJob(e))
		}
	}
	drain()
	started := map[string]bool{}
	for _, e := range r.sorted() {
		if ctx.Err() != nil {
			return
		}
		if !e.reloadWanted || started[e.reloadKey] || w.reloading[e.reloadKey] || w.busy[e.res.Dest] || r.reloadDue(e).After(r.now()) {
			continue
		}
		// One reload for every resource that shares it and wants it.
		group := map[*entry]int{}
		for _, m := range r.entries {
			if m.reloadWanted && m.reloadKey == e.reloadKey {
				group[m] = m.reloadSeq
			}
		}
		started[e.reloadKey] = true
		w.start(ctx, r, job{e: e, reload: true, group: group})
	}
}

// renderDue is when dirty e's quiescence window closes.
func (r *runner) renderDue(e *entry) time.Time {
	w := r.wait(e)
	t := e.last.Add(w.Min)
	if lim := e.first.Add(w.Max); w.Max > 0 && lim.Before(t) {
		t = lim
	}
	return t
}

// groupHold is how long e's reload waits for the other resources sharing
// it: while one has changes not yet rendered, until its quiescence window
// closes, and while one renders; never longer than e's own window (at least
// maxReloadHold) after the reload was first wanted. Zero: nothing to wait for.
func (r *runner) groupHold(e *entry) time.Time {
	limit := e.reloadSince.Add(max(maxReloadHold, r.wait(e).Max))
	var hold time.Time
	for _, m := range r.entries {
		if m == e || m.reloadKey != e.reloadKey {
			continue
		}
		switch {
		case m.rendering:
			hold = limit
		case m.dirty:
			if t := r.renderDue(m).Add(groupSlack); t.After(hold) {
				hold = t
			}
		}
	}
	if hold.After(limit) {
		hold = limit
	}
	return hold
}

// groupSlack is the margin a shared reload leaves a resource whose window
// has closed to start its render (the loop starts it on that same pass).
const groupSlack = 10 * time.Millisecond

// maxReloadHold bounds how long changes that keep coming hold a reload back.
const maxReloadHold = time.Second

// reloadDue is when e's wanted reload runs: at reloadAt, or, while e has
// changes not yet rendered, once those are rendered (at most maxReloadHold
// after it was first wanted).
func (r *runner) reloadDue(e *entry) time.Time {
	t := e.reloadAt
	if e.dirty {
		if hold := e.reloadSince.Add(maxReloadHold); hold.After(t) {
			t = hold
		}
	}
	if hold := r.groupHold(e); hold.After(t) {
		t = hold
	}
	return t
}

// Onetime renders every resource once (no quiescence, no throttling) and
// returns an error naming each resource that failed.
func Onetime(ctx context.Context, cfg Config) error {
	r := newRunner(cfg)
	_, errs := r.loadConfig()
	if len(errs) > 0 && r.cfg.FailFast {
		return errors.Join(errs...)
	}
	if len(r.entries) > 0 {
		if err := r.resyncAttempts(ctx); err != nil {
			return errors.Join(append(errs, fmt.Errorf("read keys: %w", err))...)
		}
	}
	entries := r.sorted()
	var results []result
	if r.cfg.FailFast {
		results = make([]result, 0, len(entries))
	} else {
		results = r.execAll(ctx, entries)
	}
	var failed error // fail-fast: the failure that stopped the renders
	for i, e := range entries {
		var res result
		if r.cfg.FailFast { // one at a time, stopping at the first failure
			res = r.exec(ctx, r.renderJob(e))
		} else {
			res = results[i]
		}
		r.finish(ctx, res)
		if e.failures > 0 && r.cfg.FailFast {
			failed = r.lastErr(e)
			break
		}
	}
	// One reload per reload shared (same reload_cmd or reload_group),
	// after every render.
	done := map[string]error{}
	for _, e := range entries {
		if !e.reloadWanted {
			continue
		}
		err, ran := done[e.reloadKey]
		if !ran {
			err = e.res.Reload(ctx, r.log.With("resource", e.res.Name))
			done[e.reloadKey] = err
			if err != nil {
				errs = append(errs, err)
			}
		}
		r.cfg.Metrics.reloaded(e.res.Name, err)
		if err != nil && r.cfg.FailFast {
			return errors.Join(errs...)
		}
	}
	if failed != nil {
		return errors.Join(append(errs, failed)...)
	}
	for _, e := range r.sorted() {
		if e.failures > 0 {
			errs = append(errs, r.lastErr(e))
		}
	}
	return errors.Join(errs...)
}

// onetimeParallel bounds the renders Onetime runs at once: most of a
// render's time is waiting for the disk (fsync of the staged file and of its
// directory), which overlaps well.
const onetimeParallel = 8

// execAll renders every entry off the loop, several at a time, and returns
// the results in entries' order. Entries with the same destination render
// one after the other, in order, as the watch does.
func (r *runner) execAll(ctx context.Context, entries []*entry) []result {
	results := make([]result, len(entries))
	jobs := make([]job, len(entries))
	for i, e := range entries {
		jobs[i] = r.renderJob(e)
	}
	byDest := map[string][]int{}
	var dests []string
	for i, e := range entries {
		if _, ok := byDest[e.res.Dest]; !ok {
			dests = append(dests, e.res.Dest)
		}
		byDest[e.res.Dest] = append(byDest[e.res.Dest], i)
	}
	var g errgroup.Group
	g.SetLimit(onetimeParallel)
	for _, d := range dests {
		g.Go(func() error {
			for _, i := range byDest[d] {
				results[i] = r.exec(ctx, jobs[i])
			}
			return nil
		})
	}
	_ = g.Wait()
	return results
}

// resyncAttempts reads the keys, up to MaxAttempts times (at least once),
// backing off between attempts.
func (r *runner) resyncAttempts(ctx context.Context) error {
	for n := 1; ; n++ {
		err := r.resync(ctx, r.now())
		if err == nil || n >= r.cfg.MaxAttempts || ctx.Err() != nil {
			if err != nil && n > 1 {
				err = fmt.Errorf("%d attempts: %w", n, err)
			}
			return err
		}
		d := r.backoff(n)
		r.log.Warn("cannot read keys; trying again", "attempt", n, "of", r.cfg.MaxAttempts, "retry_in", d, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
		}
	}
}

// lastErr re-renders e in memory to name why it failed (Onetime's report).
func (r *runner) lastErr(e *entry) error {
	if err := r.renderCheck(e); err != nil {
		return fmt.Errorf("render %s: %w", e.res.Name, err)
	}
	return fmt.Errorf("render %s: failed (see log)", e.res.Name)
}

// CheckConfig validates every resource and template without writing: files
// parse, templates parse and render against the source's keys.
func CheckConfig(ctx context.Context, cfg Config, out io.Writer) error {
	r := newRunner(cfg)
	_, errs := r.loadConfig()
	if len(r.entries) > 0 {
		if err := r.resyncAttempts(ctx); err != nil {
			errs = append(errs, fmt.Errorf("read keys: %w", err))
		} else {
			for _, e := range r.sorted() {
				if err := r.renderCheck(e); err != nil {
					errs = append(errs, fmt.Errorf("render %s: %w", e.res.Name, err))
					continue
				}
				fmt.Fprintf(out, "ok %s → %s\n", e.res.Name, e.res.Dest)
			}
		}
	}
	return errors.Join(errs...)
}

// Run keeps every resource rendered until ctx ends; it returns nil then.
// It never exits on source failures: it keeps the last good files and
// retries with backoff.
func Run(ctx context.Context, cfg Config) error {
	r := newRunner(cfg)
	g, ctx := errgroup.WithContext(ctx)
	cfgEvents := make(chan struct{}, 1)
	if !r.cfg.NoConfigWatch {
		fw, err := fsnotify.NewWatcher()
		if err != nil {
			return fmt.Errorf("watch %s: %w", r.cfg.ConfDir, err)
		}
		// The confdir itself too, so that a conf.d or templates directory
		// created after start is picked up; templates recursively, for
		// included files in subdirectories.
		if err := fw.Add(r.cfg.ConfDir); err != nil {
			r.log.Warn("not watching for config changes", "dir", r.cfg.ConfDir, "err", err)
		}
		for _, d := range []string{r.cfg.confDir(), r.cfg.templatesDir()} {
			watchTree(fw, d, r.log)
		}
		g.Go(func() error {
			defer fw.Close()
			for {
				select {
				case <-ctx.Done():
					return nil
				case ev, ok := <-fw.Events:
					if !ok {
						return nil
					}
					if strings.HasPrefix(filepath.Base(ev.Name), ".") || !r.cfg.configPath(ev.Name) {
						continue
					}
					if ev.Has(fsnotify.Create) {
						if fi, err := os.Stat(ev.Name); err == nil && fi.IsDir() {
							watchTree(fw, ev.Name, r.log)
						}
					}
					select {
					case cfgEvents <- struct{}{}:
					default:
					}
				case err, ok := <-fw.Errors:
					if !ok {
						return nil
					}
					r.log.Warn("config watch", "err", err)
				}
			}
		})
	}
	// The source's health: for /health, and for a source that finds its
	// endpoints again after a failed ping (SRV).
	{
		g.Go(func() error {
			t := time.NewTicker(r.cfg.PingInterval)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return nil
				case <-t.C:
				}
				pctx, cancel := context.WithTimeout(ctx, r.cfg.PingInterval)
				err := r.cfg.Source.Ping(pctx)
				cancel()
				if ctx.Err() == nil {
					r.cfg.Metrics.setConnected(err == nil)
				}
			}
		})
	}
	g.Go(func() error { return r.loop(ctx, cfgEvents) })
	return g.Wait()
}

// loopState is what the loop keeps from one pass to the next.
type loopState struct {
	w          Watcher
	wc         <-chan Batch // w's batches; nil without a watch
	needResync bool         // the keys are to be read again, at resyncAt
	resyncAt   time.Time    // zero: at once
	resyncFail int          // failed reads in a row
	cfgAt      time.Time    // pending config reload (zero: none)
	reloading  bool         // RELOADING=1 sent, READY=1 owed
	ready      bool         // READY=1 sent
	nextPoll   time.Time    // Poll mode: the next read
	nextDog    time.Time    // the next WATCHDOG=1
}

func (l *loopState) closeWatch() {
	if l.w != nil {
		l.w.Close()
		l.w, l.wc = nil, nil
	}
}

// resyncSoon asks for the keys to be read again after d (0: at once).
func (l *loopState) resyncSoon(now time.Time, d time.Duration) {
	l.needResync, l.resyncAt = true, time.Time{}
	if d > 0 {
		l.resyncAt = now.Add(d)
	}
}

func (r *runner) loop(ctx context.Context, cfgEvents <-chan struct{}) error {
	var killReloads context.CancelFunc
	r.reloadCtx, killReloads = context.WithCancel(context.WithoutCancel(ctx))
	defer killReloads()
	l := &loopState{needResync: true}
	defer l.closeWatch()
	if _, errs := r.loadConfig(); len(errs) > 0 {
		r.log.Error("configuration has errors; rendering the rest", "errors", len(errs))
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	jobs := newWorkers()
	for ctx.Err() == nil {
		now := r.now()
		r.configDue(l, now)
		r.resyncDue(ctx, l, now)
		r.process(ctx, jobs, func() { r.drain(l) })
		if ctx.Err() != nil {
			break
		}
		r.reportApplied(jobs, l.needResync)
		r.notifyState(l)
		timer.Reset(max(r.next(l, jobs, now).Sub(r.now()), 0))
		r.await(ctx, l, jobs, timer.C, cfgEvents)
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
	return r.shutdown(ctx, jobs, killReloads)
}

// configDue reloads the configuration once its pending reload is due.
func (r *runner) configDue(l *loopState, now time.Time) {
	if l.cfgAt.IsZero() || l.cfgAt.After(now) {
		return
	}
	l.cfgAt = time.Time{}
	if changed, errs := r.loadConfig(); changed {
		r.log.Info("configuration reloaded", "resources", len(r.entries), "errors", len(errs))
		l.resyncSoon(now, 0)
		return
	}
	// No resource or top-level template changed, but a file a template
	// includes may have: render again from the snapshot (a file whose
	// bytes come out the same is left alone).
	for _, e := range r.entries {
		if e.store != nil {
			r.markDirty(e, now, now)
		}
	}
}

// resyncDue reads the keys once a read is due and, after a good read,
// follows their changes from its revision (Watch mode).
func (r *runner) resyncDue(ctx context.Context, l *loopState, now time.Time) {
	if !l.needResync || l.resyncAt.After(now) {
		return
	}
	if err := r.resync(ctx, now); err != nil {
		if ctx.Err() != nil {
			return
		}
		l.resyncFail++
		d := r.backoff(l.resyncFail)
		l.resyncAt = now.Add(d)
		r.cfg.Metrics.setConnected(false)
		r.log.Warn("cannot read keys; keeping the last good files", "retry_in", d, "err", err)
		return
	}
	l.resyncFail, l.needResync = 0, false
	r.cfg.Metrics.setConnected(true)
	l.closeWatch()
	if _, common := r.prefixes(); r.cfg.Mode == Watch && common != "" {
		l.w = r.cfg.Source.Watch(ctx, common, r.rev+1)
		l.wc = l.w.C()
	}
	l.nextPoll = now.Add(r.cfg.Interval)
}

// drain takes in every batch the watch has queued: one render for the lot.
func (r *runner) drain(l *loopState) {
	for l.wc != nil {
		select {
		case b, ok := <-l.wc:
			r.batch(l, b, ok)
		default:
			return
		}
	}
}

// notifyState tells systemd READY=1 once every resource has rendered (again
// after a requested reload), and WATCHDOG=1 when it is due.
func (r *runner) notifyState(l *loopState) {
	if !l.needResync && (!l.ready || l.reloading) && r.allRendered() {
		r.cfg.Notify("READY=1")
		r.cfg.Metrics.setReady()
		l.ready, l.reloading = true, false
	}
	if r.cfg.WatchdogInterval > 0 && !r.now().Before(l.nextDog) {
		r.cfg.Notify("WATCHDOG=1")
		l.nextDog = r.now().Add(r.cfg.WatchdogInterval)
	}
}

// next is when the loop has something to do, at the latest an hour from now.
func (r *runner) next(l *loopState, jobs *workers, now time.Time) time.Time {
	next := now.Add(time.Hour)
	soonest := func(t time.Time) {
		if !t.IsZero() && t.Before(next) {
			next = t
		}
	}
	for _, e := range r.entries {
		if !jobs.busy[e.res.Dest] { // a busy one wakes the loop with its result
			soonest(r.due(e))
		}
	}
	soonest(l.cfgAt)
	if l.needResync {
		// Zero means at once (a watch that failed while its queue was
		// drained): not "nothing due".
		if l.resyncAt.IsZero() {
			next = now
		}
		soonest(l.resyncAt)
	}
	if r.cfg.Mode == Poll && !l.needResync {
		soonest(l.nextPoll)
	}
	if r.cfg.WatchdogInterval > 0 {
		soonest(l.nextDog)
	}
	return next
}

// await waits for the next event (or wake) and takes it in.
func (r *runner) await(ctx context.Context, l *loopState, jobs *workers, wake <-chan time.Time, cfgEvents <-chan struct{}) {
	select {
	case <-ctx.Done():
	case <-wake:
		if r.cfg.Mode == Poll && !l.needResync && !r.now().Before(l.nextPoll) {
			l.resyncSoon(r.now(), 0)
		}
	case b, ok := <-l.wc:
		r.batch(l, b, ok)
		r.drain(l)
	case res := <-jobs.results:
		jobs.done(res)
		r.finish(ctx, res)
	case <-cfgEvents:
		l.cfgAt = r.now().Add(r.cfg.ConfigDebounce)
	case <-r.cfg.Reload:
		r.log.Info("reload requested")
		r.cfg.Notify(fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d", monotonicUsec()))
		l.reloading = true
		l.cfgAt = r.now()
	}
}

// shutdown lets running checks and reloads end, for at most
// ShutdownTimeout; then it kills those still running.
func (r *runner) shutdown(ctx context.Context, jobs *workers, killReloads context.CancelFunc) error {
	r.cfg.Notify("STOPPING=1")
	var limit <-chan time.Time
	var left int // jobs still running at the bound
	if r.cfg.ShutdownTimeout > 0 {
		t := time.NewTimer(r.cfg.ShutdownTimeout)
		defer t.Stop()
		limit = t.C
	}
	for jobs.inflight > 0 {
		select {
		case res := <-jobs.results:
			jobs.done(res)
			r.finish(ctx, res)
		case <-limit:
			// The bound: the commands still running are killed (their
			// process groups), and their jobs end at once.
			left, limit = jobs.inflight, nil
			killReloads()
		}
	}
	if left > 0 {
		return fmt.Errorf("shutdown: %d check or reload commands still running after %v: killed", left, r.cfg.ShutdownTimeout)
	}
	return nil
}

// batch takes in one watch batch: its changes, or the end of the watch
// (the keys are read again, after RetryMin or WatchErrorBackoff).
func (r *runner) batch(l *loopState, b Batch, ok bool) {
	switch {
	case !ok:
		l.closeWatch()
		l.resyncSoon(r.now(), r.cfg.RetryMin)
	case b.Err != nil:
		l.closeWatch()
		r.log.Warn("watch ended; resyncing", "err", b.Err, "after", r.cfg.WatchErrorBackoff)
		l.resyncSoon(r.now(), r.cfg.WatchErrorBackoff)
	case b.Resync:
		l.resyncSoon(r.now(), 0)
	default:
		r.apply(b, r.now())
	}
}

func (r *runner) allRendered() bool {
	for _, e := range r.entries {
		if !e.rendered {
			return false
		}
	}
	return true
}

// missingKey maps a resource's missingkey setting to the template option.
// Unset means confd's behaviour, so that an existing confd template keeps its
// meaning (a missing map key is false in an if); "error" opts into the strict
// house default.
func missingKey(setting string) string {
	if setting == "" {
		return "default"
	}
	return setting
}

// watchTree adds dir and every directory below it to fw. A directory that
// does not exist (yet) is skipped: its creation is seen in its parent.
func watchTree(fw *fsnotify.Watcher, dir string, log *slog.Logger) {
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if err := fw.Add(p); err != nil {
			log.Warn("not watching for config changes", "dir", p, "err", err)
		}
		return nil
	})
}
