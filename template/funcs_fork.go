package template

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	texttemplate "text/template"
	"unicode"
)

// forkFuncs returns the functions abtreece/confd added (v0.41): hostname,
// interface addresses and its utility set, with the fork's semantics. Where
// the fork only accepts a narrow argument type (quote, append) these accept
// more, giving the fork's output wherever the fork gives output at all.
func forkFuncs(o *Options) texttemplate.FuncMap {
	return texttemplate.FuncMap{
		"hostname": func() (string, error) {
			if o.Hostname != nil {
				return o.Hostname()
			}
			return os.Hostname()
		},
		"lookupIfaceIPV4": func(name string) string { return o.ifaceAddr(name, true) },
		"lookupIfaceIPV6": func(name string) string { return o.ifaceAddr(name, false) },

		"default":  dfault,
		"ternary":  ternary,
		"coalesce": coalesce,
		"empty":    isEmpty,

		"toJson":       toJSON,
		"fromJson":     fromJSON,
		"toPrettyJson": toPrettyJSON,

		"indent": indent,
		"nindent": func(n int, s string) (string, error) {
			out, err := indent(n, s)
			return "\n" + out, err
		},
		"quote":  func(v any) string { return strconv.Quote(asString(v)) },
		"squote": func(v any) string { return "'" + strings.ReplaceAll(asString(v), "'", "''") + "'" },

		"regexMatch": regexp.MatchString,
		"regexFind": func(pattern, s string) (string, error) {
			re, err := regexp.Compile(pattern)
			if err != nil {
				return "", err
			}
			return re.FindString(s), nil
		},
		"regexReplaceAll": func(pattern, s, repl string) (string, error) {
			re, err := regexp.Compile(pattern)
			if err != nil {
				return "", err
			}
			return re.ReplaceAllString(s, repl), nil
		},

		"trimPrefix": strings.TrimPrefix,
		"repeat":     repeat,
		"nospace": func(s string) string {
			return strings.Map(func(r rune) rune {
				if unicode.IsSpace(r) {
					return -1
				}
				return r
			}, s)
		},
		"snakecase": func(s string) string { return joinWords(s, "_", strings.ToLower) },
		"kebabcase": func(s string) string { return joinWords(s, "-", strings.ToLower) },
		"camelcase": camelcase,

		"dict":      createMap,
		"list":      func(v ...any) []any { return v },
		"hasKey":    func(m map[string]any, k string) bool { _, ok := m[k]; return ok },
		"keys":      sortedKeys,
		"values":    valuesByKey,
		"append":    appendAny,
		"pluck":     pluck,
		"sha256sum": func(s string) string { sum := sha256.Sum256([]byte(s)); return hex.EncodeToString(sum[:]) },
	}
}

// ifaceAddr is the first IPv4 (or non-IPv4) address of the named interface,
// "" when there is none or the interface does not exist (the fork's rule).
func (o *Options) ifaceAddr(name string, v4 bool) string {
	addrsOf := o.InterfaceAddrs
	if addrsOf == nil {
		addrsOf = func(name string) ([]net.Addr, error) {
			ifc, err := net.InterfaceByName(name)
			if err != nil {
				return nil, err
			}
			return ifc.Addrs()
		}
	}
	addrs, err := addrsOf(name)
	if err != nil {
		return ""
	}
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		if ip4 := ipn.IP.To4(); ip4 != nil {
			if v4 {
				return ip4.String()
			}
			continue
		}
		if !v4 && ipn.IP != nil {
			return ipn.IP.String()
		}
	}
	return ""
}

// isEmpty is the fork's emptiness: nil, zero numbers, false, empty strings
// and collections, nil pointers and zero structs.
func isEmpty(v any) bool {
	if v == nil {
		return true
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.String, reflect.Array, reflect.Slice, reflect.Map:
		return rv.Len() == 0
	case reflect.Bool:
		return !rv.Bool()
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return rv.Int() == 0
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return rv.Uint() == 0
	case reflect.Float32, reflect.Float64:
		return rv.Float() == 0
	case reflect.Pointer, reflect.Interface:
		return rv.IsNil()
	case reflect.Struct:
		return rv.IsZero()
	}
	return false
}

// dfault returns def when the given value is empty (or absent).
func dfault(def any, given ...any) any {
	if len(given) == 0 || isEmpty(given[0]) {
		return def
	}
	return given[0]
}

// ternary is yes when cond holds, else no (cond last, for pipelines).
func ternary(yes, no any, cond bool) any {
	if cond {
		return yes
	}
	return no
}

func coalesce(v ...any) any {
	for _, x := range v {
		if !isEmpty(x) {
			return x
		}
	}
	return nil
}

func toJSON(v any) (string, error) {
	b, err := json.Marshal(v)
	return string(b), err
}

func toPrettyJSON(v any) (string, error) {
	b, err := json.MarshalIndent(v, "", "  ")
	return string(b), err
}

func fromJSON(s string) (any, error) {
	var v any
	err := json.Unmarshal([]byte(s), &v)
	return v, err
}

// maxIndent bounds indent's padding (a line can be indented 64 KiB deep).
const maxIndent = 1 << 16

// indent pads every line of s with n spaces; an empty s stays empty.
func indent(n int, s string) (string, error) {
	if s == "" {
		return "", nil
	}
	if n > maxIndent {
		return "", fmt.Errorf("%d spaces is more than %d", n, maxIndent)
	}
	pad := strings.Repeat(" ", max(n, 0))
	return pad + strings.ReplaceAll(s, "\n", "\n"+pad), nil
}

// maxRepeat bounds repeat's output so a template (or a key's value) cannot
// make a render allocate without limit.
const maxRepeat = 64 << 20

func repeat(n int, s string) (string, error) {
	if n <= 0 || s == "" {
		return "", nil
	}
	if n > maxRepeat/len(s) {
		return "", fmt.Errorf("result would exceed %d bytes", maxRepeat)
	}
	return strings.Repeat(s, n), nil
}

func asString(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	return fmt.Sprint(v)
}

// splitWords cuts s into words at '_', '-' and ' ', and before an upper-case
// letter that follows a non-upper-case one or that starts a lower-case run
// ("HTTPServer" → HTTP, Server).
func splitWords(s string) []string {
	rs := []rune(s)
	var words []string
	start := -1 // start of the current word, -1 when none
	for i, r := range rs {
		if r == '_' || r == '-' || r == ' ' {
			if start >= 0 {
				words = append(words, string(rs[start:i]))
				start = -1
			}
			continue
		}
		if start >= 0 && unicode.IsUpper(r) {
			nextLower := i+1 < len(rs) && unicode.IsLower(rs[i+1])
			if nextLower || !unicode.IsUpper(rs[i-1]) {
				words = append(words, string(rs[start:i]))
				start = i
			}
		}
		if start < 0 {
			start = i
		}
	}
	if start >= 0 {
		words = append(words, string(rs[start:]))
	}
	return words
}

func joinWords(s, sep string, f func(string) string) string {
	w := splitWords(s)
	for i := range w {
		w[i] = f(w[i])
	}
	return strings.Join(w, sep)
}

func camelcase(s string) string {
	w := splitWords(s)
	for i := range w {
		w[i] = strings.ToLower(w[i])
		if i > 0 {
			rs := []rune(w[i])
			rs[0] = unicode.ToUpper(rs[0])
			w[i] = string(rs)
		}
	}
	return strings.Join(w, "")
}

func sortedKeys(m map[string]any) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func valuesByKey(m map[string]any) []any {
	ks := sortedKeys(m)
	vs := make([]any, len(ks))
	for i, k := range ks {
		vs[i] = m[k]
	}
	return vs
}

// appendAny appends v to a copy of any slice or array, giving []any.
func appendAny(l any, v any) ([]any, error) {
	if l == nil {
		return []any{v}, nil
	}
	rv := reflect.ValueOf(l)
	if rv.Kind() != reflect.Slice && rv.Kind() != reflect.Array {
		return nil, fmt.Errorf("cannot append to %T", l)
	}
	out := make([]any, rv.Len(), rv.Len()+1)
	for i := range out {
		out[i] = rv.Index(i).Interface()
	}
	return append(out, v), nil
}

func pluck(key string, maps ...map[string]any) []any {
	var out []any
	for _, m := range maps {
		if v, ok := m[key]; ok {
			out = append(out, v)
		}
	}
	return out
}
