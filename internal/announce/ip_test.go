package announce_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/flotilla/flotilla/internal/announce"
)

// inNetns tells the re-executed test binary that it runs inside a network
// namespace made by TestResolveIP, and which case to check. The inner checks
// only read the network configuration; all changes are made by the shell
// script inside the new namespace.
const inNetns = "ANNOUNCE_TEST_IN_NETNS"

const netnsSetup = `set -e
ip link set lo up
ip link add d0 type veth peer name d0p
ip link set d0p up
ip addr add 10.77.0.5/24 dev d0
ip addr add 10.77.0.6/24 dev d0
ip link set d0 up
ip link add d6 type veth peer name d6p
ip link set d6p up
ip -6 addr add fd00:77::9/64 dev d6 nodad
ip link set d6 up
`

// TestResolveIP runs its checks in private network namespaces that it sets
// up itself: a veth interface d0 with 10.77.0.5/24 (and 10.77.0.6,
// secondary), d6 with only an IPv6 address, and — in the first namespace
// only — a default route via 10.77.0.1.
func TestResolveIP(t *testing.T) {
	switch os.Getenv(inNetns) {
	case "with-route":
		checkResolveIP(t)
		return
	case "no-route":
		if ip, err := announce.ResolveIP("route"); err == nil || !strings.Contains(err.Error(), "default route") {
			t.Fatalf("ResolveIP(route) without a default route = %v, %v", ip, err)
		}
		return
	}
	for _, tool := range []string{"unshare", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (util-linux, iproute2)", tool)
		}
	}
	if err := exec.Command("unshare", "--net", "true").Run(); err != nil {
		t.Skipf("cannot make a network namespace here (unshare --net: %v); needs root", err)
	}
	for mode, extra := range map[string]string{
		"with-route": "ip route add default via 10.77.0.1 dev d0\n",
		"no-route":   "",
	} {
		script := netnsSetup + extra + `exec "$0" -test.run '^TestResolveIP$' -test.v`
		cmd := exec.Command("unshare", "--net", "sh", "-c", script, os.Args[0])
		cmd.Env = append(os.Environ(), inNetns+"="+mode)
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestResolveIP") {
			t.Fatalf("%s, in a network namespace: %v\n%s", mode, err, out)
		}
	}
}

func checkResolveIP(t *testing.T) {
	tests := map[string]struct{ spec, want, wantErr string }{
		"route":         {spec: "route", want: "10.77.0.5"},
		"iface v4":      {spec: "iface:d0", want: "10.77.0.5"},
		"iface v6 only": {spec: "iface:d6", want: "fd00:77::9"},
		"loopback":      {spec: "iface:lo", want: "127.0.0.1"},
		"missing iface": {spec: "iface:nope0", wantErr: "iface:nope0"},
		"bad spec":      {spec: "eth0", wantErr: "want route or iface:NAME"},
		"empty iface":   {spec: "iface:", wantErr: "want route or iface:NAME"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ip, err := announce.ResolveIP(tc.spec)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ResolveIP(%q) = %v, %v; want error %q", tc.spec, ip, err, tc.wantErr)
				}
				return
			}
			if err != nil || ip.String() != tc.want {
				t.Fatalf("ResolveIP(%q) = %v, %v; want %s", tc.spec, ip, err, tc.want)
			}
		})
	}
}
