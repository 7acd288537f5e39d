// Package packaging tests what an operator installs: the release that
// `make dist` builds (static binaries for linux/amd64 and linux/arm64,
// SHA256SUMS, the Debian packages) and the container image of `make image`.
//
// The light part runs in `make test`: the release built once, its checksums,
// --version, the ELF headers of both architectures (static, right machine),
// the packages' contents and conffiles, lintian without errors, and the image:
// non-root, `render --help`, and `render -onetime` against a real etcd
// rendering into a mounted directory; and the packaged flotilla-render.service
// under a real systemd (Type=notify, its condition, reload). It skips where there is no dpkg-deb or no
// Docker engine.
//
// With FLOTILLA_PACKAGE_TEST=1 (make package-test) it also installs the
// packages into a clean Debian: a bookworm root filesystem made by debootstrap
// (cached under FLOTILLA_PACKAGE_TEST_CACHE, default bin/package-test) and
// `docker import`ed (no registry); there dpkg -i succeeds, the binaries run,
// the unit files pass systemd-analyze verify, an upgrade keeps an edited
// conffile and dpkg --purge leaves the file system as it found it.
package packaging_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"debug/elf"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/testmain"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testmain.LeakOptions()...)
}

const (
	version    = "0.1.0"
	newVersion = "0.1.1"
)

var packages = []string{"flotilla-scheduler", "flotilla-render", "flotilla-announce"}

// command runs name with args in dir and returns its combined output; it
// fails t when the command fails.
func command(t *testing.T, dir string, stdin []byte, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func TestRelease(t *testing.T) {
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skip("packaging: no dpkg-deb here (not Debian); the packages are not built")
	}
	root := repoRoot(t)
	dist := t.TempDir()
	start := time.Now()
	command(t, root, nil, "env", "DIST_COMPRESS=fast", "scripts/dist.sh", version, dist)
	t.Logf("FIGURE dist (2 architectures, 6 packages): %s", time.Since(start).Round(time.Second))
	bins := func(arch string) string { return filepath.Join(dist, "flotilla_"+version+"_linux_"+arch) }

	t.Run("checksums", func(t *testing.T) {
		sums := command(t, dist, nil, "sha256sum", "--strict", "-c", "SHA256SUMS")
		for _, want := range []string{
			"flotilla_" + version + "_linux_amd64.tar.gz: OK", "flotilla_" + version + "_linux_arm64.tar.gz: OK",
			"flotilla_" + version + "_linux_arm64/scheduler: OK", "flotilla-render_" + version + "_arm64.deb: OK",
			"flotilla-scheduler_" + version + "_amd64.deb: OK",
		} {
			if !strings.Contains(sums, want) {
				t.Errorf("sha256sum -c does not show %q:\n%s", want, sums)
			}
		}
	})

	t.Run("version", func(t *testing.T) {
		dir := bins(runtime.GOARCH)
		if _, err := os.Stat(dir); err != nil {
			t.Skipf("no binaries for this machine's architecture %s", runtime.GOARCH)
		}
		rev := ""
		if out, err := exec.Command("git", "-C", root, "rev-parse", "--short=12", "HEAD").Output(); err == nil {
			rev = strings.TrimSpace(string(out)) // the commit the release was built from
		}
		for _, cmd := range []string{"announce", "render", "scheduler"} {
			out := command(t, dir, nil, filepath.Join(dir, cmd), "--version")
			want := fmt.Sprintf("%s %s (commit %s", cmd, version, rev)
			if !strings.HasPrefix(out, want) || !strings.Contains(out, runtime.Version()) {
				t.Errorf("%s --version = %q, want %q… with %s", cmd, out, want, runtime.Version())
			}
		}
	})

	t.Run("elf", func(t *testing.T) {
		for arch, machine := range map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64} {
			for _, cmd := range []string{"announce", "render", "scheduler"} {
				checkStaticELF(t, filepath.Join(bins(arch), cmd), machine)
			}
		}
	})

	t.Run("deb contents", func(t *testing.T) {
		want := map[string]struct{ files, conffiles []string }{
			"flotilla-scheduler": {
				files:     []string{"./usr/bin/scheduler", "./lib/systemd/system/flotilla-scheduler.service", "./etc/default/flotilla", "./usr/share/man/man1/scheduler.1.gz", "./usr/share/doc/flotilla-scheduler/copyright", "./usr/share/doc/flotilla-scheduler/changelog.gz"},
				conffiles: []string{"/etc/default/flotilla"},
			},
			"flotilla-render": {
				files:     []string{"./usr/bin/render", "./lib/systemd/system/flotilla-render.service", "./etc/default/flotilla-render", "./etc/confd/conf.d/", "./etc/confd/templates/", "./usr/share/man/man1/render.1.gz"},
				conffiles: []string{"/etc/default/flotilla-render"},
			},
			"flotilla-announce": {files: []string{"./usr/bin/announce", "./usr/share/man/man1/announce.1.gz"}},
		}
		for _, arch := range []string{"amd64", "arm64"} {
			for _, pkg := range packages {
				deb := filepath.Join(dist, pkg+"_"+version+"_"+arch+".deb")
				fields := command(t, "", nil, "dpkg-deb", "--show", "--showformat", "${Package} ${Version} ${Architecture}", deb)
				if w := pkg + " " + version + " " + arch; fields != w {
					t.Errorf("%s: control says %q, want %q", deb, fields, w)
				}
				list := command(t, "", nil, "dpkg-deb", "--contents", deb)
				for _, f := range want[pkg].files {
					if !containsPath(list, f) {
						t.Errorf("%s: no %s in\n%s", deb, f, list)
					}
				}
				if strings.Contains(list, "/var/lib/flotilla") {
					t.Errorf("%s ships /var/lib/flotilla; the service's StateDirectory= makes it", deb)
				}
				conf := ""
				if len(want[pkg].conffiles) > 0 {
					conf = command(t, "", nil, "dpkg-deb", "--info", deb, "conffiles")
				}
				if got := strings.Fields(conf); strings.Join(got, " ") != strings.Join(want[pkg].conffiles, " ") {
					t.Errorf("%s: conffiles %q, want %q", deb, got, want[pkg].conffiles)
				}
			}
			// The packaged arm64 binary is the arm64 one.
			x := t.TempDir()
			command(t, "", nil, "dpkg-deb", "-x", filepath.Join(dist, "flotilla-render_"+version+"_"+arch+".deb"), x)
			checkStaticELF(t, filepath.Join(x, "usr/bin/render"), map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[arch])
		}
	})

	// The slow checks share the machine: lintian is mostly CPU, the others
	// mostly wait for Docker.
	t.Run("lintian", func(t *testing.T) {
		t.Parallel()
		if _, err := exec.LookPath("lintian"); err != nil {
			t.Skip("no lintian (make deps installs it)")
		}
		// make test checks the amd64 packages (the arm64 ones are built by the
		// same script and their binaries checked above); make package-test all.
		pattern := "*_amd64.deb"
		if os.Getenv("FLOTILLA_PACKAGE_TEST") == "1" {
			pattern = "*.deb"
		}
		debs, _ := filepath.Glob(filepath.Join(dist, pattern))
		start := time.Now()
		cmd := exec.Command("lintian", append([]string{"--fail-on", "error", "--tag-display-limit", "0"}, debs...)...)
		out, err := cmd.CombinedOutput()
		t.Logf("FIGURE lintian (%d packages): %s", len(debs), time.Since(start).Round(time.Second))
		if err != nil || bytes.Contains(out, []byte("E: ")) {
			t.Fatalf("lintian: %v\n%s", err, out)
		}
		if len(out) > 0 {
			t.Logf("lintian (no errors):\n%s", out)
		}
	})

	t.Run("image", func(t *testing.T) {
		t.Parallel()
		testImage(t, root, bins(runtime.GOARCH))
	})

	t.Run("render unit", func(t *testing.T) {
		t.Parallel()
		testRenderUnit(t, root, filepath.Join(bins(runtime.GOARCH), "render"))
	})

	t.Run("debian", func(t *testing.T) {
		t.Parallel()
		if os.Getenv("FLOTILLA_PACKAGE_TEST") != "1" {
			t.Skip("installing into a clean Debian runs with FLOTILLA_PACKAGE_TEST=1 (make package-test)")
		}
		testDebian(t, root, dist)
	})
}

// containsPath says whether dpkg-deb --contents output lists path.
func containsPath(list, path string) bool {
	for _, line := range strings.Split(list, "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && (f[len(f)-1] == path || (len(f) >= 3 && f[len(f)-3] == path && f[len(f)-2] == "->")) {
			return true
		}
	}
	return false
}

// checkStaticELF fails t unless path is a 64-bit little-endian ELF executable
// for machine with no program interpreter and no shared libraries.
func checkStaticELF(t *testing.T, path string, machine elf.Machine) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Errorf("elf %s: %v", path, err)
		return
	}
	defer f.Close()
	if f.Machine != machine || f.Class != elf.ELFCLASS64 || f.Data != elf.ELFDATA2LSB || f.Type != elf.ET_EXEC {
		t.Errorf("%s: machine %v class %v data %v type %v, want %v 64-bit LSB executable", path, f.Machine, f.Class, f.Data, f.Type, machine)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s: has a program interpreter: not static", path)
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("%s: needs shared libraries %v (%v): not static", path, libs, err)
	}
}

// docker returns the docker CLI, skipping t when no engine answers.
func docker(t *testing.T) string {
	t.Helper()
	d, err := exec.LookPath("docker")
	if err != nil {
		t.Skip("no docker CLI on PATH")
	}
	if out, err := exec.Command(d, "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		t.Skipf("no Docker engine reachable (docker info: %v: %s)", err, strings.TrimSpace(string(out)))
	}
	return d
}

func randomName(prefix string) string {
	b := make([]byte, 4)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

func testImage(t *testing.T, root, bins string) {
	d := docker(t)
	tag := randomName("flotilla-test:image-")
	command(t, root, nil, "scripts/image.sh", version, bins, tag)
	t.Cleanup(func() { exec.Command(d, "rmi", "-f", tag).Run() })

	if user := strings.TrimSpace(command(t, "", nil, d, "image", "inspect", "-f", "{{.Config.User}}", tag)); user != "65532:65532" {
		t.Errorf("image user %q, want 65532:65532 (not root)", user)
	}
	help := command(t, "", nil, d, "run", "--rm", tag, "render", "--help")
	if !strings.Contains(help, "usage: render") {
		t.Errorf("docker run render --help:\n%s", help)
	}
	if out := command(t, "", nil, d, "run", "--rm", tag, "scheduler", "--version"); !strings.HasPrefix(out, "scheduler "+version+" ") {
		t.Errorf("docker run scheduler --version: %q", out)
	}

	// render -onetime in the container against a real etcd on loopback.
	srv := etcdtest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := srv.Admin().Put(ctx, "/pkgtest/greeting", "hello from etcd"); err != nil {
		t.Fatal(err)
	}
	confdir, out := t.TempDir(), t.TempDir()
	for name, body := range map[string]string{
		"conf.d/greeting.toml":    "[template]\nsrc = \"greeting.tmpl\"\ndest = \"/out/greeting.conf\"\nkeys = [\"/pkgtest\"]\n",
		"templates/greeting.tmpl": "greeting: {{getv \"/pkgtest/greeting\"}}\n",
	} {
		p := filepath.Join(confdir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(out, 0o777); err != nil { // the image's user writes here
		t.Fatal(err)
	}
	command(t, "", nil, d, "run", "--rm", "--network", "host",
		"-v", confdir+":/etc/confd:ro", "-v", out+":/out", tag,
		"render", "-onetime", "-backend", "etcdv3", "-node", srv.Endpoint(), "-confdir", "/etc/confd")
	got, err := os.ReadFile(filepath.Join(out, "greeting.conf"))
	if err != nil {
		t.Fatalf("render -onetime in the container wrote nothing: %v", err)
	}
	if string(got) != "greeting: hello from etcd\n" {
		t.Errorf("rendered %q", got)
	}
}
