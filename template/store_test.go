package template

import (
	"fmt"
	"math/rand/v2"
	"path"
	"reflect"
	"sort"
	"strings"
	"testing"
)

// refStore is a plain full-scan transcription of the rules memkv applies
// (confd's store): the fast, index-using Store must always agree with it.
type refStore map[string]string

func (r refStore) gets(pattern string) (KVPairs, error) {
	out := KVPairs{}
	for k, v := range r {
		ok, err := path.Match(pattern, k)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, KVPair{k, v})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

func (r refStore) getvs(pattern string) ([]string, error) {
	kvs, err := r.gets(pattern)
	if err != nil {
		return []string{}, err
	}
	vs := []string{}
	for _, kv := range kvs {
		vs = append(vs, kv.Value)
	}
	sort.Strings(vs)
	return vs, nil
}

func (r refStore) ls(dir string) []string {
	set := map[string]struct{}{}
	pre := strings.Split(path.Clean(dir), "/")
	for k := range r {
		if k == dir {
			set[path.Base(k)] = struct{}{}
			continue
		}
		if samePrefixTerms(pre, strings.Split(path.Clean(path.Dir(k)), "/")) {
			set[strings.Split(strings.TrimPrefix(strings.TrimPrefix(k, dir), "/"), "/")[0]] = struct{}{}
		}
	}
	return sortedSet(set)
}

func (r refStore) lsdir(dir string) []string {
	set := map[string]struct{}{}
	pre := strings.Split(path.Clean(dir), "/")
	for k := range r {
		if !strings.HasPrefix(k, dir) {
			continue
		}
		items := strings.Split(path.Clean(path.Dir(k)), "/")
		if samePrefixTerms(pre, items) && len(items) > len(pre) {
			set[items[len(pre)]] = struct{}{}
		}
	}
	return sortedSet(set)
}

// checkAgainstRef compares every store function for one argument.
func checkAgainstRef(t *testing.T, s *Store, r refStore, arg string) {
	t.Helper()
	g1, e1 := s.getAll(arg)
	g2, e2 := r.gets(arg)
	if (e1 != nil) != (e2 != nil) || (e1 == nil && !reflect.DeepEqual(g1, g2)) {
		t.Fatalf("gets %q: got %v, %v; memkv rule gives %v, %v (keys %v)", arg, g1, e1, g2, e2, s.Keys())
	}
	v1, e1 := s.getAllValues(arg)
	v2, e2 := r.getvs(arg)
	if (e1 != nil) != (e2 != nil) || !reflect.DeepEqual(v1, v2) {
		t.Fatalf("getvs %q: got %v, %v; memkv rule gives %v, %v", arg, v1, e1, v2, e2)
	}
	if l1, l2 := s.list(arg), r.ls(arg); !reflect.DeepEqual(l1, l2) {
		t.Fatalf("ls %q: got %v; memkv rule gives %v (keys %v)", arg, l1, l2, s.Keys())
	}
	if l1, l2 := s.listDir(arg), r.lsdir(arg); !reflect.DeepEqual(l1, l2) {
		t.Fatalf("lsdir %q: got %v; memkv rule gives %v (keys %v)", arg, l1, l2, s.Keys())
	}
}

func TestStoreMatchesMemkvRules(t *testing.T) {
	segs := []string{"a", "b", "ab", "a.b", "", "..", ".", "x*"}
	args := []string{"/", "", "a", "/a", "/a/", "/a/b", "/ab", "/a//b", "/a/../b", "/a/*", "/*/b", "/a/[ab]", "/a/b/*",
		"/a/\\*", "/[", "/a/[", "*", "/?", "/a?", "//a", "/a/b/"}
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 300 {
		s, r := NewStore(nil), refStore{}
		for range rng.IntN(20) {
			var b strings.Builder
			if rng.IntN(8) > 0 {
				b.WriteString("/")
			}
			for i := range 1 + rng.IntN(4) {
				if i > 0 {
					b.WriteString("/")
				}
				b.WriteString(segs[rng.IntN(len(segs))])
			}
			k := b.String()
			v := fmt.Sprint(rng.IntN(5))
			s.Set(k, v)
			r[k] = v
			if rng.IntN(6) == 0 { // and delete something again
				for dk := range r {
					s.Delete(dk)
					delete(r, dk)
					break
				}
			}
		}
		if s.Len() != len(r) {
			t.Fatalf("round %d: Len %d, want %d", round, s.Len(), len(r))
		}
		for _, a := range args {
			checkAgainstRef(t, s, r, a)
		}
	}
}

// TestValueIndex follows a long-lived store the way render uses one: every
// round a clone is rendered (getvs), then the original receives updates. From
// the second clone on, getvs is served by the value index the first asked
// for; it must always give exactly what collecting and sorting gives, in the
// original, in every clone (old clones included) and after Fresh.
func TestValueIndex(t *testing.T) {
	patterns := []string{"/a/*", "/a/b/*", "/*/b", "/a?", "*", "/a/*/c", "/a/[ab]"}
	names := []string{"a", "b", "ab", "c", "x*", ""}
	rng := rand.New(rand.NewPCG(3, 4))
	randKey := func() string {
		var b strings.Builder
		for range 1 + rng.IntN(3) {
			b.WriteString("/" + names[rng.IntN(len(names))])
		}
		return b.String()
	}
	for round := range 50 {
		s, r := NewStore(nil), refStore{}
		type snap struct {
			c *Store
			r refStore
		}
		var clones []snap
		for step := range 40 {
			for range rng.IntN(6) {
				k := randKey()
				if rng.IntN(4) == 0 {
					s.Delete(k)
					delete(r, k)
					continue
				}
				v := fmt.Sprint(rng.IntN(4)) // values repeat
				s.Set(k, v)
				r[k] = v
			}
			if step == 20 { // a full re-read: the indexes come back at the next Clone
				f := s.Fresh()
				for k, v := range r {
					f.Set(k, v)
				}
				s = f
			}
			c := s.Clone()
			cr := refStore{}
			for k, v := range r {
				cr[k] = v
			}
			clones = append(clones, snap{c, cr})
			for _, p := range patterns {
				checkAgainstRef(t, c, cr, p)
				checkAgainstRef(t, s, r, p)
			}
		}
		for i, cl := range clones { // older clones never saw later updates
			for _, p := range patterns {
				got, _ := cl.c.getAllValues(p)
				want, _ := cl.r.getvs(p)
				if !reflect.DeepEqual(got, want) {
					t.Fatalf("round %d, clone %d, getvs %q: %v, want %v", round, i, p, got, want)
				}
			}
		}
		// Every well-formed pattern ended up indexed, a malformed one never.
		for _, p := range patterns {
			_, ok := s.byValue[p]
			if want := indexable(p); ok != want && round > 0 && s.Len() > 0 {
				t.Fatalf("round %d: %q indexed = %v, want %v", round, p, ok, want)
			}
		}
	}
}

// TestValueIndexCopies: getvs hands out a fresh slice every time, so a
// template function that works in place (reverse, sortByLength) cannot
// corrupt the index.
func TestValueIndexCopies(t *testing.T) {
	s := NewStore(map[string]string{"/a/1": "x", "/a/2": "y", "/a/3": "z"})
	s.getAllValues("/a/*")
	c := s.Clone()
	vs, _ := c.getAllValues("/a/*")
	reverse(vs)
	if got, _ := c.getAllValues("/a/*"); !reflect.DeepEqual(got, []string{"x", "y", "z"}) {
		t.Fatalf("getvs after reversing its last answer = %v", got)
	}
	if _, ok := c.byValue["/a/*"]; !ok {
		t.Fatal("the clone has no value index for /a/*")
	}
}

func TestStoreBasics(t *testing.T) {
	s := NewStore(map[string]string{"/b": "2", "/a": "1"})
	s.Set("/c", "3")
	s.Set("/a", "one")
	s.Delete("/b")
	s.Delete("/missing")
	if got, want := s.Keys(), []string{"/a", "/c"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Keys = %v, want %v", got, want)
	}
	if v, ok := s.Get("/a"); !ok || v != "one" {
		t.Fatalf("Get /a = %q, %v", v, ok)
	}
	if _, ok := s.Get("/b"); ok {
		t.Fatal("deleted key still there")
	}
	c := s.Clone()
	c.Set("/d", "4")
	s.Delete("/a")
	if s.Len() != 1 || c.Len() != 3 {
		t.Fatalf("clone not independent: original %v, clone %v", s.Keys(), c.Keys())
	}
	if v, _ := c.Get("/a"); v != "one" {
		t.Fatalf("clone lost /a: %q", v)
	}
	// unclean-key bookkeeping survives replace and delete
	s.Set("a//b", "x")
	s.Set("a//b", "y")
	if s.unclean != 1 {
		t.Fatalf("unclean = %d, want 1", s.unclean)
	}
	s.Delete("a//b")
	if s.unclean != 0 {
		t.Fatalf("unclean = %d, want 0", s.unclean)
	}
}

// FuzzStoreFuncs feeds arbitrary keys and patterns (binary, invalid UTF-8,
// malformed patterns) to the store functions: they never panic and always
// agree with memkv's rules.
func FuzzStoreFuncs(f *testing.F) {
	f.Add("/a/b\n/a/c\n/x", "/a/*")
	f.Add("/clusterstate/cruwe_de/nginx@1.service\n/clusterstate/cruwe_de2/x", "/clusterstate/cruwe_de/*")
	f.Add("a//b\n/a/../c\n/", "/")
	f.Add("/\xff\xfe/\x00", "/\xff*")
	f.Add("/a/[\n/a/b", "/a/[")
	f.Fuzz(func(t *testing.T, keys, arg string) {
		s, r := NewStore(nil), refStore{}
		for i, k := range strings.Split(keys, "\n") {
			s.Set(k, fmt.Sprint(i%3))
			r[k] = fmt.Sprint(i % 3)
		}
		checkAgainstRef(t, s, r, arg)
		// The getvs above asked for a value index: the clone has it, and
		// must answer the same, before and after a change.
		c := s.Clone()
		checkAgainstRef(t, c, r, arg)
		for k := range r {
			c.Set(k, "changed")
			r[k] = "changed"
			break
		}
		checkAgainstRef(t, c, r, arg)
	})
}
