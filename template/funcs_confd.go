package template

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	texttemplate "text/template"
)

// ErrKeyNotFound is wrapped by every error about a key missing from the
// store (get, getv without default).
var ErrKeyNotFound = errors.New("template: key not found")

// KeyError reports a store function that needed a key the store lacks. It
// wraps ErrKeyNotFound; render errors wrap it, so callers can find the key
// with errors.As.
type KeyError struct {
	Func string // the template function: "get" or "getv"
	Key  string // the key as the template asked for it
}

// Error returns `getv: key "/x" not found`.
func (e *KeyError) Error() string {
	return fmt.Sprintf("%s: key %q not found", e.Func, e.Key)
}

// Unwrap returns ErrKeyNotFound.
func (e *KeyError) Unwrap() error { return ErrKeyNotFound }

// storeFuncs returns the functions that read b's store: memkv's set.
func storeFuncs(b *binding) texttemplate.FuncMap {
	return texttemplate.FuncMap{
		"exists": func(key string) bool {
			_, ok := b.store.Get(key)
			return ok
		},
		"get": func(key string) (KVPair, error) {
			v, ok := b.store.Get(key)
			if !ok {
				return KVPair{}, &KeyError{Func: "get", Key: key}
			}
			return KVPair{Key: key, Value: v}, nil
		},
		"getv": func(key string, def ...string) (string, error) {
			v, ok := b.store.Get(key)
			if !ok {
				if len(def) > 0 {
					return def[0], nil
				}
				return "", &KeyError{Func: "getv", Key: key}
			}
			return v, nil
		},
		"gets":  func(pattern string) (KVPairs, error) { return b.store.getAll(pattern) },
		"getvs": func(pattern string) ([]string, error) { return b.store.getAllValues(pattern) },
		"ls":    func(dir string) []string { return b.store.list(dir) },
		"lsdir": func(dir string) []string { return b.store.listDir(dir) },
	}
}

// confdFuncs returns the original confd function set that does not read the
// store, with confd's argument order, results and quirks (see
// docs/template-functions.md).
func confdFuncs(o *Options) texttemplate.FuncMap {
	return texttemplate.FuncMap{
		"base":      path.Base,
		"dir":       path.Dir,
		"split":     strings.Split,
		"join":      strings.Join,
		"json":      jsonObject,
		"jsonArray": jsonArray,
		"map":       createMap,
		"getenv": func(key string, def ...string) string {
			if v := o.getenv(key); v != "" {
				return v
			}
			if len(def) > 0 {
				return def[0]
			}
			return ""
		},
		"datetime":   o.now,
		"toUpper":    strings.ToUpper,
		"toLower":    strings.ToLower,
		"contains":   strings.Contains,
		"replace":    strings.Replace,
		"trimSuffix": strings.TrimSuffix,
		"lookupIP":   o.lookupIP,
		"lookupIPV4": func(host string) []string { return filterIPs(o.lookupIP(host), ".") },
		"lookupIPV6": func(host string) []string { return filterIPs(o.lookupIP(host), ":") },
		"lookupSRV":  o.lookupSRV,
		"fileExists": func(name string) bool {
			// confd treats only "does not exist" as false; a permission
			// error still counts as existing.
			_, err := os.Stat(name)
			return !errors.Is(err, os.ErrNotExist)
		},
		"base64Encode": func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) },
		"base64Decode": func(s string) (string, error) {
			b, err := base64.StdEncoding.DecodeString(s)
			return string(b), err
		},
		"parseBool":      strconv.ParseBool,
		"reverse":        reverse,
		"sortByLength":   sortByLength,
		"sortKVByLength": sortKVByLength,
		"add":            func(a, b int) int { return a + b },
		"sub":            func(a, b int) int { return a - b },
		"mul":            func(a, b int) int { return a * b },
		"div":            func(a, b int) int { return a / b },
		"mod":            func(a, b int) int { return a % b },
		"seq":            seq,
		"atoi":           strconv.Atoi,
	}
}

func jsonObject(s string) (map[string]any, error) {
	var m map[string]any
	err := json.Unmarshal([]byte(s), &m)
	return m, err
}

func jsonArray(s string) ([]any, error) {
	var a []any
	err := json.Unmarshal([]byte(s), &a)
	return a, err
}

// createMap builds a map from alternating string keys and values (confd's
// map, the fork's dict).
func createMap(kv ...any) (map[string]any, error) {
	if len(kv)%2 != 0 {
		return nil, fmt.Errorf("odd number of arguments (%d): want key, value pairs", len(kv))
	}
	m := make(map[string]any, len(kv)/2)
	for i := 0; i < len(kv); i += 2 {
		k, ok := kv[i].(string)
		if !ok {
			return nil, fmt.Errorf("key %d is %T, want string", i/2, kv[i])
		}
		m[k] = kv[i+1]
	}
	return m, nil
}

// filterIPs keeps the addresses containing sep ("." for IPv4, ":" for IPv6),
// as confd tells the families apart.
func filterIPs(ips []string, sep string) []string {
	var out []string
	for _, ip := range ips {
		if strings.Contains(ip, sep) {
			out = append(out, ip)
		}
	}
	return out
}

// maxSeq bounds seq so a key's value cannot make a render allocate
// gigabytes (confd would run out of memory instead).
const maxSeq = 1 << 24

// seq is confd's seq: first, first+1, …, last; nothing when first > last.
func seq(first, last int) ([]int, error) {
	if first <= last && uint(last-first) >= maxSeq {
		return nil, fmt.Errorf("%d..%d is more than %d numbers", first, last, maxSeq)
	}
	var out []int
	for i := first; i <= last; i++ {
		out = append(out, i)
	}
	return out, nil
}

// reverse reverses a []string or []KVPair in place and returns it, as confd
// does; any other value is returned unchanged. That includes KVPairs, the
// type gets returns: in confd `reverse (gets …)` is a no-op (while
// `reverse (sortKVByLength (gets …))` reverses), and so it is here.
func reverse(v any) any {
	switch s := v.(type) {
	case []string:
		for i, j := 0, len(s)-1; i < j; i, j = i+1, j-1 {
			s[i], s[j] = s[j], s[i]
		}
	case []KVPair:
		for i, j := 0, len(s)-1; i < j; i, j = i+1, j-1 {
			s[i], s[j] = s[j], s[i]
		}
	}
	return v
}

type byLen []string

func (s byLen) Len() int           { return len(s) }
func (s byLen) Less(i, j int) bool { return len(s[i]) < len(s[j]) }
func (s byLen) Swap(i, j int)      { s[i], s[j] = s[j], s[i] }

type kvByKeyLen []KVPair

func (s kvByKeyLen) Len() int           { return len(s) }
func (s kvByKeyLen) Less(i, j int) bool { return len(s[i].Key) < len(s[j].Key) }
func (s kvByKeyLen) Swap(i, j int)      { s[i], s[j] = s[j], s[i] }

// sortByLength sorts in place by length with sort.Sort (not stable), exactly
// as confd does, so ties come out in the same order as confd's.
func sortByLength(s []string) []string {
	sort.Sort(byLen(s))
	return s
}

// sortKVByLength sorts pairs in place by key length, as confd does.
func sortKVByLength(s []KVPair) []KVPair {
	sort.Sort(kvByKeyLen(s))
	return s
}

// lookupIP resolves host and returns its addresses as sorted strings; nil
// when resolution fails, as in confd.
func (o *Options) lookupIP(host string) []string {
	resolve := o.LookupIP
	if resolve == nil {
		resolve = net.LookupIP
	}
	ips, err := resolve(host)
	if err != nil {
		return nil
	}
	out := make([]string, len(ips))
	for i, ip := range ips {
		out[i] = ip.String()
	}
	sort.Strings(out)
	return out
}

// lookupSRV resolves an SRV record; records are sorted by target, port,
// priority and weight written one after the other (confd's order). Empty
// when resolution fails.
func (o *Options) lookupSRV(service, proto, name string) []*net.SRV {
	resolve := o.LookupSRV
	if resolve == nil {
		resolve = net.LookupSRV
	}
	_, addrs, err := resolve(service, proto, name)
	if err != nil {
		return []*net.SRV{}
	}
	sort.Sort(srvOrder(addrs))
	return addrs
}

type srvOrder []*net.SRV

func srvKey(s *net.SRV) string {
	return s.Target + strconv.Itoa(int(s.Port)) + strconv.Itoa(int(s.Priority)) + strconv.Itoa(int(s.Weight))
}

func (s srvOrder) Len() int           { return len(s) }
func (s srvOrder) Less(i, j int) bool { return srvKey(s[i]) < srvKey(s[j]) }
func (s srvOrder) Swap(i, j int)      { s[i], s[j] = s[j], s[i] }
