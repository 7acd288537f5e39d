package deploy

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/testmain"
)

// machine is one of the doc's machines: a network namespace on a bridge
// shared with the others (the doc's 10.0.0.0/24), and a mount and UTS
// namespace of its own, held by a sleeping process: its own hostname, a
// private /run (tmpfs), and /etc, /var/lib and /usr/local as overlays of the
// host's, so that the doc's paths (/etc/flotilla, /etc/confd,
// /var/lib/flotilla, /usr/local/bin, /etc/machine-id) are this machine's
// alone and the host's stay untouched. /run/haproxy is made at boot, as the
// haproxy package's tmpfiles.d entry does on Debian.
type machine struct {
	name, ip, netns string
	holder          *exec.Cmd
}

// rootPath is where the host sees path p of the machine's file system.
func (m *machine) rootPath(p string) string {
	return filepath.Join(fmt.Sprintf("/proc/%d/root", m.holder.Process.Pid), p)
}

// command returns a command that runs argv inside the machine's namespaces,
// in dir (a path both see: the test's temporary directories are shared).
func (m *machine) command(ctx context.Context, dir string, argv ...string) *exec.Cmd {
	args := append([]string{"--target", strconv.Itoa(m.holder.Process.Pid), "--mount", "--net", "--uts", "--wd=" + dir, "--"}, argv...)
	cmd := exec.CommandContext(ctx, "nsenter", args...)
	// A root login shell's environment: no ETCDCTL_*, as the doc warns.
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8"}
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// sh runs script with sh -e inside the machine and returns its output.
func (m *machine) sh(ctx context.Context, dir, script string) (string, error) {
	var out bytes.Buffer
	cmd := m.command(ctx, dir, "sh", "-e", "-c", script)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// network is the doc's machines on one bridge, in a switch namespace of
// their own: nothing is added to the host's network.
type network struct {
	id       string
	sw       string
	machines []*machine
}

func ipcmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// newNetwork creates the machines named in ips (name → address in
// 10.0.0.0/24). It skips the test where namespaces cannot be made.
func newNetwork(t *testing.T, names []string, ips map[string]string) *network {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the machines are namespaces: needs root")
	}
	// What the doc installs from Debian's packages (make deps).
	for _, b := range []string{"ip", "nsenter", "unshare", "haproxy", "nginx", "curl", "etcd", "etcdctl"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("needs %s", b)
		}
	}
	if _, err := os.Stat("/lib/systemd/system/haproxy.service"); err != nil {
		t.Skip("needs Debian's haproxy package (its haproxy.service)")
	}
	n := &network{id: fmt.Sprintf("%04x", rand.Uint32()%0xffff)}
	n.sw = "flt-deploy-" + n.id
	if err := ipcmd("netns", "add", n.sw); err != nil {
		t.Skipf("cannot create a network namespace here: %v", err)
	}
	t.Cleanup(func() { ipcmd("netns", "del", n.sw) })
	for _, s := range [][]string{
		{"-n", n.sw, "link", "add", "br0", "type", "bridge"},
		{"-n", n.sw, "link", "set", "br0", "up"},
	} {
		if err := ipcmd(s...); err != nil {
			t.Fatal(err)
		}
	}
	for i, name := range names {
		n.machines = append(n.machines, n.addMachine(t, i, name, ips[name]))
	}
	// Which address is which machine, for the scp stand-in.
	var hosts strings.Builder
	for _, m := range n.machines {
		fmt.Fprintf(&hosts, "%s %d\n", m.ip, m.holder.Process.Pid)
	}
	for _, m := range n.machines {
		if err := os.WriteFile(m.rootPath(standinDir+"/hosts"), []byte(hosts.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

func (n *network) addMachine(t *testing.T, i int, name, ip string) *machine {
	t.Helper()
	m := &machine{name: name, ip: ip, netns: fmt.Sprintf("flt-deploy-%s-%d", n.id, i)}
	if err := ipcmd("netns", "add", m.netns); err != nil {
		t.Fatal(err)
	}
	// Registered before the holder's cleanup, so it runs after it: every
	// process left in the namespace (what the stand-in systemctl started) is
	// killed, then the namespace goes, with its end of the veth pair.
	t.Cleanup(func() {
		killAll(m.netns)
		ipcmd("netns", "del", m.netns)
	})
	host := fmt.Sprintf("fltd%s%d", n.id, i)
	for _, s := range [][]string{
		{"link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", m.netns},
		{"link", "set", host, "netns", n.sw},
		{"-n", n.sw, "link", "set", host, "master", "br0", "up"},
		{"-n", m.netns, "addr", "add", ip + "/24", "dev", "eth0"},
		{"-n", m.netns, "link", "set", "eth0", "up"},
		{"-n", m.netns, "link", "set", "lo", "up"},
	} {
		if err := ipcmd(s...); err != nil {
			t.Fatal(err)
		}
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	setup := fmt.Sprintf(`set -e
mount -t tmpfs -o mode=0755 tmpfs /run
for d in etc var/lib usr/local; do
	u=/run/.machine/$(echo $d | tr / -)
	mkdir -p $u/up $u/work
	mount -t overlay overlay -o lowerdir=/$d,upperdir=$u/up,workdir=$u/work /$d
done
hostname %[1]s
echo %[2]s >/etc/machine-id
mkdir -p %[3]s /usr/local/bin /run/haproxy
ln -sf %[4]s /usr/local/bin/systemctl
ln -sf %[4]s /usr/local/bin/scp
echo ready
exec sleep infinity
`, name, strings.Repeat(fmt.Sprintf("%02x", i+1), 16), standinDir, self)
	m.holder = exec.Command("ip", "netns", "exec", m.netns, "unshare", "--mount", "--uts", "--propagation", "private", "--", "sh", "-c", setup)
	var out testmain.SyncBuffer
	m.holder.Stdout, m.holder.Stderr = &out, &out
	m.holder.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := m.holder.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { m.holder.Wait(); close(done) }()
	t.Cleanup(func() { m.holder.Process.Kill(); <-done })
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String(), "ready") {
		select {
		case <-done:
			t.Fatalf("machine %s: setup failed: %s", name, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("machine %s: setup did not finish: %s", name, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return m
}

// powerOff kills every process of the machine at once but the namespace
// holder: what a power cut leaves (its files stay, as a disk does).
func (m *machine) powerOff() {
	out, _ := exec.Command("ip", "netns", "pids", m.netns).Output()
	for _, p := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(p); err == nil && pid != m.holder.Process.Pid {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// killAll kills every process in the network namespace.
func killAll(netns string) {
	for range 3 {
		out, _ := exec.Command("ip", "netns", "pids", netns).Output()
		pids := strings.Fields(string(out))
		if len(pids) == 0 {
			return
		}
		for _, p := range pids {
			if pid, err := strconv.Atoi(p); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// byName returns the machine called name.
func (n *network) byName(t *testing.T, name string) *machine {
	t.Helper()
	for _, m := range n.machines {
		if m.name == name {
			return m
		}
	}
	t.Fatalf("no machine %q", name)
	return nil
}
