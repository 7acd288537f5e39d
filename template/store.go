package template

import (
	"path"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/google/btree"
)

// KVPair is one key and value as templates see them (confd's memkv.KVPair):
// Key is relative to the resource's prefix, always starting with "/".
type KVPair struct {
	Key   string
	Value string
}

// KVPairs is what gets returns (confd's memkv.KVPairs). It is a distinct
// type from []KVPair on purpose: confd's reverse ignores it.
type KVPairs []KVPair

// btreeDegree is the fan-out of the store's ordered index. 32 keeps the tree
// shallow (four levels at 100k keys) and the per-node slices cache friendly.
const btreeDegree = 32

func lessKV(a, b KVPair) bool { return a.Key < b.Key }

// lessByValue orders a value index: by value, then by key (values repeat).
func lessByValue(a, b KVPair) bool {
	if a.Value != b.Value {
		return a.Value < b.Value
	}
	return a.Key < b.Key
}

// maxValueIndexes bounds how many getvs patterns a store indexes by value
// (each index costs about 46 bytes per key it holds).
const maxValueIndexes = 16

// Store is the snapshot a template renders from. Keys are absolute within
// the snapshot ("/clusterstate/ns/nginx@1.service").
//
// Keys are kept in an ordered B-tree, so Set and Delete cost O(log n) and the
// prefix scans behind gets, getvs, ls and lsdir visit only the keys under the
// pattern's literal prefix. The zero value is not usable: use NewStore.
//
// Safe for concurrent reads (rendering from several goroutines); Set, Delete
// and Clone must not run concurrently with rendering or with each other.
// A long-lived store that receives watch events can hand a cheap
// copy-on-write snapshot to a renderer with Clone.
type Store struct {
	t *btree.BTreeG[KVPair]
	// unclean counts keys that path.Clean would change (or that are not
	// absolute). While it is zero, ls can restrict itself to a prefix scan and
	// still give exactly memkv's answer.
	unclean int
	// size is the bytes of every key and value: a first render with no
	// better guess sizes its output from it.
	size int
	// byValue holds, for each getvs pattern in asked (at the last Clone),
	// the pairs it matches ordered by value: getvs reads one in order
	// instead of collecting and sorting every time. Set and Delete keep them
	// current; Clone shares them copy-on-write, like t.
	byValue map[string]*btree.BTreeG[KVPair]
	// asked is shared by a store, its clones and its Fresh successors: the
	// patterns getvs was called with on any of them.
	asked *askedPatterns
}

// askedPatterns records the getvs patterns worth a value index. A renderer
// calls getvs on a clone; the long-lived store it was cloned from builds the
// index at its next Clone and keeps it current from then on.
type askedPatterns struct {
	mu       sync.Mutex
	patterns []string
}

func (a *askedPatterns) add(pattern string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.patterns) < maxValueIndexes && !slices.Contains(a.patterns, pattern) {
		a.patterns = append(a.patterns, pattern)
	}
}

func (a *askedPatterns) list() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.patterns)
}

// NewStore returns a store holding kvs (copied).
func NewStore(kvs map[string]string) *Store {
	s := &Store{t: btree.NewG(btreeDegree, lessKV), asked: &askedPatterns{}}
	for k, v := range kvs {
		s.Set(k, v)
	}
	return s
}

// Fresh returns an empty store that inherits what s learnt about the
// templates rendered from it (the getvs patterns worth indexing). Use it
// to rebuild a long-lived store from a full read.
func (s *Store) Fresh() *Store {
	return &Store{t: btree.NewG(btreeDegree, lessKV), asked: s.asked}
}

func isUnclean(key string) bool {
	return !strings.HasPrefix(key, "/") || path.Clean(key) != key
}

// Set sets key to value.
func (s *Store) Set(key, value string) {
	old, replaced := s.t.ReplaceOrInsert(KVPair{Key: key, Value: value})
	if !replaced && isUnclean(key) {
		s.unclean++
	}
	s.size += len(key) + len(value)
	if replaced {
		s.size -= len(old.Key) + len(old.Value)
	}
	for pattern, idx := range s.byValue {
		if matchIndexed(pattern, key) {
			if replaced {
				idx.Delete(old)
			}
			idx.ReplaceOrInsert(KVPair{Key: key, Value: value})
		}
	}
}

// Delete removes key; deleting a missing key does nothing.
func (s *Store) Delete(key string) {
	old, ok := s.t.Delete(KVPair{Key: key})
	if !ok {
		return
	}
	if isUnclean(key) {
		s.unclean--
	}
	s.size -= len(old.Key) + len(old.Value)
	for pattern, idx := range s.byValue {
		if matchIndexed(pattern, key) {
			idx.Delete(old)
		}
	}
}

// Len returns the number of keys.
func (s *Store) Len() int { return s.t.Len() }

// Get returns a key's value.
func (s *Store) Get(key string) (string, bool) {
	kv, ok := s.t.Get(KVPair{Key: key})
	return kv.Value, ok
}

// Keys returns every key, sorted.
func (s *Store) Keys() []string {
	ks := make([]string, 0, s.t.Len())
	s.t.Ascend(func(kv KVPair) bool {
		ks = append(ks, kv.Key)
		return true
	})
	return ks
}

// Clone returns an independent copy of s in O(1): both share nodes until one
// of them is written (copy on write). Use it to render a snapshot while the
// original keeps receiving updates.
//
// Clone first indexes by value the getvs patterns that renders of earlier
// clones asked for (once per pattern, O(n log n)); from then on s keeps
// those indexes current and every clone shares them.
func (s *Store) Clone() *Store {
	if s.asked != nil {
		for _, p := range s.asked.list() {
			if _, ok := s.byValue[p]; !ok {
				if s.byValue == nil {
					s.byValue = make(map[string]*btree.BTreeG[KVPair])
				}
				s.byValue[p] = s.indexByValue(p)
			}
		}
	}
	c := &Store{t: s.t.Clone(), unclean: s.unclean, size: s.size, asked: s.asked}
	if len(s.byValue) > 0 {
		c.byValue = make(map[string]*btree.BTreeG[KVPair], len(s.byValue))
		for p, idx := range s.byValue {
			c.byValue[p] = idx.Clone()
		}
	}
	return c
}

// indexByValue builds the value index of pattern. Pairs go in as match
// yields them, in key order: values then arrive in no particular order, which
// leaves the tree's nodes fuller (about 46 bytes per key) than inserting them
// sorted would (69: every split leaves a half-full node behind).
func (s *Store) indexByValue(pattern string) *btree.BTreeG[KVPair] {
	idx := btree.NewG(btreeDegree, lessByValue)
	s.match(pattern, func(kv KVPair) { idx.ReplaceOrInsert(kv) }) // an indexable pattern is well formed
	return idx
}

// indexable reports whether getvs may serve pattern from a value index:
// a pattern without character classes or escapes is always well formed, so
// the index never has to reproduce memkv's errors.
func indexable(pattern string) bool { return !strings.ContainsAny(pattern, `[\`) }

// matchIndexed reports whether key matches an indexable pattern, exactly as
// match decides it.
func matchIndexed(pattern, key string) bool {
	lit := literalPrefix(pattern)
	if !strings.HasPrefix(key, lit) {
		return false
	}
	if len(pattern) == len(lit)+1 && pattern[len(lit)] == '*' {
		return strings.IndexByte(key[len(lit):], '/') < 0
	}
	ok, _ := path.Match(pattern, key)
	return ok
}

// ascendPrefix calls fn for every pair whose key starts with prefix, in key
// order, until fn returns false.
func (s *Store) ascendPrefix(prefix string, fn func(KVPair) bool) {
	if prefix == "" {
		s.t.Ascend(fn)
		return
	}
	s.t.AscendGreaterOrEqual(KVPair{Key: prefix}, func(kv KVPair) bool {
		if !strings.HasPrefix(kv.Key, prefix) {
			return false
		}
		return fn(kv)
	})
}

// literalPrefix returns the part of a path.Match pattern before its first
// special character: every name the pattern matches starts with it.
func literalPrefix(pattern string) string {
	if i := strings.IndexAny(pattern, `*?[\`); i >= 0 {
		return pattern[:i]
	}
	return pattern
}

// getAll is memkv's GetAll: every pair whose key matches pattern
// (path.Match syntax), sorted by key. A malformed pattern is an error
// whenever the store holds at least one key, as in memkv.
func (s *Store) getAll(pattern string) (KVPairs, error) {
	out := make(KVPairs, 0)
	if err := s.match(pattern, func(kv KVPair) { out = append(out, kv) }); err != nil {
		return nil, err
	}
	return out, nil
}

// getAllValues is memkv's GetAllValues: the values of getAll, sorted by value.
// It reads the pattern's value index when the store has one; otherwise it
// collects and sorts, and asks for an index (see Clone).
func (s *Store) getAllValues(pattern string) ([]string, error) {
	if idx, ok := s.byValue[pattern]; ok {
		vs := make([]string, 0, idx.Len())
		idx.Ascend(func(kv KVPair) bool {
			vs = append(vs, kv.Value)
			return true
		})
		return vs, nil
	}
	vs := make([]string, 0)
	if err := s.match(pattern, func(kv KVPair) { vs = append(vs, kv.Value) }); err != nil {
		return make([]string, 0), err
	}
	sort.Strings(vs)
	if s.asked != nil && indexable(pattern) {
		s.asked.add(pattern)
	}
	return vs, nil
}

// match calls fn, in key order, for every pair whose key matches pattern.
func (s *Store) match(pattern string, fn func(KVPair)) error {
	var err error
	lit := literalPrefix(pattern)
	// "lit*" (the seed's "/clusterstate/ns/*") matches exactly the keys
	// that continue lit without a "/": no need for path.Match per key.
	trailingStar := len(pattern) == len(lit)+1 && pattern[len(lit)] == '*'
	n := 0
	s.ascendPrefix(lit, func(kv KVPair) bool {
		if trailingStar {
			if strings.IndexByte(kv.Key[len(lit):], '/') < 0 {
				fn(kv)
				n++
			}
			return true
		}
		ok, merr := path.Match(pattern, kv.Key)
		if merr != nil {
			err = merr
			return false
		}
		if ok {
			fn(kv)
			n++
		}
		return true
	})
	if err != nil {
		return err
	}
	if n == 0 && s.t.Len() > 0 {
		// memkv matches the pattern against every key, so a malformed
		// pattern fails even when no key shares its literal prefix.
		first, _ := s.t.Min()
		if _, merr := path.Match(pattern, first.Key); merr != nil {
			return merr
		}
	}
	return nil
}

func pathToTerms(p string) []string { return strings.Split(path.Clean(p), "/") }

func samePrefixTerms(prefix, test []string) bool {
	if len(test) < len(prefix) {
		return false
	}
	for i := range prefix {
		if prefix[i] != test[i] {
			return false
		}
	}
	return true
}

func sortedSet(m map[string]struct{}) []string {
	vs := make([]string, 0, len(m))
	for k := range m {
		vs = append(vs, k)
	}
	sort.Strings(vs)
	return vs
}

// list is memkv's List (template function ls): the names of the entries
// directly below dir, sorted and unique; a key equal to dir contributes its
// base name. The rule is applied exactly as memkv applies it; only the set of
// keys it is applied to is narrowed to those that can match.
func (s *Store) list(dir string) []string {
	seen := make(map[string]struct{})
	prefix := pathToTerms(dir)
	visit := func(kv KVPair) bool {
		if kv.Key == dir {
			seen[path.Base(kv.Key)] = struct{}{}
			return true
		}
		if samePrefixTerms(prefix, pathToTerms(path.Dir(kv.Key))) {
			rest := strings.TrimPrefix(strings.TrimPrefix(kv.Key, dir), "/")
			name, _, _ := strings.Cut(rest, "/")
			seen[name] = struct{}{}
		}
		return true
	}
	clean := path.Clean(dir)
	if s.unclean > 0 || !strings.HasPrefix(clean, "/") || clean == "/" {
		s.t.Ascend(visit)
		return sortedSet(seen)
	}
	// Every key is clean and absolute: path.Dir(key) lies under clean exactly
	// when key starts with clean+"/"; a key equal to dir is the only other hit.
	if kv, ok := s.t.Get(KVPair{Key: dir}); ok {
		visit(kv)
	}
	s.ascendPrefix(clean+"/", visit)
	return sortedSet(seen)
}

// listDir is memkv's ListDir (template function lsdir): the names of the
// entries directly below dir that have entries below them, sorted and unique.
func (s *Store) listDir(dir string) []string {
	seen := make(map[string]struct{})
	prefix := pathToTerms(dir)
	s.ascendPrefix(dir, func(kv KVPair) bool {
		items := pathToTerms(path.Dir(kv.Key))
		if samePrefixTerms(prefix, items) && len(items)-len(prefix) >= 1 {
			seen[items[len(prefix)]] = struct{}{}
		}
		return true
	})
	return sortedSet(seen)
}
