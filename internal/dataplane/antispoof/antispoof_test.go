package antispoof_test

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/dataplane/antispoof"
	"github.com/weftnet/weft/internal/probe"
	"github.com/weftnet/weft/internal/testutil"
)

// pod is one end of the topology: its namespace, host veth, MAC and address.
type pod struct {
	ns   testutil.NS
	host string
	mac  net.HardwareAddr
	ip   netip.Addr
	// setMAC changes the pod's MAC (and, routed, restores its gateway's neighbour entry,
	// which a MAC change flushes).
	setMAC func(net.HardwareAddr)
}

// build makes a node namespace with two pods: on a bridge (bridged frames) or routed over
// their veths (ptp), as weft's two modes attach them.
func build(t *testing.T, bridged bool) (testutil.NS, [2]pod) {
	t.Helper()
	node := testutil.NewNS(t, "sn")
	nh := node.Handle(t)
	var br netlink.Link
	if bridged {
		must(t, nh.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}))
		br, _ = nh.LinkByName("br0")
		must(t, nh.LinkSetUp(br))
	} else {
		must(t, probe.InNS(node.Path, func() error { return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644) }))
	}
	var pods [2]pod
	for i := range pods {
		p := pod{ns: testutil.NewNS(t, "sp"), host: fmt.Sprintf("weft0000000000%d", i), mac: net.HardwareAddr{2, 0x5a, 0, 0, 0, byte(i + 1)},
			ip: netip.AddrFrom4([4]byte{10, 60, 0, byte(i + 2)})}
		pf, err := os.Open(p.ns.Path)
		must(t, err)
		must(t, nh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: p.host}, PeerName: "eth0", PeerHardwareAddr: p.mac, PeerNamespace: netlink.NsFd(pf.Fd())}))
		pf.Close()
		hl, _ := nh.LinkByName(p.host)
		ph := p.ns.Handle(t)
		el, _ := ph.LinkByName("eth0")
		mask := net.CIDRMask(24, 32)
		if bridged {
			must(t, nh.LinkSetMaster(hl, br))
			p.setMAC = func(mac net.HardwareAddr) { must(t, ph.LinkSetHardwareAddr(el, mac)) }
		} else {
			gw := net.IPv4(169, 254, 1, 1)
			mask = net.CIDRMask(32, 32)
			// rp_filter (inherited from the host) would drop the spoofed source by itself.
			for _, dev := range []string{"all", p.host} {
				must(t, probe.InNS(node.Path, func() error {
					return os.WriteFile("/proc/sys/net/ipv4/conf/"+dev+"/rp_filter", []byte("0"), 0o644)
				}))
			}
			gwNeigh := &netlink.Neigh{LinkIndex: el.Attrs().Index, IP: gw, HardwareAddr: hl.Attrs().HardwareAddr, State: netlink.NUD_PERMANENT, Family: unix.AF_INET}
			p.setMAC = func(mac net.HardwareAddr) {
				must(t, ph.LinkSetHardwareAddr(el, mac))
				must(t, ph.NeighSet(gwNeigh))
			}
			defer func() {
				must(t, ph.NeighAdd(gwNeigh))
				must(t, nh.RouteAdd(&netlink.Route{Dst: &net.IPNet{IP: p.ip.AsSlice(), Mask: mask}, LinkIndex: hl.Attrs().Index, Scope: netlink.SCOPE_LINK}))
				must(t, ph.RouteAdd(&netlink.Route{Dst: &net.IPNet{IP: gw, Mask: net.CIDRMask(32, 32)}, LinkIndex: el.Attrs().Index, Scope: netlink.SCOPE_LINK}))
				must(t, ph.RouteAdd(&netlink.Route{Gw: gw, LinkIndex: el.Attrs().Index}))
			}()
		}
		must(t, nh.LinkSetUp(hl))
		must(t, ph.AddrAdd(el, &netlink.Addr{IPNet: &net.IPNet{IP: p.ip.AsSlice(), Mask: mask}}))
		must(t, ph.LinkSetUp(el))
		pods[i] = p
	}
	return node, pods
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func apply(t *testing.T, node testutil.NS, pods [2]pod) {
	t.Helper()
	var ports []antispoof.Port
	for i, p := range pods {
		ports = append(ports, antispoof.Port{ID: fmt.Sprint(i), IfName: p.host, MAC: p.mac, IPs: []netip.Addr{p.ip}})
	}
	f, err := os.Open(node.Path)
	must(t, err)
	defer f.Close()
	must(t, antispoof.Apply(ports, int(f.Fd()), 7712))
}

func drops(t *testing.T, node testutil.NS) map[string]uint64 {
	t.Helper()
	f, err := os.Open(node.Path)
	must(t, err)
	defer f.Close()
	d, err := antispoof.Drops(int(f.Fd()))
	must(t, err)
	return d
}

// arrives sends a few datagrams from src (an address of from's eth0) to to's port and
// reports whether any arrived.
func arrives(t *testing.T, from pod, src netip.Addr, to pod) bool {
	t.Helper()
	pc, err := probe.ListenUDP(to.ns.Path, ":7000")
	must(t, err)
	defer pc.Close()
	got := make(chan bool, 1)
	go func() {
		_ = pc.SetReadDeadline(time.Now().Add(1500 * time.Millisecond))
		_, _, err := pc.ReadFrom(make([]byte, 64))
		got <- err == nil
	}()
	must(t, probe.InNS(from.ns.Path, func() error {
		c, err := net.DialUDP("udp", &net.UDPAddr{IP: src.AsSlice()}, &net.UDPAddr{IP: to.ip.AsSlice(), Port: 7000})
		if err != nil {
			return err
		}
		defer c.Close()
		for range 5 {
			_, _ = c.Write([]byte("hello"))
			time.Sleep(100 * time.Millisecond)
		}
		return nil
	}))
	return <-got
}

func TestSpoofedSourcesAreDropped(t *testing.T) {
	testutil.RequireRoot(t)
	for _, mode := range []string{"bridge", "ptp"} {
		t.Run(mode, func(t *testing.T) {
			node, pods := build(t, mode == "bridge")
			a, b := pods[0], pods[1]
			apply(t, node, pods)
			if !arrives(t, a, a.ip, b) {
				t.Fatal("a pod's own address is dropped")
			}
			// A second address the pod gives itself is not its own.
			spoofed := netip.MustParseAddr("10.60.0.77")
			ah := a.ns.Handle(t)
			el, _ := ah.LinkByName("eth0")
			must(t, ah.AddrAdd(el, &netlink.Addr{IPNet: &net.IPNet{IP: spoofed.AsSlice(), Mask: net.CIDRMask(32, 32)}}))
			if arrives(t, a, spoofed, b) {
				t.Error("a spoofed source address arrived")
			}
			if d := drops(t, node); d["s-0"] == 0 || d["s-1"] != 0 {
				t.Errorf("drop counters %v, want only s-0's", d)
			}
			// Nor is another MAC.
			a.setMAC(net.HardwareAddr{2, 0x5a, 0, 0, 0, 0x99})
			if arrives(t, a, a.ip, b) {
				t.Error("a spoofed source MAC arrived")
			}
			a.setMAC(a.mac)
			if !arrives(t, a, a.ip, b) || !arrives(t, b, b.ip, a) {
				t.Error("with its own MAC back, the pod is still cut off")
			}
			// Without the tables, the same spoof goes through: the test can tell.
			f, _ := os.Open(node.Path)
			must(t, antispoof.Apply(nil, int(f.Fd()), 7712))
			f.Close()
			if !arrives(t, a, spoofed, b) {
				t.Error("without anti-spoofing the spoofed datagram did not arrive either: the test proves nothing")
			}
		})
	}
}

// TestARPClaimsAreChecked: on a bridge, an ARP reply claiming another pod's address is
// dropped (and counted); one for the pod's own address is not.
func TestARPClaimsAreChecked(t *testing.T) {
	testutil.RequireRoot(t)
	node, pods := build(t, true)
	a, b := pods[0], pods[1]
	apply(t, node, pods)
	sendARP := func(claim netip.Addr) {
		must(t, probe.InNS(a.ns.Path, func() error {
			fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ARP)))
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			ifi, err := net.InterfaceByName("eth0")
			if err != nil {
				return err
			}
			f := make([]byte, 42)
			copy(f[0:6], b.mac)
			copy(f[6:12], a.mac)
			binary.BigEndian.PutUint16(f[12:], unix.ETH_P_ARP)
			arp := f[14:]
			binary.BigEndian.PutUint16(arp[0:], 1)      // Ethernet
			binary.BigEndian.PutUint16(arp[2:], 0x0800) // IPv4
			arp[4], arp[5] = 6, 4
			binary.BigEndian.PutUint16(arp[6:], 2) // reply
			copy(arp[8:14], a.mac)
			copy(arp[14:18], claim.AsSlice())
			copy(arp[18:24], b.mac)
			copy(arp[24:28], b.ip.AsSlice())
			return unix.Sendto(fd, f, 0, &unix.SockaddrLinklayer{Ifindex: ifi.Index, Protocol: htons(unix.ETH_P_ARP)})
		}))
	}
	before := drops(t, node)["s-0"]
	sendARP(a.ip)
	if n := drops(t, node)["s-0"]; n != before {
		t.Errorf("an ARP reply for the pod's own address was dropped (%d → %d)", before, n)
	}
	sendARP(b.ip)
	if n := drops(t, node)["s-0"]; n != before+1 {
		t.Errorf("an ARP reply claiming the other pod's address: drops %d → %d, want one more", before, n)
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
