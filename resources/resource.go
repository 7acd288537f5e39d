// Package resources reads confd template resources (conf.d/*.toml files with a
// [template] table) strictly, validates them, and carries out the cycle that
// puts a rendered file in place: stage → check → rename → reload.
//
// It is importable by other programs: it knows nothing of etcd or of the
// render loop. A Resource is immutable once loaded and safe for concurrent use;
// Apply and Reload touch the file system and run commands.
package resources

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Default command timeouts (confd has none; the fork defaults to none as well,
// but a hung reload must never hang the renderer forever).
const (
	DefaultCheckTimeout  = 30 * time.Second
	DefaultReloadTimeout = 60 * time.Second
)

// Wait is a quiescence window: render once no change arrived for Min, and at
// the latest Max after the first change. The zero value renders at once.
type Wait struct {
	Min, Max time.Duration
}

// IsZero reports whether w renders at once.
func (w Wait) IsZero() bool { return w.Min == 0 && w.Max == 0 }

func (w Wait) String() string {
	if w.IsZero() {
		return ""
	}
	return w.Min.String() + ":" + w.Max.String()
}

// ParseWait parses "min:max" or "min" (max = 4×min) as Go durations.
func ParseWait(s string) (Wait, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Wait{}, nil
	}
	lo, hi, two := strings.Cut(s, ":")
	min, err := time.ParseDuration(strings.TrimSpace(lo))
	if err != nil {
		return Wait{}, fmt.Errorf("wait %q: min: %w", s, err)
	}
	max := 4 * min
	if two {
		if max, err = time.ParseDuration(strings.TrimSpace(hi)); err != nil {
			return Wait{}, fmt.Errorf("wait %q: max: %w", s, err)
		}
	}
	if min < 0 || max < min {
		return Wait{}, fmt.Errorf("wait %q: want 0 <= min <= max", s)
	}
	return Wait{Min: min, Max: max}, nil
}

// Resource is one loaded template resource. Paths are absolute or as given;
// Keys are full etcd keys (global prefix, resource prefix and key joined).
type Resource struct {
	// File is the resource file it was read from; Name its base name.
	File, Name string
	// Src is the template file (inside the templates directory); Dest the
	// file written.
	Src, Dest string
	// Prefix is the joined global and resource prefix ("/" when none): keys
	// are read with it and templates see them without it.
	Prefix string
	// Keys are the full keys (Prefix joined) whose subtrees feed the template.
	Keys []string
	// UID and GID own Dest; Mode is its permission bits. ModeSet is false when
	// the file gave no mode: an existing Dest keeps its mode, else 0644.
	UID, GID int
	Mode     os.FileMode
	ModeSet  bool
	// CheckCmd and ReloadCmd are shell command templates ({{.src}}, {{.dest}}).
	CheckCmd, ReloadCmd         string
	CheckTimeout, ReloadTimeout time.Duration
	// OutputFormat, when set (json, yaml, toml, xml), must parse or the file
	// is refused.
	OutputFormat string
	// MinReloadInterval defers (never drops) a reload that comes sooner.
	MinReloadInterval time.Duration
	// ReloadGroup names the reload this resource shares with others (TOML
	// reload_group): resources of one group that change within one
	// quiescence window cause one reload, the reload_cmd of the first of
	// them by file name. Empty: the group is the expanded reload_cmd, so
	// resources with the same command share it (see ReloadKey).
	ReloadGroup string
	// Wait is the resource's own quiescence window (zero: the global one).
	Wait Wait
	// Backup keeps the previous Dest as Dest+".bak"; CreateDestDir makes the
	// destination directory; KeepStageFile leaves the staged file behind.
	Backup, CreateDestDir, KeepStageFile bool
	// Delims replaces "{{" "}}" when set.
	Delims [2]string
	// MissingKey is what a template does with a missing map key ($m.nokey):
	// "" or "default" as confd does (false in an if, "<no value>" printed),
	// "error" to fail the render. An addition: confd files keep their meaning.
	MissingKey string
	// Per, when set, makes the resource write several files: one per key
	// (PerKey) or per directory (PerDir) found below PerPrefix, each named
	// by DestName inside DestDir (see Outputs and ApplyEach). Dest is then
	// DestDir.
	Per       PerKind
	PerPrefix string
	DestDir   string
	DestName  string
	// Warnings are non-fatal findings (unknown keys without strict mode).
	Warnings []string
}

// file is the TOML shape: confd's fields, the fork's, and ours.
type file struct {
	Template *tomlTemplate `toml:"template"`
}

type tomlTemplate struct {
	Src            string   `toml:"src"`
	Dest           string   `toml:"dest"`
	Keys           []string `toml:"keys"`
	Prefix         string   `toml:"prefix"`
	Owner          string   `toml:"owner"`
	User           string   `toml:"user"`
	Group          string   `toml:"group"`
	Mode           string   `toml:"mode"`
	UID            *int     `toml:"uid"`
	GID            *int     `toml:"gid"`
	CheckCmd       string   `toml:"check_cmd"`
	ReloadCmd      string   `toml:"reload_cmd"`
	ReloadGroup    string   `toml:"reload_group"`
	CheckTimeout   duration `toml:"check_cmd_timeout"`
	ReloadTimeout  duration `toml:"reload_cmd_timeout"`
	ReloadTimeout2 duration `toml:"reload_timeout"`
	OutputFormat   string   `toml:"output_format"`
	MinReload      duration `toml:"min_reload_interval"`
	Debounce       duration `toml:"debounce"`
	Wait           string   `toml:"wait"`
	Backup         bool     `toml:"backup"`
	CreateDestDir  bool     `toml:"create_dest_dir"`
	KeepStageFile  bool     `toml:"keep_stage_file"`
	Delims         []string `toml:"delims"`
	MissingKey     string   `toml:"missingkey"`
	DestDir        string   `toml:"dest_dir"`
	PerKey         string   `toml:"per_key"`
	PerDir         string   `toml:"per_dir"`
	DestName       string   `toml:"dest_name"`
}

// duration decodes "5s" strings or integer seconds.
type duration struct {
	d   time.Duration
	set bool
}

func (d *duration) UnmarshalTOML(v any) error {
	switch x := v.(type) {
	case string:
		dd, err := time.ParseDuration(x)
		if err != nil {
			return err
		}
		d.d = dd
	case int64:
		d.d = time.Duration(x) * time.Second
	default:
		return fmt.Errorf("want a duration like \"5s\", got %T", v)
	}
	if d.d < 0 {
		return errors.New("negative duration")
	}
	d.set = true
	return nil
}

// LoadOptions say how resource files are read.
type LoadOptions struct {
	// Prefix is the global prefix (-prefix), joined before each resource's.
	Prefix string
	// TemplatesDir is where src is looked up (default <confdir>/templates).
	TemplatesDir string
	// Strict makes unknown keys an error instead of a warning.
	Strict bool
	// KeepStageFile is the global -keep-stage-file.
	KeepStageFile bool
	// CheckTimeout and ReloadTimeout replace DefaultCheckTimeout and
	// DefaultReloadTimeout for resources that set none (zero: keep them).
	CheckTimeout, ReloadTimeout time.Duration
}

// Load reads one resource file. Errors name the file (and line or key).
func Load(filename string, opts LoadOptions) (*Resource, error) {
	b, err := os.ReadFile(filename)
	if err != nil {
		return nil, fmt.Errorf("resource %s: %w", filename, err)
	}
	return Parse(filename, b, opts)
}

// Parse reads a resource from the bytes of filename.
func Parse(filename string, b []byte, opts LoadOptions) (*Resource, error) {
	t, warnings, err := decode(filename, b, opts.Strict)
	if err != nil {
		return nil, err
	}
	r := &Resource{File: filename, Name: filepath.Base(filename), UID: -1, GID: -1, Warnings: warnings}
	for _, step := range []func(*tomlTemplate, LoadOptions) error{
		r.setPaths, r.setOutputs, r.setOwner, r.setCommands, r.setBehaviour,
	} {
		if err := step(t, opts); err != nil {
			return nil, fmt.Errorf("resource %s: %w", filename, err)
		}
	}
	return r, nil
}

// decode reads the TOML strictly (unknown keys are errors with strict, else
// warnings) and checks that the required fields are there.
func decode(filename string, b []byte, strict bool) (*tomlTemplate, []string, error) {
	var f file
	md, err := toml.Decode(string(b), &f)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			if pe.LastKey != "" {
				return nil, nil, fmt.Errorf("resource %s:%d: key %s: %s", filename, pe.Position.Line, pe.LastKey, pe.Message)
			}
			return nil, nil, fmt.Errorf("resource %s:%d: %s", filename, pe.Position.Line, pe.Message)
		}
		return nil, nil, fmt.Errorf("resource %s: %w", filename, err)
	}
	var warnings []string
	for _, k := range md.Undecoded() {
		msg := fmt.Sprintf("resource %s: unknown key %q", filename, k.String())
		if strict {
			return nil, nil, errors.New(msg)
		}
		warnings = append(warnings, msg)
	}
	t := f.Template
	switch {
	case t == nil:
		return nil, nil, fmt.Errorf("resource %s: no [template] table", filename)
	case t.Src == "":
		return nil, nil, fmt.Errorf("resource %s: template.src is required", filename)
	case t.Dest == "" && t.DestDir == "":
		return nil, nil, fmt.Errorf("resource %s: template.dest is required (or dest_dir)", filename)
	case len(t.Keys) == 0:
		return nil, nil, fmt.Errorf("resource %s: template.keys is required", filename)
	}
	return t, warnings, nil
}

// setPaths sets Src, Dest, Prefix and Keys.
func (r *Resource) setPaths(t *tomlTemplate, opts LoadOptions) error {
	tdir := opts.TemplatesDir
	if tdir == "" {
		tdir = filepath.Join(filepath.Dir(filepath.Dir(r.File)), "templates")
	}
	r.Src = t.Src
	if !filepath.IsAbs(r.Src) {
		r.Src = filepath.Join(tdir, t.Src)
	}
	r.Dest = t.Dest
	r.Prefix = path.Join("/", opts.Prefix, t.Prefix)
	seen := map[string]bool{}
	for _, k := range t.Keys {
		full := path.Join(r.Prefix, k)
		if !seen[full] {
			seen[full] = true
			r.Keys = append(r.Keys, full)
		}
	}
	sort.Strings(r.Keys)
	return nil
}

// setOwner sets Mode, UID and GID: uid, then owner/user by name (the fork),
// defaulting to us.
func (r *Resource) setOwner(t *tomlTemplate, _ LoadOptions) error {
	if t.Mode != "" {
		m, err := strconv.ParseUint(t.Mode, 8, 32)
		if err != nil || m > 0o7777 {
			return fmt.Errorf("template.mode %q: want an octal mode like \"0644\"", t.Mode)
		}
		r.Mode, r.ModeSet = os.FileMode(m), true
	}
	if t.UID != nil {
		r.UID = *t.UID
	}
	if t.GID != nil {
		r.GID = *t.GID
	}
	owner := t.Owner
	if owner == "" {
		owner = t.User
	} else if t.User != "" && t.User != t.Owner {
		return fmt.Errorf("template.owner %q and template.user %q disagree", t.Owner, t.User)
	}
	if owner != "" {
		u, err := lookupUser(owner)
		if err != nil {
			return fmt.Errorf("template.owner %q: %w", owner, err)
		}
		if t.UID != nil && *t.UID != u {
			return fmt.Errorf("template.owner %q (uid %d) and template.uid %d disagree", owner, u, *t.UID)
		}
		r.UID = u
	}
	if t.Group != "" {
		g, err := lookupGroup(t.Group)
		if err != nil {
			return fmt.Errorf("template.group %q: %w", t.Group, err)
		}
		if t.GID != nil && *t.GID != g {
			return fmt.Errorf("template.group %q (gid %d) and template.gid %d disagree", t.Group, g, *t.GID)
		}
		r.GID = g
	}
	return nil
}

// setCommands sets check_cmd, reload_cmd, their group and timeouts.
func (r *Resource) setCommands(t *tomlTemplate, opts LoadOptions) error {
	r.CheckCmd, r.ReloadCmd = t.CheckCmd, t.ReloadCmd
	r.ReloadGroup = t.ReloadGroup
	if r.ReloadGroup != "" && r.ReloadCmd == "" {
		return fmt.Errorf("reload_group %q without a reload_cmd", r.ReloadGroup)
	}
	r.CheckTimeout = DefaultCheckTimeout
	if opts.CheckTimeout > 0 {
		r.CheckTimeout = opts.CheckTimeout
	}
	if t.CheckTimeout.set && t.CheckTimeout.d > 0 {
		r.CheckTimeout = t.CheckTimeout.d
	}
	r.ReloadTimeout = DefaultReloadTimeout
	if opts.ReloadTimeout > 0 {
		r.ReloadTimeout = opts.ReloadTimeout
	}
	switch {
	case t.ReloadTimeout.set && t.ReloadTimeout2.set && t.ReloadTimeout.d != t.ReloadTimeout2.d:
		return errors.New("template.reload_cmd_timeout and template.reload_timeout disagree")
	case t.ReloadTimeout.set && t.ReloadTimeout.d > 0:
		r.ReloadTimeout = t.ReloadTimeout.d
	case t.ReloadTimeout2.set && t.ReloadTimeout2.d > 0:
		r.ReloadTimeout = t.ReloadTimeout2.d
	}
	r.MinReloadInterval = t.MinReload.d
	for _, cmd := range []struct{ name, text string }{{"check_cmd", r.CheckCmd}, {"reload_cmd", r.ReloadCmd}} {
		if _, err := expandCmd(cmd.text, "x", "y"); err != nil {
			return fmt.Errorf("template.%s: %w", cmd.name, err)
		}
	}
	return nil
}

// setBehaviour sets output_format, wait, the file options, missingkey and
// delims.
func (r *Resource) setBehaviour(t *tomlTemplate, opts LoadOptions) error {
	switch f := strings.ToLower(t.OutputFormat); f {
	case "", "json", "yaml", "toml", "xml":
		r.OutputFormat = f
	case "yml":
		r.OutputFormat = "yaml"
	default:
		return fmt.Errorf("template.output_format %q: want json, yaml, toml or xml", t.OutputFormat)
	}
	if t.Wait != "" {
		if t.Debounce.set {
			return errors.New("template.wait and template.debounce are exclusive")
		}
		w, err := ParseWait(t.Wait)
		if err != nil {
			return fmt.Errorf("template.%w", err)
		}
		r.Wait = w
	} else if t.Debounce.set {
		r.Wait = Wait{Min: t.Debounce.d, Max: 4 * t.Debounce.d}
	}
	r.Backup, r.CreateDestDir = t.Backup, t.CreateDestDir
	r.KeepStageFile = t.KeepStageFile || opts.KeepStageFile
	switch t.MissingKey {
	case "", "default", "zero", "error":
		r.MissingKey = t.MissingKey
	default:
		return fmt.Errorf("template.missingkey %q: want default, zero or error", t.MissingKey)
	}
	switch len(t.Delims) {
	case 0:
	case 2:
		if t.Delims[0] == "" || t.Delims[1] == "" {
			return errors.New("template.delims: both must be non-empty")
		}
		r.Delims = [2]string{t.Delims[0], t.Delims[1]}
	default:
		return errors.New("template.delims: want [\"left\", \"right\"]")
	}
	return nil
}

// Match reports whether the etcd key k belongs to r: equal to one of its keys
// or below it ("/app" matches "/app" and "/app/x", never "/apple").
func (r *Resource) Match(k string) bool {
	for _, key := range r.Keys {
		if MatchKey(key, k) {
			return true
		}
	}
	return false
}

// MatchKey reports whether k is key or below it.
func MatchKey(key, k string) bool {
	if key == "/" {
		return strings.HasPrefix(k, "/")
	}
	return k == key || (len(k) > len(key) && k[len(key)] == '/' && strings.HasPrefix(k, key))
}

// Relative returns the key as the template sees it: without the prefix,
// cleaned like confd's path.Join("/", strings.TrimPrefix(k, prefix)).
func (r *Resource) Relative(k string) string {
	rel := k
	if r.Prefix != "/" {
		rel = strings.TrimPrefix(k, r.Prefix)
	}
	if len(rel) > 1 && rel[0] == '/' && rel[len(rel)-1] != '/' && !strings.Contains(rel, "//") && !strings.Contains(rel, "/.") {
		return rel // already clean: no allocation
	}
	return path.Join("/", rel)
}

// Files lists the resource files in dir: every *.toml, sorted by name. A
// missing dir has none.
func Files(dir string) ([]string, error) {
	names, err := filepath.Glob(filepath.Join(dir, "*.toml"))
	if err != nil {
		return nil, fmt.Errorf("resources in %s: %w", dir, err)
	}
	sort.Strings(names)
	return names, nil
}

// LoadDir loads every resource file in dir (see Files). Files that fail
// are reported in errs; the others are returned.
func LoadDir(dir string, opts LoadOptions) (res []*Resource, errs []error) {
	names, err := Files(dir)
	if err != nil {
		return nil, []error{err}
	}
	for _, n := range names {
		r, err := Load(n, opts)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		res = append(res, r)
	}
	return res, errs
}

// Equal reports whether two resources mean the same.
func (r *Resource) Equal(o *Resource) bool {
	if r == nil || o == nil {
		return r == o
	}
	a, b := *r, *o
	a.Warnings, b.Warnings = nil, nil
	return fmt.Sprintf("%#v", a) == fmt.Sprintf("%#v", b)
}

func lookupUser(name string) (int, error) {
	if n, err := strconv.Atoi(name); err == nil {
		return n, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(u.Uid)
}

func lookupGroup(name string) (int, error) {
	if n, err := strconv.Atoi(name); err == nil {
		return n, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(g.Gid)
}
