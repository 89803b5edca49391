package fastpath

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/policy"
	"github.com/weftnet/weft/internal/testutil"
)

const (
	tcActRedirect = 7
	tcActPass     = 0xffffffff // TC_ACT_UNSPEC / TCX_NEXT: no verdict
)

func frame(etherType uint16, payload []byte) []byte {
	b := make([]byte, 14, 14+len(payload))
	copy(b[0:6], []byte{2, 0, 0, 0, 0, 0xaa})  // gateway MAC, as a ptp pod addresses it
	copy(b[6:12], []byte{2, 0, 0, 0, 0, 0xbb}) // sender
	binary.BigEndian.PutUint16(b[12:], etherType)
	return append(b, payload...)
}

func addressed(f []byte, mac net.HardwareAddr) []byte {
	copy(f[0:6], mac)
	return f
}

// ipv4 is a UDP packet to dst from 10.1.0.9 port 8080.
func ipv4(dst string) []byte { return ipv4From("10.1.0.9", 8080, dst) }

func ipv4From(src string, sport uint16, dst string) []byte {
	udp := make([]byte, 26)
	binary.BigEndian.PutUint16(udp, sport)
	return ip4(17, src, dst, udp)
}

// ip4 is an IPv4 packet (no options) of protocol proto carrying l4.
func ip4(proto byte, src, dst string, l4 []byte) []byte {
	h := make([]byte, 20)
	h[0], h[9] = 0x45, proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(h[12:16], s[:])
	copy(h[16:20], d[:])
	return append(h, l4...)
}

// ip6 is an IPv6 packet (no extension headers) of protocol proto carrying l4.
func ip6(proto byte, src, dst string, l4 []byte) []byte {
	h := make([]byte, 40)
	h[0], h[6] = 0x60, proto
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	copy(h[8:24], s[:])
	copy(h[24:40], d[:])
	return append(h, l4...)
}

// ipv6 is a UDP packet to dst from fd00::9 port 8080.
func ipv6(dst string) []byte { return ipv6From("fd00::9", 8080, dst) }

func ipv6From(src string, sport uint16, dst string) []byte {
	udp := make([]byte, 20)
	binary.BigEndian.PutUint16(udp, sport)
	return ip6(17, src, dst, udp)
}

// TestProgram runs the program on crafted frames (BPF_PROG_TEST_RUN): local pods are
// redirected with their MAC written in, anything else passes untouched.
func TestProgram(t *testing.T) {
	f := loaded(t, nil)
	podMAC := net.HardwareAddr{0x0a, 1, 2, 3, 4, 5}
	err := f.Sync(map[Key]Value{
		KeyOf(netip.MustParseAddr("10.1.0.5")): ValueOf(42, podMAC),
		KeyOf(netip.MustParseAddr("fd00::5")):  ValueOf(43, podMAC),
	})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		in   []byte
		want uint32
	}{
		{"local IPv4 pod", frame(0x0800, ipv4("10.1.0.5")), tcActRedirect},
		{"local IPv6 pod", frame(0x86dd, ipv6("fd00::5")), tcActRedirect},
		{"bridge frame already addressed to the pod", addressed(frame(0x0800, ipv4("10.1.0.5")), podMAC), tcActRedirect},
		{"remote IPv4", frame(0x0800, ipv4("10.1.0.6")), tcActPass},
		{"remote IPv6", frame(0x86dd, ipv6("fd00::6")), tcActPass},
		{"ARP", frame(0x0806, make([]byte, 28)), tcActPass},
	}
	for _, c := range cases {
		// Short frames are not tested here: BPF_PROG_TEST_RUN itself refuses frames shorter
		// than the headers this program reads, and the verifier checks its bounds.
		in := c.in
		ret, out, err := runProg(f.prog, in)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if ret != c.want {
			t.Errorf("%s: returned %d, want %d", c.name, ret, c.want)
		}
		if c.want == tcActRedirect && !bytes.Equal(out[0:6], podMAC) {
			t.Errorf("%s: destination MAC %x, want %x", c.name, out[0:6], podMAC)
		}
		if c.want == tcActPass && !bytes.Equal(out[:len(in)], in) {
			t.Errorf("%s: a passed frame was modified", c.name)
		}
	}
	// Another node's block goes out with bpf_redirect_neigh.
	if err := f.SyncRemote(map[RemoteKey]RemoteValue{
		RemoteKeyOf(netip.MustParsePrefix("10.2.0.0/24")): RemoteValueOf(42, netip.MustParseAddr("192.168.1.2")),
	}); err != nil {
		t.Fatal(err)
	}
	if ret, out, _ := runProg(f.prog, frame(0x0800, ipv4("10.2.0.9"))); ret != tcActRedirect || !bytes.Equal(out[:14], frame(0x0800, ipv4("10.2.0.9"))[:14]) {
		t.Errorf("remote block: returned %d", ret)
	}
	if ret, _, _ := runProg(f.prog, frame(0x0800, ipv4("10.3.0.9"))); ret != tcActPass {
		t.Errorf("unknown block: returned %d, want to pass", ret)
	}
	if err := f.SyncRemote(map[RemoteKey]RemoteValue{}); err != nil {
		t.Fatal(err)
	}
	if ret, _, _ := runProg(f.prog, frame(0x0800, ipv4("10.2.0.9"))); ret != tcActPass {
		t.Errorf("after the block left: returned %d", ret)
	}

	// Three local deliveries, one remote redirect.
	if c, err := f.Counters(); err != nil || c != (Counters{Local: 3, Remote: 1}) {
		t.Errorf("counters %+v (%v), want 3 local and 1 remote", c, err)
	}

	testEndpointPackets(t, f, podMAC)
	_ = f.SyncEndpoints(map[EndpointKey]uint32{})
	_ = f.Sync(map[Key]Value{
		KeyOf(netip.MustParseAddr("10.1.0.5")): ValueOf(42, podMAC),
		KeyOf(netip.MustParseAddr("fd00::5")):  ValueOf(43, podMAC),
	})

	// Sync removes what is no longer wanted.
	if err := f.Sync(map[Key]Value{}); err != nil {
		t.Fatal(err)
	}
	if ret, _, _ := runProg(f.prog, frame(0x0800, ipv4("10.1.0.5"))); ret != tcActPass {
		t.Errorf("after the pod left, returned %d", ret)
	}
}

// testEndpointPackets: a packet from or to a service endpoint (its address, protocol and
// port) takes the kernel's path when conntrack holds its flow, in either direction (a
// reply to be un-DNATed, a connection tracked from its start, a new connection whose
// replies would look like an older translated one's), or when its ports cannot be read;
// otherwise it takes the short cut like any other. Run in a namespace of its own, whose
// conntrack table holds only this test's flows.
func testEndpointPackets(t *testing.T, f *Fastpath, podMAC net.HardwareAddr) {
	if f.NoConntrack != nil {
		t.Fatalf("the programs cannot ask conntrack: %v", f.NoConntrack)
	}
	pods := map[Key]Value{}
	for _, a := range []string{"10.1.0.4", "10.1.0.5", "10.1.0.9", "fd00::4", "fd00::5", "fd00::9"} {
		pods[KeyOf(netip.MustParseAddr(a))] = ValueOf(42, podMAC)
	}
	if err := f.Sync(pods); err != nil {
		t.Fatal(err)
	}
	eps := map[EndpointKey]uint32{}
	for _, a := range []string{"10.1.0.9", "10.1.0.5", "fd00::9", "fd00::5"} {
		for _, proto := range []uint8{6, 17, 132} {
			eps[EndpointKeyOf(netip.MustParseAddr(a), proto, 8080)] = 1
		}
	}
	if err := f.SyncEndpoints(eps); err != nil {
		t.Fatal(err)
	}
	// f.prog (on the uplink and the VXLAN device) also wants the source in a pod block;
	// for the host veths' program, sourceCheck has made sure it is the veth's pod.
	if err := f.SyncRemote(map[RemoteKey]RemoteValue{
		RemoteKeyOf(netip.MustParsePrefix("10.1.0.0/24")): RemoteValueOf(42, netip.MustParseAddr("192.168.1.2")),
		RemoteKeyOf(netip.MustParsePrefix("fd00::/64")):   RemoteValueOf(42, netip.MustParseAddr("fd00:255::2")),
	}); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.SyncRemote(map[RemoteKey]RemoteValue{}) }()
	restore := enter(t, testutil.NewNS(t, "fpct"))
	defer restore()
	for _, fl := range []struct{ orig, reply [2]string }{
		// A connection to a service address, DNATed to 10.1.0.9:8080.
		{[2]string{"10.1.0.5:4000", "10.96.0.1:80"}, [2]string{"10.1.0.9:8080", "10.1.0.5:4000"}},
		{[2]string{"[fd00::5]:4000", "[fd00:96::1]:80"}, [2]string{"[fd00::9]:8080", "[fd00::5]:4000"}},
		// A connection straight to the endpoint that the kernel's path tracked.
		{[2]string{"10.1.0.4:5000", "10.1.0.5:8080"}, [2]string{"10.1.0.5:8080", "10.1.0.4:5000"}},
		// A closed connection through a service to 10.1.0.5:8080 from 10.1.0.4:6000.
		{[2]string{"10.1.0.4:6000", "10.96.0.1:80"}, [2]string{"10.1.0.5:8080", "10.1.0.4:6000"}},
	} {
		if err := createFlow(17, fl.orig, fl.reply); err != nil {
			t.Fatal(err)
		}
	}
	// The same over TCP: an established connection through a service, a closed one.
	if err := createFlow(6, [2]string{"10.1.0.5:4000", "10.96.0.1:80"}, [2]string{"10.1.0.9:8080", "10.1.0.5:4000"}); err != nil {
		t.Fatal(err)
	}
	if err := createFlow(6, [2]string{"10.1.0.4:6000", "10.96.0.1:80"}, [2]string{"10.1.0.5:8080", "10.1.0.4:6000"}); err != nil {
		t.Fatal(err)
	}
	syn := frame(0x0800, tcp4("10.1.0.4", 6000, "10.1.0.5", 8080))
	syn[14+20+13] = 0x02
	for _, c := range []struct {
		name string
		in   []byte
		want uint32
	}{
		{"TCP reply through a service", frame(0x0800, tcp4("10.1.0.9", 8080, "10.1.0.5", 4000)), tcActPass},
		{"TCP SYN whose reply is a closed translated flow's", syn, tcActPass},
		// Past the SYN only the packet's own flow is looked up: a SYN that took the short
		// cut had no such older flow.
		{"TCP ACK whose reply is a closed translated flow's", frame(0x0800, tcp4("10.1.0.4", 6000, "10.1.0.5", 8080)), tcActRedirect},
		{"IPv4 reply through a service", frame(0x0800, udp("10.1.0.9:8080", "10.1.0.5:4000")), tcActPass},
		{"IPv6 reply through a service", frame(0x86dd, udp("[fd00::9]:8080", "[fd00::5]:4000")), tcActPass},
		{"IPv4 reply with options", frame(0x0800, withOptions(udp("10.1.0.9:8080", "10.1.0.5:4000"))), tcActPass},
		{"IPv4 to an endpoint, tracked", frame(0x0800, udp("10.1.0.4:5000", "10.1.0.5:8080")), tcActPass},
		{"IPv4 reply of a tracked connection", frame(0x0800, udp("10.1.0.5:8080", "10.1.0.4:5000")), tcActPass},
		{"IPv4 whose reply is a translated flow's", frame(0x0800, udp("10.1.0.4:6000", "10.1.0.5:8080")), tcActPass},
		{"IPv4 from an endpoint, untracked", frame(0x0800, udp("10.1.0.9:8080", "10.1.0.5:4001")), tcActRedirect},
		{"IPv6 from an endpoint, untracked", frame(0x86dd, udp("[fd00::9]:8080", "[fd00::5]:4001")), tcActRedirect},
		{"IPv4 to an endpoint, untracked", frame(0x0800, udp("10.1.0.4:5001", "10.1.0.5:8080")), tcActRedirect},
		{"IPv6 to an endpoint, untracked", frame(0x86dd, udp("[fd00::4]:5001", "[fd00::5]:8080")), tcActRedirect},
		{"IPv4 TCP to an endpoint, untracked", frame(0x0800, tcp4("10.1.0.4", 5001, "10.1.0.5", 8080)), tcActRedirect},
		{"IPv4 SCTP to an endpoint", frame(0x0800, ip4(132, "10.1.0.4", "10.1.0.5", ports(5001, 8080, 12))), tcActPass},
		{"IPv4 fragment", frame(0x0800, fragment(udp("10.1.0.4:5001", "10.1.0.5:8080"))), tcActPass},
		{"IPv6 extension header", frame(0x86dd, extHeader(udp("[fd00::4]:5001", "[fd00::5]:8080"))), tcActPass},
		{"IPv4 between other ports", frame(0x0800, udp("10.1.0.4:5000", "10.1.0.5:8081")), tcActRedirect},
		{"IPv4 to an endpoint from outside the pod blocks", frame(0x0800, udp("10.7.0.4:5001", "10.1.0.5:8080")), tcActPass},
	} {
		ret, _, err := runProg(f.prog, c.in)
		if err != nil {
			t.Fatal(err)
		}
		if ret != c.want {
			t.Errorf("%s: returned %d, want %d", c.name, ret, c.want)
		}
	}
}

// createFlow adds a conntrack entry (UDP, or TCP established) with the given original and
// reply directions ("address:port" each) to the current namespace.
func createFlow(proto uint8, orig, reply [2]string) error {
	tuple := func(src, dst string) netlink.IPTuple {
		s, d := netip.MustParseAddrPort(src), netip.MustParseAddrPort(dst)
		return netlink.IPTuple{Protocol: proto, SrcIP: s.Addr().AsSlice(), SrcPort: s.Port(), DstIP: d.Addr().AsSlice(), DstPort: d.Port()}
	}
	family := netlink.InetFamily(unix.AF_INET)
	if netip.MustParseAddrPort(orig[0]).Addr().Is6() {
		family = unix.AF_INET6
	}
	fl := &netlink.ConntrackFlow{FamilyType: uint8(family), Forward: tuple(orig[0], orig[1]), Reverse: tuple(reply[0], reply[1]), TimeOut: 120}
	if proto == unix.IPPROTO_TCP {
		fl.ProtoInfo = &netlink.ProtoInfoTCP{State: 3} // TCP_CONNTRACK_ESTABLISHED
	}
	if err := netlink.ConntrackCreate(netlink.ConntrackTable, family, fl); err != nil {
		return fmt.Errorf("create conntrack entry %v: %w", orig, err)
	}
	return nil
}

// ports is an L4 header of n bytes that starts with the two ports.
func ports(sport, dport uint16, n int) []byte {
	b := make([]byte, n)
	binary.BigEndian.PutUint16(b, sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	return b
}

// udp is a UDP packet between two "address:port"s.
func udp(src, dst string) []byte {
	s, d := netip.MustParseAddrPort(src), netip.MustParseAddrPort(dst)
	l4 := ports(s.Port(), d.Port(), 8)
	if s.Addr().Is4() {
		return ip4(17, s.Addr().String(), d.Addr().String(), l4)
	}
	return ip6(17, s.Addr().String(), d.Addr().String(), l4)
}

// loaded loads the programs for a test that needs root, and closes them when it ends.
func loaded(t *testing.T, tun *Tunnel) *Fastpath {
	t.Helper()
	testutil.RequireRoot(t)
	f, err := Load(tun)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	return f
}

func runProg(p *ebpf.Program, in []byte) (uint32, []byte, error) {
	out := make([]byte, len(in)+256)
	opts := &ebpf.RunOptions{Data: in, DataOut: out}
	ret, err := p.Run(opts)
	return ret, opts.DataOut, err
}

// vxlanFrame wraps an inner IP packet (for dst) in Ethernet, VXLAN, UDP and an outer IP
// header of the given family, addressed as a peer's kernel VXLAN device would send it.
func vxlanFrame(outer6 bool, port uint16, vni uint32, vtep net.HardwareAddr, inner []byte, innerType uint16) []byte {
	eth := make([]byte, 14, 14+len(inner))
	copy(eth[0:6], vtep)
	copy(eth[6:12], []byte{2, 0, 0, 0, 0, 0xcc})
	binary.BigEndian.PutUint16(eth[12:], innerType)
	payload := append(eth, inner...)
	udp := make([]byte, 16) // UDP and VXLAN headers
	binary.BigEndian.PutUint16(udp[0:], 49152)
	binary.BigEndian.PutUint16(udp[2:], port)
	binary.BigEndian.PutUint16(udp[4:], uint16(16+len(payload)))
	udp[8] = 0x08
	binary.BigEndian.PutUint32(udp[12:], vni<<8)
	udp = append(udp, payload...)
	var ip []byte
	outerType := uint16(0x0800)
	if outer6 {
		outerType = 0x86dd
		ip = make([]byte, 40)
		ip[0], ip[6], ip[7] = 0x60, 17, 64
		binary.BigEndian.PutUint16(ip[4:], uint16(len(udp)))
		s, d := netip.MustParseAddr("fd00:255::1").As16(), netip.MustParseAddr("fd00:255::2").As16()
		copy(ip[8:24], s[:])
		copy(ip[24:40], d[:])
	} else {
		ip = make([]byte, 20)
		ip[0], ip[8], ip[9] = 0x45, 64, 17
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(udp)))
		s, d := netip.MustParseAddr("192.168.255.1").As4(), netip.MustParseAddr("192.168.255.2").As4()
		copy(ip[12:16], s[:])
		copy(ip[16:20], d[:])
	}
	f := frame(outerType, append(ip, udp...))
	copy(f[0:6], make([]byte, 6)) // the test run's device (lo) has the all-zero MAC: PACKET_HOST
	return f
}

// TestUplinkDecap runs the uplink program on VXLAN frames: those for a local pod come out
// as the bare inner packet addressed to the pod, everything the program does not fully
// recognise passes untouched to the kernel's VXLAN device.
func TestUplinkDecap(t *testing.T) {
	vtep := net.HardwareAddr{0x0e, 0xee, 1, 0xf2, 3, 4} // high bit set in the fourth byte: a 32-bit compare
	const port, vni = 4789, 0x123456
	f := loaded(t, &Tunnel{Port: port, VNI: vni, VTEPMAC: vtep})
	podMAC := net.HardwareAddr{0x0a, 1, 2, 3, 4, 5}
	if err := f.Sync(map[Key]Value{
		KeyOf(netip.MustParseAddr("10.1.0.5")): ValueOf(42, podMAC),
		KeyOf(netip.MustParseAddr("fd00::5")):  ValueOf(43, podMAC),
	}); err != nil {
		t.Fatal(err)
	}
	in4, in6 := ipv4("10.1.0.5"), ipv6("fd00::5")
	epUntracked := udp("10.2.0.7:53", "10.1.0.5:4001")
	decapped := []struct {
		name      string
		in        []byte
		inner     []byte
		innerType uint16
	}{
		{"IPv4 in IPv4", vxlanFrame(false, port, vni, vtep, in4, 0x0800), in4, 0x0800},
		{"IPv6 in IPv4", vxlanFrame(false, port, vni, vtep, in6, 0x86dd), in6, 0x86dd},
		{"IPv4 in IPv6", vxlanFrame(true, port, vni, vtep, in4, 0x0800), in4, 0x0800},
		{"IPv6 in IPv6", vxlanFrame(true, port, vni, vtep, in6, 0x86dd), in6, 0x86dd},
		{"untracked, from a service endpoint in a pod block", vxlanFrame(false, port, vni, vtep, epUntracked, 0x0800), epUntracked, 0x0800},
	}
	// The test's conntrack flows are in a namespace of its own; so are its runs.
	ns := testutil.NewNS(t, "fpdecap")
	restore := enter(t, ns)
	defer restore()
	if err := createFlow(17, [2]string{"10.1.0.5:4000", "10.96.0.10:53"}, [2]string{"10.2.0.7:53", "10.1.0.5:4000"}); err != nil {
		t.Fatal(err)
	}
	if err := f.SyncEndpoints(map[EndpointKey]uint32{
		EndpointKeyOf(netip.MustParseAddr("10.2.0.7"), 17, 53): 1,
		EndpointKeyOf(netip.MustParseAddr("10.3.0.7"), 17, 53): 1,
	}); err != nil {
		t.Fatal(err)
	}
	// 10.2.0.0/24 is another node's pod block; 10.3.0.7 is outside every pod block.
	if err := f.SyncRemote(map[RemoteKey]RemoteValue{
		RemoteKeyOf(netip.MustParsePrefix("10.2.0.0/24")): RemoteValueOf(42, netip.MustParseAddr("192.168.1.2")),
	}); err != nil {
		t.Fatal(err)
	}
	for _, c := range decapped {
		ret, out, err := runProg(f.uplink, c.in)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if ret != tcActRedirect {
			t.Errorf("%s: returned %d, want a redirect", c.name, ret)
			continue
		}
		if !bytes.Equal(out[0:6], podMAC) || binary.BigEndian.Uint16(out[12:]) != c.innerType || !bytes.Equal(out[14:], c.inner) {
			t.Errorf("%s: got frame %x, want the inner packet %x behind the pod's MAC", c.name, out, c.inner)
		}
	}

	fragment := vxlanFrame(false, port, vni, vtep, in4, 0x0800)
	fragment[14+6] = 0x20 // more fragments
	otherHost := vxlanFrame(false, port, vni, vtep, in4, 0x0800)
	otherHost[0] = 0x02
	passed := []struct {
		name string
		in   []byte
	}{
		{"another VNI", vxlanFrame(false, port, vni+1, vtep, in4, 0x0800)},
		{"another port", vxlanFrame(false, 8472, vni, vtep, in4, 0x0800)},
		{"another VTEP MAC", vxlanFrame(false, port, vni, podMAC, in4, 0x0800)},
		{"a pod on another node", vxlanFrame(false, port, vni, vtep, ipv4("10.1.0.6"), 0x0800)},
		{"ARP inside", vxlanFrame(false, port, vni, vtep, make([]byte, 28), 0x0806)},
		{"an outer fragment", fragment},
		{"a frame for another host", otherHost},
		{"a reply through a service", vxlanFrame(false, port, vni, vtep, udp("10.2.0.7:53", "10.1.0.5:4000"), 0x0800)},
		// Its reply would take the kernel's path: so must it.
		{"untracked, from a service endpoint outside the pod blocks", vxlanFrame(false, port, vni, vtep, udp("10.3.0.7:53", "10.1.0.5:4001"), 0x0800)},
	}
	for _, c := range passed {
		ret, out, err := runProg(f.uplink, c.in)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if ret != tcActPass || !bytes.Equal(out, c.in) {
			t.Errorf("%s: returned %d (frame changed: %v), want it passed untouched", c.name, ret, !bytes.Equal(out, c.in))
		}
	}

	// Plain (direct-routed) packets for local pods are still delivered on the uplink.
	if ret, out, _ := runProg(f.uplink, frame(0x0800, ipv4("10.1.0.5"))); ret != tcActRedirect || !bytes.Equal(out[0:6], podMAC) {
		t.Errorf("plain packet on the uplink: returned %d", ret)
	}
	if c, err := f.Counters(); err != nil || c != (Counters{Decap: uint64(len(decapped)), Local: 1}) {
		t.Errorf("counters %+v (%v), want %d decapsulated and 1 local", c, err, len(decapped))
	}
}

// withOptions inserts 4 bytes of IPv4 options (IHL 6): the ports move with them.
func withOptions(p []byte) []byte {
	out := append(append(append([]byte{}, p[:20]...), 1, 1, 1, 0), p[20:]...)
	out[0] = 0x46
	return out
}

func fragment(p []byte) []byte {
	p[6] = 0x20 // more fragments
	return p
}

func extHeader(p []byte) []byte {
	p[6] = 60 // destination options
	return p
}

// TestPodProgramChecksSource: on a host veth only what the pod sends from its own address
// and MAC, on its own veth, is short-cut; a spoofed frame goes to the kernel's path (where
// the anti-spoofing table drops it).
func TestPodProgramChecksSource(t *testing.T) {
	f := loaded(t, nil)
	dstMAC := net.HardwareAddr{0x0a, 1, 2, 3, 4, 5}
	srcMAC := net.HardwareAddr{2, 0, 0, 0, 0, 0xbb} // the sender in frame()
	// BPF_PROG_TEST_RUN runs the program on the loopback device: index 1 is the sender's veth.
	sync := func(senderIfindex int) {
		t.Helper()
		if err := f.Sync(map[Key]Value{
			KeyOf(netip.MustParseAddr("10.1.0.5")): ValueOf(42, dstMAC),
			KeyOf(netip.MustParseAddr("fd00::5")):  ValueOf(42, dstMAC),
			KeyOf(netip.MustParseAddr("10.1.0.9")): ValueOf(senderIfindex, srcMAC),
			KeyOf(netip.MustParseAddr("fd00::9")):  ValueOf(senderIfindex, srcMAC),
		}); err != nil {
			t.Fatal(err)
		}
	}
	sync(1)
	otherMAC := func(b []byte) []byte { b[11] = 0xcc; return b }
	for _, c := range []struct {
		name string
		in   []byte
		want uint32
	}{
		{"own IPv4 source", frame(0x0800, ipv4("10.1.0.5")), tcActRedirect},
		{"own IPv6 source", frame(0x86dd, ipv6("fd00::5")), tcActRedirect},
		{"spoofed IPv4 source", frame(0x0800, ipv4From("10.1.0.77", 8080, "10.1.0.5")), tcActPass},
		{"spoofed IPv6 source", frame(0x86dd, ipv6From("fd00::77", 8080, "fd00::5")), tcActPass},
		{"another local pod's source", frame(0x0800, ipv4From("10.1.0.5", 8080, "10.1.0.5")), tcActPass},
		{"spoofed MAC", otherMAC(frame(0x0800, ipv4("10.1.0.5"))), tcActPass},
		{"ARP", frame(0x0806, make([]byte, 28)), tcActPass},
	} {
		ret, out, err := runProg(f.pod, c.in)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if ret != c.want {
			t.Errorf("%s: returned %d, want %d", c.name, ret, c.want)
		}
		if c.want == tcActPass && !bytes.Equal(out[:len(c.in)], c.in) {
			t.Errorf("%s: a passed frame was modified", c.name)
		}
	}
	// The sender's address arriving on another pod's veth is not the sender.
	sync(43)
	if ret, _, _ := runProg(f.pod, frame(0x0800, ipv4("10.1.0.5"))); ret != tcActPass {
		t.Errorf("own address on another device: returned %d, want to pass", ret)
	}
	// The tunnel device's program checks no source: other nodes' pods send through it.
	if ret, _, _ := runProg(f.prog, frame(0x0800, ipv4From("10.1.0.77", 8080, "10.1.0.5"))); ret != tcActRedirect {
		t.Errorf("tunnel program: returned %d, want a redirect", ret)
	}
}

// TestSyncEndpointsWritesTheDifference: after the first sync, a sync writes only what
// changed, and the map still ends up holding exactly what was asked; every verifyEvery-th
// sync reads the kernel's map again and repairs what someone else changed.
func TestSyncEndpointsWritesTheDifference(t *testing.T) {
	f := loaded(t, nil)
	key := func(i int) EndpointKey {
		return EndpointKeyOf(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 6, 8080)
	}
	holds := func() map[EndpointKey]uint32 {
		out := map[EndpointKey]uint32{}
		var k EndpointKey
		var v uint32
		it := f.eps.Iterate()
		for it.Next(&k, &v) {
			out[k] = v
		}
		return out
	}
	a := map[EndpointKey]uint32{key(1): 1, key(2): 1, key(3): 1}
	b := map[EndpointKey]uint32{key(2): 1, key(3): 1, key(4): 1}
	for _, want := range []map[EndpointKey]uint32{a, b, a} {
		if err := f.SyncEndpoints(want); err != nil {
			t.Fatal(err)
		}
		if got := holds(); !maps.Equal(got, want) {
			t.Fatalf("map holds %v, want %v", got, want)
		}
	}
	// Someone deletes an entry behind weftd's back: a verifying pass puts it back.
	if err := f.eps.Delete(key(1)); err != nil {
		t.Fatal(err)
	}
	for f.epsMirror.syncs%verifyEvery != verifyEvery-1 {
		_ = f.SyncEndpoints(a)
	}
	if err := f.SyncEndpoints(a); err != nil {
		t.Fatal(err)
	}
	if got := holds(); !maps.Equal(got, a) {
		t.Errorf("after a verifying pass the map holds %v, want %v", got, a)
	}
}

// tcp4 is a TCP packet (a bare ACK) from src:sport to dst:dport.
func tcp4(src string, sport uint16, dst string, dport uint16) []byte {
	return ip4(6, src, dst, tcpHeader(sport, dport))
}

// tcp6 is tcp4 over IPv6.
func tcp6(src string, sport uint16, dst string, dport uint16) []byte {
	return ip6(6, src, dst, tcpHeader(sport, dport))
}

func tcpHeader(sport, dport uint16) []byte {
	tcp := make([]byte, 20)
	binary.BigEndian.PutUint16(tcp, sport)
	binary.BigEndian.PutUint16(tcp[2:], dport)
	tcp[12], tcp[13] = 5<<4, 0x10
	return tcp
}

// TestProgramPolicy runs the host veth program on TCP between two local pods, one or both
// policed: redirected only when the packet and its reply would both be allowed as new
// connections, to the kernel's path otherwise.
func TestProgramPolicy(t *testing.T) {
	f := loaded(t, nil)
	sender := net.HardwareAddr{2, 0, 0, 0, 0, 0xbb} // frame()'s source MAC
	podMAC := net.HardwareAddr{0x0a, 1, 2, 3, 4, 5}
	a, b := netip.MustParseAddr("10.1.0.9"), netip.MustParseAddr("10.1.0.5")
	// setFrom puts the sender (behind loopback: BPF_PROG_TEST_RUN's device) and the other
	// of a and b in the map with the rules given, and the rules in the trie.
	setFrom := func(from netip.Addr, rules map[netip.Addr]policy.PodRules) {
		t.Helper()
		to := a
		if from == a {
			to = b
		}
		vf, vt := ValueOf(1, sender), ValueOf(42, podMAC)
		vf.Flags, vt.Flags = FlagsOf(rules[from]), FlagsOf(rules[to])
		if err := f.Sync(map[Key]Value{KeyOf(from): vf, KeyOf(to): vt}); err != nil {
			t.Fatal(err)
		}
		if err := f.SyncPolicy(PolicyEntries(rules)); err != nil {
			t.Fatal(err)
		}
	}
	set := func(rules map[netip.Addr]policy.PodRules) { t.Helper(); setFrom(a, rules) }
	expect := func(what string, pkt []byte, want uint32) {
		t.Helper()
		if ret, _, err := runProg(f.pod, frame(0x0800, pkt)); err != nil || ret != want {
			t.Errorf("%s: returned %d (%v), want %d", what, ret, err, want)
		}
	}
	p := netip.MustParsePrefix
	ingress := func(prs ...policy.PortRule) *policy.Rules { return &policy.Rules{Ports: prs} }

	set(nil)
	expect("no policy", tcp4("10.1.0.9", 40000, "10.1.0.5", 8080), tcActRedirect)

	// b takes TCP 8080 from a; a has no policy.
	set(map[netip.Addr]policy.PodRules{b: {Ingress: ingress(policy.PortRule{Peer: p("10.1.0.9/32"), Proto: "TCP", First: 8080, Last: 8080})}})
	expect("to b's allowed port", tcp4("10.1.0.9", 40000, "10.1.0.5", 8080), tcActRedirect)
	expect("to b's other port", tcp4("10.1.0.9", 40000, "10.1.0.5", 81), tcActPass)
	expect("UDP to b's allowed port", ipv4From("10.1.0.9", 40000, "10.1.0.5"), tcActPass)
	// b's replies: allowed as new connections from b (its egress is open, a's ingress too),
	// and their replies are a's requests.
	setFrom(b, map[netip.Addr]policy.PodRules{b: {Ingress: ingress(policy.PortRule{Peer: p("10.1.0.9/32"), Proto: "TCP", First: 8080, Last: 8080})}})
	expect("b's reply", tcp4("10.1.0.5", 8080, "10.1.0.9", 40000), tcActRedirect)
	expect("b from another port", tcp4("10.1.0.5", 8081, "10.1.0.9", 40000), tcActPass)

	// Prefixes: a /16 on 443 inside a /8 on 80; a's address matches the /16 entry, which
	// carries the /8's port too.
	set(map[netip.Addr]policy.PodRules{b: {Ingress: ingress(
		policy.PortRule{Peer: p("10.0.0.0/8"), Proto: "TCP", First: 80, Last: 80},
		policy.PortRule{Peer: p("10.1.0.0/16"), Proto: "TCP", First: 443, Last: 443})}})
	expect("port of the covering /8", tcp4("10.1.0.9", 40000, "10.1.0.5", 80), tcActRedirect)
	expect("port of the /16", tcp4("10.1.0.9", 40000, "10.1.0.5", 443), tcActRedirect)
	expect("neither", tcp4("10.1.0.9", 40000, "10.1.0.5", 8080), tcActPass)

	// a denies everything in: b's replies to it need state, so the connection is the
	// kernel's even though b's ingress allows it.
	set(map[netip.Addr]policy.PodRules{
		b: {Ingress: ingress(policy.PortRule{Peer: p("10.1.0.9/32"), Proto: "TCP", First: 8080, Last: 8080})},
		a: {Ingress: &policy.Rules{}}})
	expect("replies need state", tcp4("10.1.0.9", 40000, "10.1.0.5", 8080), tcActPass)

	// Egress: a may reach b on TCP 8000-9000 (and b's ingress is open).
	set(map[netip.Addr]policy.PodRules{a: {Egress: ingress(policy.PortRule{Peer: p("10.1.0.5/32"), Proto: "TCP", First: 8000, Last: 9000})}})
	expect("in a's egress range", tcp4("10.1.0.9", 40000, "10.1.0.5", 8500), tcActRedirect)
	expect("outside a's egress range", tcp4("10.1.0.9", 40000, "10.1.0.5", 9001), tcActPass)
	// Every port: Any.
	set(map[netip.Addr]policy.PodRules{a: {Egress: &policy.Rules{Any: []netip.Prefix{p("0.0.0.0/0")}}}})
	expect("a's egress allows all", tcp4("10.1.0.9", 40000, "10.1.0.5", 1), tcActRedirect)

	// IPv6: b (fd00::5) takes TCP 8080 from fd00::/64.
	a6, b6 := netip.MustParseAddr("fd00::9"), netip.MustParseAddr("fd00::5")
	va, vb := ValueOf(1, sender), ValueOf(42, podMAC)
	vb.Flags = FlagIngressPoliced
	rules6 := map[netip.Addr]policy.PodRules{b6: {Ingress: ingress(policy.PortRule{Peer: p("fd00::/64"), Proto: "TCP", First: 8080, Last: 8080})}}
	if err := f.Sync(map[Key]Value{KeyOf(a6): va, KeyOf(b6): vb}); err != nil {
		t.Fatal(err)
	}
	if err := f.SyncPolicy(PolicyEntries(rules6)); err != nil {
		t.Fatal(err)
	}
	expect6 := func(what string, pkt []byte, want uint32) {
		t.Helper()
		if ret, _, err := runProg(f.pod, frame(0x86dd, pkt)); err != nil || ret != want {
			t.Errorf("%s: returned %d (%v), want %d", what, ret, err, want)
		}
	}
	expect6("IPv6 to b's allowed port", tcp6("fd00::9", 40000, "fd00::5", 8080), tcActRedirect)
	expect6("IPv6 to b's other port", tcp6("fd00::9", 40000, "fd00::5", 8081), tcActPass)

	// A policed pod's traffic to another node is the kernel's.
	if err := f.SyncRemote(map[RemoteKey]RemoteValue{RemoteKeyOf(p("10.2.0.0/24")): RemoteValueOf(42, netip.MustParseAddr("192.168.1.2"))}); err != nil {
		t.Fatal(err)
	}
	expect("policed a to another node", tcp4("10.1.0.9", 40000, "10.2.0.9", 8080), tcActPass)
	set(nil)
	expect("unpoliced a to another node", tcp4("10.1.0.9", 40000, "10.2.0.9", 8080), tcActRedirect)
}

func TestPolicyEntries(t *testing.T) {
	pod := netip.MustParseAddr("10.1.0.5")
	many := &policy.Rules{}
	for i := range maxPolicyRanges + 1 {
		many.Ports = append(many.Ports, policy.PortRule{Peer: netip.MustParsePrefix("10.9.0.0/16"), Proto: "TCP", First: 100 * (i + 1), Last: 100 * (i + 1)})
	}
	many.Ports = append(many.Ports,
		policy.PortRule{Peer: netip.MustParsePrefix("10.8.0.0/16"), Proto: "UDP", First: 53, Last: 53},
		policy.PortRule{Peer: netip.MustParsePrefix("10.7.0.0/16"), Proto: "TCP", First: 10, Last: 20},
		policy.PortRule{Peer: netip.MustParsePrefix("10.7.0.0/16"), Proto: "TCP", First: 21, Last: 30})
	got := PolicyEntries(map[netip.Addr]policy.PodRules{pod: {Ingress: many}})
	want := map[PolicyKey]PolicyValue{
		// 10.9/16 needs 9 ranges: left out. 10.8/16 is UDP only: left out.
		policyKey(DirIngress, pod, netip.MustParsePrefix("10.7.0.0/16")): {N: 1, Ranges: [maxPolicyRanges]PortRange{{10, 30}}},
	}
	if !maps.Equal(got, want) {
		t.Errorf("entries %v, want %v", got, want)
	}
}

// enter moves the calling goroutine, on a thread locked to it, into ns; restore moves it
// back (if that fails, the thread is left locked, so Go retires it with the goroutine).
func enter(t *testing.T, ns testutil.NS) (restore func()) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	target, err := netns.GetFromPath(ns.Path)
	if err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	return func() {
		defer orig.Close()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
	}
}

// TestLoadRaw: the system call weft makes itself for a conntrack in a module (which this
// kernel may not have) loads a program that calls the kfuncs and works like one loaded by
// cilium/ebpf; a program the verifier refuses comes back with the verifier's reason.
func TestLoadRaw(t *testing.T) {
	f := loaded(t, nil)
	ct, err := findCtKfuncs()
	if err != nil {
		t.Fatal(err)
	}
	defer ct.close()
	if ct.module != nil {
		t.Skip("conntrack is a module here: Load already took this path")
	}
	p, err := loadRaw(programSpec(f.pods, f.remote, f.stats, f.eps, f.policy, ct, nil, false), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	mac := net.HardwareAddr{0x0a, 1, 2, 3, 4, 5}
	if err := f.Sync(map[Key]Value{KeyOf(netip.MustParseAddr("10.1.0.5")): ValueOf(42, mac)}); err != nil {
		t.Fatal(err)
	}
	if ret, out, err := runProg(p, frame(0x0800, ipv4("10.1.0.5"))); err != nil || ret != tcActRedirect || !bytes.Equal(out[0:6], mac) {
		t.Errorf("returned %d (%v), want a redirect to the pod", ret, err)
	}
	bad := &ebpf.ProgramSpec{Name: "weft_bad", Type: ebpf.SchedCLS, License: programLicense, Instructions: asm.Instructions{asm.Return()}}
	if _, err := loadRaw(bad, nil); err == nil || !strings.Contains(err.Error(), "R0") {
		t.Errorf("a program returning nothing loaded, or without the verifier's reason: %v", err)
	}
}
