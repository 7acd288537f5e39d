package announce

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
)

// ResolveIP finds this machine's address to announce. spec is
//
//	route       the source address the kernel picks for the IPv4 default
//	            route (no packet is sent: a UDP socket is only connected)
//	iface:NAME  the first global IPv4 address of interface NAME, else its
//	            first global IPv6 address
//
// It replaces the seed's `cat /etc/motd.d/info.conf | grep Public` glue.
func ResolveIP(spec string) (netip.Addr, error) {
	switch {
	case spec == "route":
		return routeIP()
	case strings.HasPrefix(spec, "iface:") && len(spec) > len("iface:"):
		return ifaceIP(strings.TrimPrefix(spec, "iface:"))
	}
	return netip.Addr{}, fmt.Errorf("--ip %q: want route or iface:NAME", spec)
}

// ValidateIPSpec checks the form of a ResolveIP spec without resolving it.
func ValidateIPSpec(spec string) error {
	if spec == "route" || (strings.HasPrefix(spec, "iface:") && len(spec) > len("iface:")) {
		return nil
	}
	return fmt.Errorf("--ip %q: want route or iface:NAME", spec)
}

// routeProbe is an address of TEST-NET-2 (RFC 5737): never routed anywhere
// real; connecting a UDP socket to it only asks the kernel for a route.
var routeProbe = netip.MustParseAddrPort("198.51.100.1:9")

func routeIP() (netip.Addr, error) {
	conn, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(routeProbe))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("--ip route: no IPv4 default route: %w", err)
	}
	defer conn.Close()
	ap := conn.LocalAddr().(*net.UDPAddr).AddrPort()
	ip := ap.Addr().Unmap()
	if !ip.IsValid() || ip.IsUnspecified() {
		return netip.Addr{}, errors.New("--ip route: the kernel chose no source address")
	}
	return ip, nil
}

func ifaceIP(name string) (netip.Addr, error) {
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("--ip iface:%s: %w", name, err)
	}
	addrs, err := ifc.Addrs()
	if err != nil {
		return netip.Addr{}, fmt.Errorf("--ip iface:%s: addresses: %w", name, err)
	}
	var v6 netip.Addr
	for _, a := range addrs {
		pfx, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		ip := pfx.Addr().Unmap()
		if ip.Is4() && (ip.IsGlobalUnicast() || ip.IsLoopback()) {
			return ip, nil
		}
		if ip.Is6() && ip.IsGlobalUnicast() && !v6.IsValid() {
			v6 = ip
		}
	}
	if v6.IsValid() {
		return v6, nil
	}
	return netip.Addr{}, fmt.Errorf("--ip iface:%s: the interface has no usable address", name)
}

// UnitFromCgroup returns the systemd unit named in the contents of
// /proc/self/cgroup (v2 "0::/…" or v1 "N:name=systemd:/…"): the last path
// element ending in .service, or "" when there is none.
func UnitFromCgroup(content string) string {
	for _, line := range strings.Split(content, "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 || !(parts[1] == "" || parts[1] == "name=systemd") {
			continue
		}
		elems := strings.Split(parts[2], "/")
		for i := len(elems) - 1; i >= 0; i-- {
			if strings.HasSuffix(elems[i], ".service") {
				return elems[i]
			}
		}
	}
	return ""
}

// SelfUnit returns the systemd unit this process runs in, or "".
func SelfUnit() string {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return ""
	}
	return UnitFromCgroup(string(b))
}

// MachineID returns the machine id: getenv("FLOTILLA_MACHINE_ID") (set by the
// scheduler's agent), else /etc/machine-id, else "".
func MachineID(getenv func(string) string) string {
	if id := getenv("FLOTILLA_MACHINE_ID"); id != "" {
		return id
	}
	b, err := os.ReadFile("/etc/machine-id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
