// Package template renders confd-style templates: Go text/template with
// confd's function set over a snapshot of etcd keys, plus hermetic sprig.
// Rendering is pure: (template, snapshot) → bytes.
//
// Its users are resources/ and internal/render: Parse a template once, then
// Render it against each new snapshot of the keys, a Store (store.go).
//
// # Functions
//
// Every template gets, in this order of precedence:
//
//   - confd's functions (kelseyhightower/confd v0.16/v0.17) with confd's exact
//     semantics, so a confd template renders byte for byte as confd renders it:
//     get getv gets getvs exists ls lsdir base dir split join json jsonArray
//     map getenv datetime toUpper toLower contains replace trimSuffix lookupIP
//     lookupIPV4 lookupIPV6 lookupSRV fileExists base64Encode base64Decode
//     parseBool reverse sortByLength sortKVByLength add sub mul div mod seq atoi.
//   - the functions the maintained fork (abtreece/confd v0.41) added: hostname
//     lookupIfaceIPV4 lookupIfaceIPV6 include default ternary coalesce empty
//     toJson fromJson toPrettyJson indent nindent quote squote regexMatch
//     regexFind regexReplaceAll trimPrefix repeat nospace snakecase camelcase
//     kebabcase dict list hasKey keys values append pluck sha256sum.
//     Where the two confd lines disagree (seq with first > last, reverse
//     copying or not) the original's meaning is kept.
//   - every function of Masterminds/sprig/v3's HermeticTxtFuncMap. When a
//     sprig name is taken by one of the functions above, the confd/fork
//     meaning wins and sprig's function stays reachable with the prefix
//     "sprig_": sprig_join, sprig_contains, sprig_trimPrefix, sprig_seq, ….
//     text/template's builtins (and, index, len, slice, …) are never shadowed:
//     sprig's slice is sprig_slice.
//
// docs/template-functions.md lists every function with its origin and meaning.
//
// # Errors
//
// A render error names the template, the line and, for get/getv, the key:
//
//	render template haproxy.cfg.tmpl:12: getv: key "/clusterstate/x" not found
//
// Such errors wrap a *KeyError (and ErrKeyNotFound). Map lookups with a
// missing key are errors (missingkey=error), not "<no value>" as in confd,
// unless Options.MissingKey says otherwise.
package template

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	texttemplate "text/template"
	"time"

	"github.com/Masterminds/sprig/v3"
)

// Options changes how a template is parsed and rendered. The zero value is
// confd's behaviour with the real environment, clock, resolver and host name.
type Options struct {
	// Delims overrides "{{" and "}}" when both are set.
	Delims [2]string
	// Dir is the templates directory: `include` is confined to it. Empty
	// means include fails.
	Dir string
	// IncludeDepth bounds how deeply includes nest; 0 means 10 (the fork's
	// limit).
	IncludeDepth int
	// MissingKey is what a map lookup of a missing key ($m.nokey) does:
	// "" or "error" fails the render (the house rule); "default" prints
	// "<no value>" and makes {{if $m.nokey}} false, as confd does; "zero"
	// gives the element type's zero value. (text/template's missingkey.)
	MissingKey string
	// Getenv looks up environment variables for getenv; nil means os.Getenv.
	Getenv func(string) string
	// Hostname answers hostname; nil means os.Hostname.
	Hostname func() (string, error)
	// Now answers datetime; nil means time.Now.
	Now func() time.Time
	// LookupIP resolves names for lookupIP, lookupIPV4 and lookupIPV6; nil
	// means net.LookupIP.
	LookupIP func(host string) ([]net.IP, error)
	// LookupSRV resolves lookupSRV; nil means net.LookupSRV.
	LookupSRV func(service, proto, name string) (string, []*net.SRV, error)
	// InterfaceAddrs lists an interface's addresses for lookupIfaceIPV4/6;
	// nil means the host's interfaces (net.InterfaceByName).
	InterfaceAddrs func(name string) ([]net.Addr, error)
}

func (o *Options) getenv(key string) string {
	if o.Getenv != nil {
		return o.Getenv(key)
	}
	return os.Getenv(key)
}

func (o *Options) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

func (o *Options) includeDepth() int {
	if o.IncludeDepth > 0 {
		return o.IncludeDepth
	}
	return 10
}

// Template is a parsed template, ready to render many snapshots. Safe for
// concurrent use.
type Template struct {
	name  string
	opts  Options
	funcs texttemplate.FuncMap // the full map; store functions unbound
	base  *texttemplate.Template
	pool  sync.Pool // *execState: a clone of base bound to its own binding
	// lastSize is the length of the last output of Render: the next one
	// starts with that much room (outputs change little between renders).
	lastSize atomic.Int64
	// spare is an output handed back with Recycle, for the next Render to
	// write into: a watch re-renders the same large file again and again.
	spare atomic.Pointer[[]byte]
}

// execState is one ready-to-run copy of a template whose store functions
// read b.
type execState struct {
	t *texttemplate.Template
	b *binding
}

// binding is what the store functions and include of one execution read.
// It is used by one goroutine at a time (execStates are pooled).
type binding struct {
	t     *Template
	store *Store
	depth int      // includes currently nested
	stack []string // names being rendered, for cycle detection
	full  texttemplate.FuncMap
	// includes caches the files included during the current render.
	includes map[string]*texttemplate.Template
}

// FuncNames returns the name of every function a template can call, sorted.
func FuncNames() []string {
	m := buildFuncs(&Options{}, &binding{})
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// ownFuncs is everything that is not sprig: confd's functions, the fork's and
// the store functions bound to b.
func ownFuncs(o *Options, b *binding) texttemplate.FuncMap {
	m := confdFuncs(o)
	for n, f := range forkFuncs(o) {
		m[n] = f
	}
	for n, f := range boundFuncs(b) {
		m[n] = f
	}
	return m
}

// boundFuncs are the functions that read a binding.
func boundFuncs(b *binding) texttemplate.FuncMap {
	m := storeFuncs(b)
	m["include"] = b.include
	return m
}

// builtins are text/template's own functions. confd templates rely on them,
// so a sprig function of the same name (sprig's slice) must not shadow them.
var builtins = []string{"and", "call", "html", "index", "slice", "js", "len", "not", "or",
	"print", "printf", "println", "urlquery", "eq", "ge", "gt", "le", "lt", "ne"}

// buildFuncs merges hermetic sprig under our functions; a sprig function
// whose name we or text/template take is kept as "sprig_<name>".
func buildFuncs(o *Options, b *binding) texttemplate.FuncMap {
	m := sprig.HermeticTxtFuncMap()
	for _, n := range builtins {
		if sf, ok := m[n]; ok {
			m["sprig_"+n] = sf
			delete(m, n)
		}
	}
	for n, f := range ownFuncs(o, b) {
		if sf, ok := m[n]; ok {
			m["sprig_"+n] = sf
		}
		m[n] = f
	}
	return m
}

func (o *Options) missingKey() string {
	if o.MissingKey == "" {
		return "error"
	}
	return o.MissingKey
}

func newText(name string, o *Options, funcs texttemplate.FuncMap) *texttemplate.Template {
	t := texttemplate.New(name).Option("missingkey=" + o.missingKey())
	if o.Delims[0] != "" && o.Delims[1] != "" {
		t = t.Delims(o.Delims[0], o.Delims[1])
	}
	return t.Funcs(funcs)
}

// Parse parses text as the template called name (the file name, used in
// errors and as the start of include cycle detection).
func Parse(name string, text []byte, opts Options) (*Template, error) {
	switch opts.MissingKey {
	case "", "error", "default", "zero", "invalid":
	default:
		return nil, fmt.Errorf("parse template %s: missing key option %q: want error, default or zero", name, opts.MissingKey)
	}
	t := &Template{name: name, opts: opts}
	t.funcs = buildFuncs(&t.opts, &binding{t: t})
	base, err := newText(name, &t.opts, t.funcs).Parse(string(text))
	if err != nil {
		return nil, parseError(name, err)
	}
	t.base = base
	return t, nil
}

// Name returns the name the template was parsed with.
func (t *Template) Name() string { return t.name }

func (t *Template) state() (*execState, error) {
	if st, ok := t.pool.Get().(*execState); ok {
		return st, nil
	}
	b := &binding{t: t}
	c, err := t.base.Clone()
	if err != nil {
		return nil, fmt.Errorf("render template %s: %w", t.name, err)
	}
	c.Funcs(boundFuncs(b))
	return &execState{t: c, b: b}, nil
}

// Execute renders the template against s into w. On error, w may hold part
// of the output: render into a buffer (Render) when that matters. A nil s is
// an empty store.
func (t *Template) Execute(w io.Writer, s *Store) error {
	return t.ExecuteData(w, s, nil)
}

// ExecuteData is Execute with data as the template's dot (Execute's is
// nil, as confd's): a resource with one output per key gives each its name
// and key this way.
func (t *Template) ExecuteData(w io.Writer, s *Store, data any) error {
	if s == nil {
		s = NewStore(nil)
	}
	st, err := t.state()
	if err != nil {
		return err
	}
	st.b.store, st.b.depth, st.b.stack = s, 0, append(st.b.stack[:0], cleanName(t.name))
	err = st.t.Execute(w, data)
	st.b.store = nil
	clear(st.b.includes)
	t.pool.Put(st)
	if err != nil {
		return execError(t.name, err)
	}
	return nil
}

// SizeHint tells Render how large its first output will likely be (say,
// the size of the file it will replace), so that the first render, too,
// writes into a buffer allocated once. Later renders size theirs from the
// last output.
func (t *Template) SizeHint(n int) {
	t.lastSize.CompareAndSwap(0, int64(n))
}

// Render renders the template against s and returns the bytes.
func (t *Template) Render(s *Store) ([]byte, error) {
	return t.RenderData(s, nil)
}

// RenderData is Render with data as the template's dot (see ExecuteData).
func (t *Template) RenderData(s *Store, data any) ([]byte, error) {
	n := int(t.lastSize.Load())
	n += n / 16
	if n == 0 && s != nil {
		// No output yet and no hint: guess the snapshot's size, which
		// templates that list their keys come close to. The room is only
		// reserved: pages it does not fill are never touched, where
		// growing by doubling touches every size on the way and copies.
		n = min(s.size+s.size/2, maxSizeGuess)
	}
	var b []byte
	if p := t.spare.Swap(nil); p != nil && cap(*p) >= n {
		b = (*p)[:0]
	} else {
		b = make([]byte, 0, n)
	}
	buf := bytes.NewBuffer(b)
	if err := t.ExecuteData(buf, s, data); err != nil {
		return nil, err
	}
	t.lastSize.Store(int64(buf.Len()))
	return buf.Bytes(), nil
}

// maxSizeGuess bounds the room a first render reserves from the size of
// its snapshot.
const maxSizeGuess = 64 << 20

// Recycle hands back an output of Render that the caller no longer uses
// (nor anything it gave it to): a later Render may write over it.
func (t *Template) Recycle(b []byte) {
	if cap(b) > 0 {
		t.spare.Store(&b)
	}
}

// tmplError is a parse or render error located in a template.
type tmplError struct {
	op  string // "parse" or "render"
	loc string // "name" or "name:line"
	msg string
	err error
}

func (e *tmplError) Error() string { return e.op + " template " + e.loc + ": " + e.msg }
func (e *tmplError) Unwrap() error { return e.err }

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// parseError turns text/template's "template: name:3: msg" into
// "parse template name:3: msg".
func parseError(name string, err error) error {
	text := strings.TrimPrefix(err.Error(), "template: ")
	loc, msg := name, text
	if rest, ok := strings.CutPrefix(text, name+":"); ok {
		if line, m, ok := strings.Cut(rest, ": "); ok && isDigits(line) {
			loc, msg = name+":"+line, m
		}
	}
	return &tmplError{op: "parse", loc: loc, msg: msg, err: err}
}

// execError turns text/template's
//
//	template: name:12:7: executing "name" at <getv "/x">: error calling getv: …
//
// into "render template name:12: getv: …", keeping the cause for errors.As.
func execError(name string, err error) error {
	var ee texttemplate.ExecError
	if !errors.As(err, &ee) {
		return &tmplError{op: "render", loc: name, msg: err.Error(), err: err}
	}
	text := strings.TrimPrefix(ee.Err.Error(), "template: ")
	loc, msg := name, text
	if i := strings.Index(text, `: executing "`); i >= 0 {
		loc, msg = text[:i], text[i+2:]
		if j := strings.LastIndexByte(loc, ':'); j >= 0 && isDigits(loc[j+1:]) {
			loc = loc[:j] // drop the column
		}
	} else if rest, ok := strings.CutPrefix(text, ee.Name+": "); ok {
		msg = rest
	}
	if rest, ok := strings.CutPrefix(msg, "executing "); ok {
		// `executing "name" at <ctx>: …` → `at <ctx>: …`
		if k := strings.Index(rest, `" at <`); k >= 0 {
			msg = rest[k+2:]
		}
	}
	cause := errors.Unwrap(ee.Err)
	if cause == nil {
		return &tmplError{op: "render", loc: loc, msg: msg, err: err}
	}
	head := strings.TrimSuffix(msg, cause.Error())
	msg = cause.Error()
	if i := strings.LastIndex(head, "error calling "); i >= 0 {
		fn := strings.TrimSuffix(head[i+len("error calling "):], ": ")
		if !strings.HasPrefix(msg, fn+":") && !strings.HasPrefix(msg, fn+" ") {
			msg = fn + ": " + msg
		}
	}
	return &tmplError{op: "render", loc: loc, msg: msg, err: cause}
}
