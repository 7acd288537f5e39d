package resources

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	texttemplate "text/template"
	"time"

	"github.com/BurntSushi/toml"
	"go.yaml.in/yaml/v2"

	"github.com/flotilla/flotilla/internal/atomicfile"
)

// ApplyOptions change how Apply puts a rendered file in place.
type ApplyOptions struct {
	// Noop writes nothing: when the file would change, a unified diff goes to
	// Diff (if set) and Apply reports the change.
	Noop bool
	Diff io.Writer
	// DiffContext is the lines of context in that diff (0:
	// DefaultDiffContext, NoDiffContext: none); DiffColor colours it;
	// DiffNamesOnly prints only "would change DEST" instead.
	DiffContext   int
	DiffColor     bool
	DiffNamesOnly bool
	// SyncOnly skips check_cmd (and the caller skips reload_cmd).
	SyncOnly bool
	// Logger receives command output; nil discards it.
	Logger *slog.Logger
}

// Apply puts content at r.Dest when it differs from what is there (content,
// mode or owner): staged in Dest's directory with its final mode from the
// first byte, fsynced, checked with check_cmd, then renamed over Dest. It
// reports whether Dest changed (or, with Noop, would change). On any error
// Dest is untouched. Apply does not run reload_cmd: see Reload.
func (r *Resource) Apply(ctx context.Context, content []byte, opts ApplyOptions) (changed bool, err error) {
	dir := filepath.Dir(r.Dest)
	if r.CreateDestDir && !opts.Noop {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return false, fmt.Errorf("render %s: create_dest_dir %s: %w", r.Name, dir, err)
		}
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		if opts.Noop && errors.Is(err, os.ErrNotExist) {
			if err := validateFormat(r.OutputFormat, content); err != nil {
				return false, fmt.Errorf("render %s: output is not valid %s: %w", r.Name, r.OutputFormat, err)
			}
			opts.diff(r.Dest, nil, content)
			return true, nil
		}
		return false, fmt.Errorf("render %s: open %s: %w", r.Name, dir, err)
	}
	defer root.Close()
	return r.applyIn(ctx, root, dir, filepath.Base(r.Dest), r.Name, content, opts)
}

// applyIn is Apply for the file name (a local path) inside root, the
// directory dir: nothing outside root is read or written. Errors start
// "render LABEL:".
func (r *Resource) applyIn(ctx context.Context, root *os.Root, dir, name, label string, content []byte, opts ApplyOptions) (changed bool, err error) {
	log := opts.logger()
	dest := filepath.Join(dir, name)
	if err := validateFormat(r.OutputFormat, content); err != nil {
		return false, fmt.Errorf("render %s: output is not valid %s: %w", label, r.OutputFormat, err)
	}
	mode, uid, gid := r.Mode, r.UID, r.GID
	if uid < 0 {
		uid = os.Geteuid()
	}
	if gid < 0 {
		gid = os.Getegid()
	}
	st, statErr := root.Stat(name)
	if !r.ModeSet {
		mode = 0o644
		if statErr == nil {
			mode = st.Mode().Perm()
		}
	}
	if statErr == nil && st.Mode().IsRegular() && st.Size() == int64(len(content)) && sameOwnerMode(st, mode, uid, gid) && fileHolds(root, name, content) {
		return false, nil
	}
	if opts.Noop {
		old, oldErr := root.ReadFile(name)
		if oldErr != nil {
			old = nil
		}
		if !opts.diff(dest, old, content) && statErr == nil && opts.Diff != nil {
			fmt.Fprintf(opts.Diff, "%s: mode/owner %v %d:%d → %v %d:%d\n", dest, st.Mode().Perm(), statUID(st), statGID(st), mode, uid, gid)
		}
		return true, nil
	}
	staged, err := atomicfile.Stage(root, name, content, atomicfile.Owner{Mode: mode, UID: uid, GID: gid})
	if err != nil {
		return false, fmt.Errorf("render %s: stage %s: %w", label, dest, err)
	}
	if !r.KeepStageFile {
		defer staged.Discard() // nothing left to remove once it is in place
	}
	if r.CheckCmd != "" && !opts.SyncOnly {
		cmd, err := expandCmd(r.CheckCmd, filepath.Join(dir, staged.Name()), dest)
		if err != nil {
			return false, fmt.Errorf("render %s: check_cmd: %w", label, err)
		}
		if err := RunCommand(ctx, log, cmd, r.CheckTimeout); err != nil {
			return false, fmt.Errorf("render %s: check_cmd %w", label, err)
		}
	}
	if r.Backup && statErr == nil {
		if err := backup(root, name, st.Mode().Perm()); err != nil {
			return false, fmt.Errorf("render %s: backup %s.bak: %w", label, dest, err)
		}
	}
	if err := staged.Commit(); err != nil {
		if !errors.Is(err, syscall.EBUSY) {
			return false, fmt.Errorf("render %s: rename %s → %s: %w", label, staged.Name(), dest, err)
		}
		// A bind-mounted file (docker -v file:file) cannot be replaced:
		// write it in place, as confd does.
		if err := writeInPlace(root, name, content, atomicfile.Owner{Mode: mode, UID: uid, GID: gid}); err != nil {
			return false, fmt.Errorf("render %s: write %s in place: %w", label, dest, err)
		}
	}
	return true, nil
}

func (o *ApplyOptions) logger() *slog.Logger {
	if o.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Logger
}

// diff writes what Noop would change in dest to o.Diff, if set (old nil:
// a new file). It reports whether the content differs.
func (o *ApplyOptions) diff(dest string, old, content []byte) bool {
	if bytes.Equal(old, content) && old != nil {
		return false
	}
	if o.Diff == nil {
		return true
	}
	if o.DiffNamesOnly {
		fmt.Fprintf(o.Diff, "would change %s\n", dest)
		return true
	}
	from := dest
	if old == nil {
		from = "/dev/null"
	}
	n := o.DiffContext
	if n == 0 {
		n = DefaultDiffContext
	}
	d := UnifiedDiffContext(from, dest, old, content, n)
	if o.DiffColor {
		d = colorDiff(d)
	}
	o.Diff.Write(d)
	return len(d) > 0
}

// backup keeps name as name.bak: a hard link, or a copy where links fail.
func backup(root *os.Root, name string, mode os.FileMode) error {
	bak := name + ".bak"
	root.Remove(bak)
	if err := root.Link(name, bak); err == nil {
		return nil
	}
	old, err := root.ReadFile(name)
	if err == nil {
		err = root.WriteFile(bak, old, mode)
	}
	return err
}

// ReloadKey says which reload r shares: "group:NAME" for a reload_group,
// else "cmd:" and the expanded reload_cmd (resources whose reload commands
// come out the same share one reload); "" when r has no reload_cmd.
func (r *Resource) ReloadKey() string {
	if r.ReloadCmd == "" {
		return ""
	}
	if r.ReloadGroup != "" {
		return "group:" + r.ReloadGroup
	}
	cmd, err := expandCmd(r.ReloadCmd, r.Dest, r.Dest)
	if err != nil {
		return "resource:" + r.Name // its reload fails on its own
	}
	return "cmd:" + cmd
}

// Reload runs reload_cmd ({{.dest}} is Dest) with its timeout; a resource
// without one does nothing. ctx cancels it; pass a context that outlives a
// shutdown to let a reload finish.
func (r *Resource) Reload(ctx context.Context, log *slog.Logger) error {
	if r.ReloadCmd == "" {
		return nil
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cmd, err := expandCmd(r.ReloadCmd, r.Dest, r.Dest)
	if err != nil {
		return fmt.Errorf("reload %s: reload_cmd: %w", r.Name, err)
	}
	if err := RunCommand(ctx, log, cmd, r.ReloadTimeout); err != nil {
		return fmt.Errorf("reload %s: reload_cmd %w", r.Name, err)
	}
	return nil
}

// RunCommand runs cmd with /bin/sh -c (as confd does: users' commands rely on
// the shell) in its own process group, killed with the group after timeout.
// Its output goes to log. The error says how it ended and carries the tail
// of its output.
func RunCommand(ctx context.Context, log *slog.Logger, cmd string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c := exec.CommandContext(ctx, "/bin/sh", "-c", cmd)
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	c.Cancel = func() error { return syscall.Kill(-c.Process.Pid, syscall.SIGKILL) }
	c.WaitDelay = 2 * time.Second
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out
	start := time.Now()
	err := c.Run()
	text := strings.TrimSpace(out.String())
	log.Info("command", "cmd", cmd, "took", time.Since(start).Round(time.Millisecond), "output", text, "err", err)
	if err == nil {
		return nil
	}
	if len(text) > 2000 {
		text = "…" + text[len(text)-2000:]
	}
	var ee *exec.ExitError
	switch {
	case ctx.Err() == context.DeadlineExceeded:
		return fmt.Errorf("%q timed out after %s: %s", cmd, timeout, text)
	case errors.As(err, &ee):
		return fmt.Errorf("%q exited %d: %s", cmd, ee.ExitCode(), text)
	default:
		return fmt.Errorf("%q: %w", cmd, err)
	}
}

// expandCmd fills {{.src}} and {{.dest}} in a command template. The values are
// paths render controls; they are shell-quoted when they hold anything but
// plain path characters.
func expandCmd(text, src, dest string) (string, error) {
	if text == "" {
		return "", nil
	}
	t, err := texttemplate.New("cmd").Parse(text)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	if err := t.Execute(&b, map[string]string{"src": ShellQuote(src), "dest": ShellQuote(dest)}); err != nil {
		return "", err
	}
	return b.String(), nil
}

// ShellQuote returns s unchanged when it holds only characters that need no
// quoting in sh, else s in single quotes.
func ShellQuote(s string) string {
	safe := s != ""
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("/._-+:@,%=", c)) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func writeInPlace(root *os.Root, name string, content []byte, o atomicfile.Owner) error {
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_TRUNC, o.Mode)
	if err != nil {
		return err
	}
	// The file keeps its old mode when opened: narrow it before the first
	// byte of the new content, or write nothing.
	if err := atomicfile.SetOwner(f, o); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", name, err)
	}
	if _, err := f.Write(content); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// fileHolds reports whether the file at name holds exactly content. It
// reads in chunks: no copy of a large file is kept.
func fileHolds(root *os.Root, name string, content []byte) bool {
	f, err := root.Open(name)
	if err != nil {
		return false
	}
	defer f.Close()
	buf := make([]byte, min(len(content)+1, 64<<10))
	for {
		n, err := io.ReadFull(f, buf)
		if n > len(content) || !bytes.Equal(buf[:n], content[:n]) {
			return false
		}
		content = content[n:]
		if err != nil { // EOF: the file ended; it holds content if nothing is left
			return (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) && len(content) == 0
		}
	}
}

func sameOwnerMode(st os.FileInfo, mode os.FileMode, uid, gid int) bool {
	return st.Mode().Perm() == mode.Perm() && statUID(st) == uid && statGID(st) == gid
}

func statUID(st os.FileInfo) int {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return int(s.Uid)
	}
	return -1
}

func statGID(st os.FileInfo) int {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return int(s.Gid)
	}
	return -1
}

// validateFormat refuses content that does not parse as format ("" accepts all).
func validateFormat(format string, b []byte) error {
	switch format {
	case "":
		return nil
	case "json":
		var v any
		return json.Unmarshal(b, &v)
	case "yaml":
		var v any
		return yaml.Unmarshal(b, &v)
	case "toml":
		var v map[string]any
		_, err := toml.Decode(string(b), &v)
		return err
	case "xml":
		d := xml.NewDecoder(bytes.NewReader(b))
		elems := 0
		for {
			tok, err := d.Token()
			if err == io.EOF {
				if elems == 0 {
					return errors.New("no element")
				}
				return nil
			}
			if err != nil {
				return err
			}
			if _, ok := tok.(xml.StartElement); ok {
				elems++
			}
		}
	}
	return fmt.Errorf("unknown format %q", format)
}
