package packaging_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// debianImage is the clean Debian the packages are installed into: built here
// from Debian's packages, never pulled.
const debianImage = "flotilla-package-test/debian:bookworm"

// ensureDebianImage imports debianImage from a debootstrap tree, making the
// tree first when the cache has none. The tree (about 240 MB) stays in the
// cache directory; the image stays in the engine.
func ensureDebianImage(t *testing.T, d, root string) {
	t.Helper()
	if exec.Command(d, "image", "inspect", debianImage).Run() == nil {
		return
	}
	cache := os.Getenv("FLOTILLA_PACKAGE_TEST_CACHE")
	if cache == "" {
		cache = filepath.Join(root, "bin", "package-test")
	}
	tree := filepath.Join(cache, "bookworm")
	if _, err := os.Stat(filepath.Join(tree, "usr/bin/dpkg")); err != nil {
		if _, err := exec.LookPath("debootstrap"); err != nil {
			t.Fatal("no debootstrap (make deps installs it)")
		}
		mirror := os.Getenv("FLOTILLA_DEBIAN_MIRROR")
		if mirror == "" {
			mirror = "http://deb.debian.org/debian"
		}
		tmp := tree + ".tmp"
		os.RemoveAll(tmp)
		if err := os.MkdirAll(cache, 0o755); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		command(t, "", nil, "debootstrap", "--variant=minbase", "--include=systemd", "bookworm", tmp, mirror)
		if err := os.Rename(tmp, tree); err != nil {
			t.Fatal(err)
		}
		t.Logf("FIGURE debootstrap bookworm: %s", time.Since(start).Round(time.Second))
	}
	command(t, "", nil, "sh", "-c", `tar -C "$1" -c . | "$2" import - "$3"`, "import", tree, d, debianImage)
}

// snapshot lists the container's files outside what dpkg and the kernel keep
// for themselves, so that before-install and after-purge compare.
const snapshot = `find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp \
 -o -path /dist -o -path /var/lib/dpkg -o -path /var/log -o -path /var/cache \) -prune -o -print | sort`

func testDebian(t *testing.T, root, dist string) {
	d := docker(t)
	ensureDebianImage(t, d, root)

	// The upgrade: the same packages one version later (binaries re-linked
	// with the new version; man pages and conffiles as before).
	newer := t.TempDir()
	{
		cmd := exec.Command("scripts/dist.sh", newVersion, newer)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "DIST_ARCHES=amd64", "DIST_COMPRESS=fast")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("dist %s: %v\n%s", newVersion, err, out)
		}
	}

	name := randomName("flotilla-pkgtest-")
	command(t, "", nil, d, "run", "-d", "--name", name, "--network", "none",
		"-v", dist+":/dist/old:ro", "-v", newer+":/dist/new:ro", debianImage, "sleep", "infinity")
	t.Cleanup(func() { exec.Command(d, "rm", "-f", name).Run() })
	sh := func(script string) string {
		t.Helper()
		return command(t, "", nil, d, "exec", "-e", "DEBIAN_FRONTEND=noninteractive", name, "sh", "-ec", script)
	}
	shFails := func(script string) string {
		t.Helper()
		out, err := exec.Command(d, "exec", name, "sh", "-c", script).CombinedOutput()
		if err == nil {
			t.Errorf("%s: succeeded, want a failure:\n%s", script, out)
		}
		return string(out)
	}

	before := sh(snapshot)

	// Install.
	sh("dpkg -i /dist/old/flotilla-scheduler_" + version + "_amd64.deb /dist/old/flotilla-render_" + version + "_amd64.deb /dist/old/flotilla-announce_" + version + "_amd64.deb")
	for _, pkg := range packages {
		if got := sh("dpkg-query -W -f '${Status} ${Version}' " + pkg); got != "install ok installed "+version {
			t.Errorf("%s after dpkg -i: %q", pkg, got)
		}
	}
	// The binaries run.
	for _, cmd := range []string{"scheduler", "render", "announce"} {
		if out := sh(cmd + " --version"); !strings.HasPrefix(out, cmd+" "+version+" ") {
			t.Errorf("%s --version: %q", cmd, out)
		}
	}
	if out := sh("render --help"); !strings.Contains(out, "usage: render") {
		t.Errorf("render --help:\n%s", out)
	}
	// Nothing enabled or started before the operator configures it.
	for _, unit := range []string{"flotilla-scheduler.service", "flotilla-render.service"} {
		if out := strings.TrimSpace(shFails("systemctl is-enabled " + unit)); out != "disabled" {
			t.Errorf("systemctl is-enabled %s after install: %q, want disabled", unit, out)
		}
	}
	// The unit files are valid, ExecStart= binaries included. (The minimal
	// Debian has no man-db to open Documentation=; the pages are checked below.)
	if out := sh("systemd-analyze verify --man=no /lib/systemd/system/flotilla-scheduler.service /lib/systemd/system/flotilla-render.service 2>&1"); strings.Contains(out, "flotilla") {
		t.Errorf("systemd-analyze verify:\n%s", out)
	}
	for _, cmd := range []string{"scheduler", "render", "announce"} {
		if out := sh("gzip -dc /usr/share/man/man1/" + cmd + ".1.gz"); !strings.HasPrefix(out, ".TH "+strings.ToUpper(cmd)+" 1") || !strings.Contains(out, "usage: "+cmd) {
			t.Errorf("man page of %s:\n%.300s", cmd, out)
		}
	}

	// The operator configures and enables; the scheduler leaves state behind.
	sh(`echo 'SCHEDULER_OPTS="--metadata role=edited"' >>/etc/default/flotilla`)
	sh("systemctl enable flotilla-scheduler.service flotilla-render.service 2>&1")
	if out := sh("timeout -s INT 20 scheduler serve --data-dir /var/lib/flotilla --executor process >/tmp/serve.log 2>&1 || true; ls /var/lib/flotilla"); !strings.Contains(out, "etcd") {
		t.Errorf("scheduler serve left no state in /var/lib/flotilla (%q):\n%s", out, sh("cat /tmp/serve.log"))
	}

	// Upgrade: the edited conffile is kept, without a prompt (stdin is closed).
	sh("dpkg -i /dist/new/flotilla-scheduler_" + newVersion + "_amd64.deb /dist/new/flotilla-render_" + newVersion + "_amd64.deb /dist/new/flotilla-announce_" + newVersion + "_amd64.deb </dev/null")
	if got := sh("dpkg-query -W -f '${Version}' flotilla-scheduler"); got != newVersion {
		t.Errorf("after the upgrade flotilla-scheduler is %q", got)
	}
	if out := sh("scheduler --version"); !strings.HasPrefix(out, "scheduler "+newVersion+" ") {
		t.Errorf("scheduler --version after the upgrade: %q", out)
	}
	if out := sh("cat /etc/default/flotilla"); !strings.Contains(out, "role=edited") {
		t.Errorf("the upgrade lost the edit of /etc/default/flotilla:\n%s", out)
	}
	if out := sh("systemctl is-enabled flotilla-scheduler.service"); strings.TrimSpace(out) != "enabled" {
		t.Errorf("the upgrade changed the operator's enablement: %q", out)
	}

	// Remove keeps the conffiles; purge leaves nothing.
	sh("dpkg --remove flotilla-scheduler flotilla-render flotilla-announce")
	if out := sh("ls /etc/default/"); !strings.Contains(out, "flotilla") {
		t.Errorf("dpkg --remove removed the conffiles: %s", out)
	}
	sh("dpkg --purge flotilla-scheduler flotilla-render flotilla-announce")
	after := sh(snapshot)
	if before != after {
		t.Errorf("dpkg --purge left the system changed:\n%s", diffLines(before, after))
	}
}

// diffLines lists the lines only in a (-) or only in b (+).
func diffLines(a, b string) string {
	in := func(s string) map[string]bool {
		m := map[string]bool{}
		for _, l := range strings.Split(s, "\n") {
			m[l] = true
		}
		return m
	}
	ma, mb := in(a), in(b)
	var out []string
	for _, l := range strings.Split(a, "\n") {
		if !mb[l] {
			out = append(out, "- "+l)
		}
	}
	for _, l := range strings.Split(b, "\n") {
		if !ma[l] {
			out = append(out, "+ "+l)
		}
	}
	return strings.Join(out, "\n")
}
