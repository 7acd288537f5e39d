// Package template renders confd-style templates: Go text/template with
// confd's function set over a snapshot of etcd keys, plus hermetic sprig.
// Rendering is pure: (template, snapshot) → bytes.
//
// THIS FILE IS THE CONTRACT between template/ and its users (resources/,
// internal/render). Its exported API may grow; its signatures should not change
// without updating every caller.
package template

import (
	"bytes"
	"fmt"
	"io"
	"sort"
	"strings"
	texttemplate "text/template"
)

// KVPair is one key and value as templates see them (confd's memkv.KVPair):
// Key is relative to the resource's prefix, always starting with "/".
type KVPair struct {
	Key   string
	Value string
}

// Store is the snapshot a template renders from. Keys are absolute within
// the snapshot ("/clusterstate/ns/nginx@1.service"). Safe for concurrent reads;
// Set and Delete must not run concurrently with rendering.
type Store struct {
	m map[string]string
}

// NewStore returns a store holding kvs (copied).
func NewStore(kvs map[string]string) *Store {
	s := &Store{m: make(map[string]string, len(kvs))}
	for k, v := range kvs {
		s.m[k] = v
	}
	return s
}

// Set sets key to value.
func (s *Store) Set(key, value string) { s.m[key] = value }

// Delete removes key.
func (s *Store) Delete(key string) { delete(s.m, key) }

// Len returns the number of keys.
func (s *Store) Len() int { return len(s.m) }

// Get returns a key's value.
func (s *Store) Get(key string) (string, bool) {
	v, ok := s.m[key]
	return v, ok
}

// Keys returns every key, sorted.
func (s *Store) Keys() []string {
	ks := make([]string, 0, len(s.m))
	for k := range s.m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// Options changes how a template is parsed and rendered. The zero value is
// confd's behaviour.
type Options struct {
	// Delims overrides "{{" and "}}" when both are set.
	Delims [2]string
	// Dir is the templates directory: `include` is confined to it.
	Dir string
	// Getenv looks up environment variables for getenv; nil means os.Getenv.
	Getenv func(string) string
}

// Template is a parsed template, ready to render many snapshots. Safe for
// concurrent use.
type Template struct {
	name string
	t    *texttemplate.Template
}

// Parse parses text as the template called name (the file name, used in errors).
func Parse(name string, text []byte, opts Options) (*Template, error) {
	t := texttemplate.New(name)
	if opts.Delims[0] != "" && opts.Delims[1] != "" {
		t = t.Delims(opts.Delims[0], opts.Delims[1])
	}
	t, err := t.Parse(string(text))
	if err != nil {
		return nil, fmt.Errorf("parse template %s: %w", name, err)
	}
	return &Template{name: name, t: t}, nil
}

// Execute renders the template against s into w.
func (t *Template) Execute(w io.Writer, s *Store) error {
	if err := t.t.Execute(w, nil); err != nil {
		return fmt.Errorf("render template %s: %w", t.name, strings.TrimPrefix(err.Error(), "template: "))
	}
	return nil
}

// Render renders the template against s and returns the bytes.
func (t *Template) Render(s *Store) ([]byte, error) {
	var buf bytes.Buffer
	if err := t.Execute(&buf, s); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
