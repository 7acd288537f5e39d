package template

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	texttemplate "text/template"
)

// ErrIncludeEscape is wrapped by include errors for names that are absolute
// or climb out of Options.Dir.
var ErrIncludeEscape = errors.New("template: include path leaves the template directory")

// ErrIncludeCycle is wrapped by include errors for a template that includes
// itself, directly or through others.
var ErrIncludeCycle = errors.New("template: include cycle")

// cleanName is the form of a template name used for cycle detection.
func cleanName(name string) string { return filepath.Clean(filepath.FromSlash(name)) }

// include renders another template of Options.Dir with the same functions
// and store, and returns its output (the fork's include). data, when given,
// is the included template's dot.
func (b *binding) include(name string, data ...any) (string, error) {
	out, err := b.includeFile(name, data...)
	if err != nil {
		return "", fmt.Errorf("include %q: %w", name, err)
	}
	return out, nil
}

func (b *binding) includeFile(name string, data ...any) (string, error) {
	t := b.t
	if t.opts.Dir == "" {
		return "", errors.New("no template directory (Options.Dir) to include from")
	}
	if !filepath.IsLocal(filepath.FromSlash(name)) {
		return "", ErrIncludeEscape
	}
	clean := cleanName(name)
	if slices.Contains(b.stack, clean) {
		return "", fmt.Errorf("%w: %s → %s", ErrIncludeCycle, strings.Join(b.stack, " → "), clean)
	}
	if b.depth >= t.opts.includeDepth() {
		return "", fmt.Errorf("includes nested deeper than %d", t.opts.includeDepth())
	}
	inc, ok := b.includes[clean]
	if !ok {
		var err error
		if inc, err = b.parseInclude(name, clean); err != nil {
			return "", err
		}
		if b.includes == nil {
			b.includes = make(map[string]*texttemplate.Template)
		}
		b.includes[clean] = inc
	}
	var dot any
	if len(data) > 0 {
		dot = data[0]
	}
	b.depth++
	b.stack = append(b.stack, clean)
	var buf bytes.Buffer
	err := inc.Execute(&buf, dot)
	b.depth--
	b.stack = b.stack[:len(b.stack)-1]
	if err != nil {
		return "", execError(name, err)
	}
	return buf.String(), nil
}

// parseInclude reads and parses an included file. Within one render each
// file is read once (b.includes); the next render reads it again, so edits
// are picked up.
func (b *binding) parseInclude(name, clean string) (*texttemplate.Template, error) {
	t := b.t
	// os.Root refuses symlinks and ".." that would leave the directory.
	root, err := os.OpenRoot(t.opts.Dir)
	if err != nil {
		return nil, err
	}
	text, err := root.ReadFile(clean)
	if err != nil && escapes(root, err) {
		err = fmt.Errorf("%w: %w", ErrIncludeEscape, err)
	}
	root.Close()
	if err != nil {
		return nil, err
	}
	if b.full == nil {
		b.full = make(texttemplate.FuncMap, len(t.funcs))
		for n, f := range t.funcs {
			b.full[n] = f
		}
		for n, f := range boundFuncs(b) {
			b.full[n] = f
		}
	}
	inc, err := newText(name, &t.opts, b.full).Parse(string(text))
	if err != nil {
		return nil, parseError(name, err)
	}
	return inc, nil
}

// escapes reports whether err is root's refusal of a path that leaves it (a
// symlink pointing out of the directory). package os keeps that error
// unexported, so it is taken from a name that leaves root whatever the
// directory holds, "..", and compared with errors.Is.
func escapes(root *os.Root, err error) bool {
	_, probe := root.Stat("..")
	var pe *os.PathError
	return errors.As(probe, &pe) && errors.Is(err, pe.Err)
}
