package resources

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/flotilla/flotilla/internal/atomicfile"
)

// PerKind says what one output of a resource with several stands for.
type PerKind string

// The kinds of several outputs: none (one file, Dest), one per key below
// PerPrefix, one per directory right below PerPrefix.
const (
	PerNone PerKind = ""
	PerKey  PerKind = "key"
	PerDir  PerKind = "dir"
)

// NamePlaceholder is replaced in dest_name by an output's name.
const NamePlaceholder = "{name}"

// setOutputs reads dest_dir, per_key, per_dir and dest_name.
func (r *Resource) setOutputs(t *tomlTemplate, _ LoadOptions) error {
	if t.DestDir == "" {
		if t.PerKey != "" || t.PerDir != "" || t.DestName != "" {
			return errors.New("template.per_key, per_dir and dest_name need a dest_dir")
		}
		return nil
	}
	switch {
	case t.Dest != "":
		return errors.New("template.dest and template.dest_dir are exclusive: dest_dir writes one file per key or directory")
	case (t.PerKey == "") == (t.PerDir == ""):
		return errors.New("template.dest_dir needs exactly one of per_key and per_dir")
	case t.Backup:
		return errors.New("template.backup is not supported with dest_dir")
	case !filepath.IsAbs(t.DestDir):
		return fmt.Errorf("template.dest_dir %q: want an absolute path", t.DestDir)
	}
	r.Per, r.PerPrefix = PerKey, t.PerKey
	if t.PerDir != "" {
		r.Per, r.PerPrefix = PerDir, t.PerDir
	}
	r.PerPrefix = path.Join("/", r.PerPrefix)
	if !r.Match(path.Join(r.Prefix, r.PerPrefix)) {
		return fmt.Errorf("template.per_%s %q: not below any of keys", r.Per, r.PerPrefix)
	}
	r.DestDir = filepath.Clean(t.DestDir)
	r.Dest = r.DestDir
	r.DestName = t.DestName
	if r.DestName == "" {
		r.DestName = NamePlaceholder
	}
	if strings.Count(r.DestName, NamePlaceholder) != 1 {
		return fmt.Errorf("template.dest_name %q: want %s exactly once", r.DestName, NamePlaceholder)
	}
	if probe := strings.Replace(r.DestName, NamePlaceholder, "x", 1); !filepath.IsLocal(probe) || strings.ContainsRune(probe, '/') {
		return fmt.Errorf("template.dest_name %q: want a file name, no directory", r.DestName)
	}
	return nil
}

// Output is one file of a resource with several outputs.
type Output struct {
	// Name is the part of the key (PerKey) or of the directory (PerDir)
	// below PerPrefix: "web" for /services/web.
	Name string
	// Key is the key or directory as the template sees it ("/services/web");
	// Value is the key's value (PerKey only).
	Key, Value string
	// Path is the file, relative to DestDir.
	Path string
}

// Data is what the template sees as its dot: .name, .key and, for one
// output per key, .value.
func (o Output) Data(per PerKind) map[string]string {
	d := map[string]string{"name": o.Name, "key": o.Key}
	if per == PerKey {
		d["value"] = o.Value
	}
	return d
}

// Outputs lists r's outputs for the keys (as the template sees them,
// sorted, each with its value from get). A name that would leave DestDir or
// name a hidden file (where render keeps its own state) is no output: it
// comes back as an error naming the key, and the others are kept.
func (r *Resource) Outputs(keys []string, get func(string) string) ([]Output, []error) {
	var outs []Output
	var errs []error
	seen := map[string]bool{}
	base := r.PerPrefix
	if base != "/" {
		base += "/"
	}
	for _, k := range keys {
		if !strings.HasPrefix(k, base) || len(k) == len(base) {
			continue
		}
		name, below := k[len(base):], ""
		if r.Per == PerDir {
			var ok bool
			if name, below, ok = strings.Cut(name, "/"); !ok || below == "" {
				continue // a key right below per_dir is no directory
			}
		}
		if seen[name] {
			continue
		}
		seen[name] = true
		if err := checkName(name); err != nil {
			errs = append(errs, fmt.Errorf("resource %s: key %q: %w", r.Name, k, err))
			continue
		}
		o := Output{Name: name, Key: path.Join(r.PerPrefix, name), Path: filepath.FromSlash(strings.Replace(r.DestName, NamePlaceholder, name, 1))}
		if r.Per == PerKey {
			o.Value = get(k)
		}
		outs = append(outs, o)
	}
	return outs, errs
}

// checkName refuses output names that would not stay inside DestDir as a
// visible file: absolute, "..", empty parts, hidden parts.
func checkName(name string) error {
	if !filepath.IsLocal(name) || path.Clean(name) != name {
		return fmt.Errorf("output name %q would leave dest_dir", name)
	}
	for _, part := range strings.Split(name, "/") {
		if strings.HasPrefix(part, ".") {
			return fmt.Errorf("output name %q has a hidden part", name)
		}
	}
	return nil
}

// manifestName is the file in DestDir that lists the outputs r put there,
// so that those whose key went away are removed (and nothing else is).
func (r *Resource) manifestName() string { return "." + r.Name + ".outputs" }

// ApplyEach puts every output in place inside DestDir, as Apply does for
// one file (each staged, checked with check_cmd, renamed), with render
// giving each one's content; then it removes the files of outputs that
// went away since the last ApplyEach (a list of them is kept in DestDir).
// Nothing is read or written outside DestDir: a symbolic link pointing out
// of it is an error for that output. An output that fails to render or
// check keeps its previous file; the others go ahead. It reports whether
// any file changed or went away (with Noop: would) and the errors of the
// outputs that failed. It does not run reload_cmd.
func (r *Resource) ApplyEach(ctx context.Context, outs []Output, render func(Output) ([]byte, error), opts ApplyOptions) (changed bool, err error) {
	if r.CreateDestDir && !opts.Noop {
		if err := os.MkdirAll(r.DestDir, 0o755); err != nil {
			return false, fmt.Errorf("render %s: create_dest_dir %s: %w", r.Name, r.DestDir, err)
		}
	}
	root, err := os.OpenRoot(r.DestDir)
	if err != nil && opts.Noop && errors.Is(err, os.ErrNotExist) {
		return r.noopNew(outs, render, opts)
	}
	if err != nil {
		return false, fmt.Errorf("render %s: open dest_dir: %w", r.Name, err)
	}
	defer root.Close()
	before := readManifest(root, r.manifestName())
	var errs []error
	var placed []string
	for _, o := range outs {
		ch, err := r.applyOutput(ctx, root, o, render, opts)
		if err != nil {
			errs = append(errs, err)
			if before[o.Path] {
				placed = append(placed, o.Path) // its last good file stays
			}
			delete(before, o.Path)
			continue
		}
		changed = changed || ch
		placed = append(placed, o.Path)
		delete(before, o.Path)
	}
	for _, gone := range slices.Sorted(maps.Keys(before)) {
		if opts.Noop {
			if opts.Diff != nil {
				fmt.Fprintf(opts.Diff, "would remove %s\n", filepath.Join(r.DestDir, gone))
			}
			changed = true
			continue
		}
		if err := root.Remove(gone); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("render %s: remove %s: %w", r.Name, filepath.Join(r.DestDir, gone), err))
			placed = append(placed, gone) // try again next time
			continue
		}
		opts.logger().Info("output removed: its key went away", "dest", filepath.Join(r.DestDir, gone))
		changed = true
	}
	if !opts.Noop {
		slices.Sort(placed)
		if err := writeManifest(root, r.manifestName(), placed); err != nil {
			errs = append(errs, fmt.Errorf("render %s: %w", r.Name, err))
		}
	}
	return changed, errors.Join(errs...)
}

// noopNew is ApplyEach with Noop where DestDir does not exist yet: every
// output would be a new file.
func (r *Resource) noopNew(outs []Output, render func(Output) ([]byte, error), opts ApplyOptions) (bool, error) {
	var errs []error
	for _, o := range outs {
		content, err := render(o)
		if err == nil {
			err = validateFormat(r.OutputFormat, content)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("render %s: output %s (key %s): %w", r.Name, o.Path, o.Key, err))
			continue
		}
		opts.diff(filepath.Join(r.DestDir, o.Path), nil, content)
	}
	return len(outs) > len(errs), errors.Join(errs...)
}

func (r *Resource) applyOutput(ctx context.Context, root *os.Root, o Output, render func(Output) ([]byte, error), opts ApplyOptions) (bool, error) {
	label := fmt.Sprintf("%s: output %s (key %s)", r.Name, o.Path, o.Key)
	content, err := render(o)
	if err != nil {
		return false, fmt.Errorf("render %s: %w", label, err)
	}
	if d := filepath.Dir(o.Path); d != "." && !opts.Noop {
		if err := root.MkdirAll(d, 0o755); err != nil {
			return false, fmt.Errorf("render %s: %w", label, err)
		}
	}
	return r.applyIn(ctx, root, r.DestDir, o.Path, label, content, opts)
}

// readManifest returns the paths listed in the manifest (none when it is
// missing). Only local paths count: a hand-edited line cannot make render
// remove a file outside the directory (root would refuse anyway).
func readManifest(root *os.Root, name string) map[string]bool {
	b, err := root.ReadFile(name)
	if err != nil {
		return map[string]bool{}
	}
	m := map[string]bool{}
	for _, l := range strings.Split(string(b), "\n") {
		if l != "" && checkName(filepath.ToSlash(l)) == nil {
			m[l] = true
		}
	}
	return m
}

func writeManifest(root *os.Root, name string, paths []string) error {
	var b strings.Builder
	for _, p := range paths {
		b.WriteString(p)
		b.WriteByte('\n')
	}
	if old, err := root.ReadFile(name); err == nil && string(old) == b.String() {
		return nil
	}
	staged, err := atomicfile.Stage(root, name, []byte(b.String()), atomicfile.Owner{Mode: 0o644, UID: -1, GID: -1})
	if err != nil {
		return fmt.Errorf("write the list of outputs: %w", err)
	}
	if err := staged.Commit(); err != nil {
		staged.Discard()
		return fmt.Errorf("write the list of outputs: %w", err)
	}
	return nil
}
