package nodeportlb

import (
	"encoding/binary"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/weftnet/weft/internal/bpffs"
	"github.com/weftnet/weft/internal/dataplane"
	"github.com/weftnet/weft/internal/proxy"
	"github.com/weftnet/weft/internal/testutil"
)

func load(t *testing.T) *Balancer {
	t.Helper()
	testutil.RequireRoot(t)
	bpf := t.TempDir()
	t.Cleanup(func() { _ = bpffs.Unmount(bpf) })
	b, err := Load(filepath.Join(bpf, "np"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

func nodePort(port uint16, vip string, backends ...string) *proxy.Port {
	p := &proxy.Port{Service: "default/web", VIP: netip.MustParseAddr(vip), Port: 80, Proto: proxy.ProtoTCP, NodePort: port}
	for _, s := range backends {
		ap := netip.MustParseAddrPort(s)
		p.NodePortBackends = append(p.NodePortBackends, proxy.Backend{IP: ap.Addr(), Port: ap.Port()})
	}
	return p
}

// frame is an Ethernet frame carrying a TCP SYN from src to dst.
func frame(src, dst netip.AddrPort) []byte {
	tcp := make([]byte, 20)
	binary.BigEndian.PutUint16(tcp[0:], src.Port())
	binary.BigEndian.PutUint16(tcp[2:], dst.Port())
	tcp[12], tcp[13] = 5<<4, 0x02
	eth := make([]byte, 14)
	var ip []byte
	if src.Addr().Is4() {
		binary.BigEndian.PutUint16(eth[12:], 0x0800)
		ip = make([]byte, 20)
		ip[0], ip[8], ip[9] = 0x45, 64, 6
		binary.BigEndian.PutUint16(ip[2:], 40)
		s, d := src.Addr().As4(), dst.Addr().As4()
		copy(ip[12:], s[:])
		copy(ip[16:], d[:])
	} else {
		binary.BigEndian.PutUint16(eth[12:], 0x86dd)
		ip = make([]byte, 40)
		ip[0], ip[6], ip[7] = 0x60, 6, 64
		binary.BigEndian.PutUint16(ip[4:], 20)
		s, d := src.Addr().As16(), dst.Addr().As16()
		copy(ip[8:], s[:])
		copy(ip[24:], d[:])
	}
	return append(append(eth, ip...), tcp...)
}

// mark runs the program on a frame and returns the skb mark it leaves.
func (b *Balancer) mark(t *testing.T, f []byte) uint32 {
	t.Helper()
	ctx := make([]byte, 192) // struct __sk_buff; mark at offset 8
	out := make([]byte, 192)
	ret, err := b.objs.WeftNodeport.Run(&ebpf.RunOptions{Data: f, Context: ctx, ContextOut: out})
	if err != nil {
		t.Fatal(err)
	}
	if int32(ret) != -1 {
		t.Fatalf("verdict %d, want TCX_NEXT: the program only marks", int32(ret))
	}
	return binary.NativeEndian.Uint32(out[8:])
}

func TestSameBackendFromEveryNode(t *testing.T) {
	b := load(t)
	five := []string{"10.1.0.5:8080", "10.1.1.5:8080", "10.1.2.5:8080", "10.1.3.5:8080", "10.1.4.5:8080"}
	six := []string{"[fd00:1::5]:8080", "[fd00:1:0:1::5]:8080", "[fd00:1:0:2::5]:8080"}
	st := proxy.State{Ports: map[string]*proxy.Port{
		"a": nodePort(30080, "10.96.0.10", five...),
		"b": nodePort(30080, "fd00:96::10", six...),
	}}
	if err := b.Sync(st); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		client, nodeA, nodeB string
		n                    int
	}{{"192.0.2.7", "10.0.0.1", "10.0.0.2", 5}, {"2001:db8::7", "fd00::1", "fd00::2", 3}} {
		seen := map[uint32]int{}
		for port := uint16(40000); port < 42000; port++ {
			src := netip.AddrPortFrom(netip.MustParseAddr(c.client), port)
			a := b.mark(t, frame(src, netip.AddrPortFrom(netip.MustParseAddr(c.nodeA), 30080)))
			bb := b.mark(t, frame(src, netip.AddrPortFrom(netip.MustParseAddr(c.nodeB), 30080)))
			if a != bb {
				t.Fatalf("flow from %s: node A marks %#x, node B %#x", src, a, bb)
			}
			if a&dataplane.MarkMaglev == 0 || int(a&dataplane.MaglevIndexMask) >= c.n {
				t.Fatalf("flow from %s: mark %#x", src, a)
			}
			seen[a&dataplane.MaglevIndexMask]++
		}
		if len(seen) != c.n {
			t.Errorf("%s clients: 2000 flows reached %d of %d backends: %v", c.client, len(seen), c.n, seen)
		}
	}
	// Not a node port, and the other protocol: untouched.
	if m := b.mark(t, frame(netip.MustParseAddrPort("192.0.2.7:40000"), netip.MustParseAddrPort("10.0.0.1:30081"))); m != 0 {
		t.Errorf("a packet to another port was marked %#x", m)
	}
	ports, err := b.Programmed()
	if err != nil || len(ports) != 2 || ports[0].Marked < 4000 || ports[0].Backends+ports[1].Backends != 8 {
		t.Errorf("programmed: %+v %v", ports, err)
	}
}

// TestBackendRemovalMovesFewFlows: the index order follows the backends as the nftables
// proxy numbers them, so a flow on a backend that stays keeps it (Maglev's promise,
// through weft's numbering).
func TestBackendRemovalMovesFewFlows(t *testing.T) {
	b := load(t)
	all := []string{"10.1.0.5:8080", "10.1.1.5:8080", "10.1.2.5:8080", "10.1.3.5:8080", "10.1.4.5:8080"}
	sync := func(backends []string) {
		if err := b.Sync(proxy.State{Ports: map[string]*proxy.Port{"a": nodePort(30080, "10.96.0.10", backends...)}}); err != nil {
			t.Fatal(err)
		}
	}
	backendOf := func(backends []string, src netip.AddrPort) string {
		m := b.mark(t, frame(src, netip.MustParseAddrPort("10.0.0.1:30080")))
		return backends[m&dataplane.MaglevIndexMask]
	}
	sync(all)
	before := map[netip.AddrPort]string{}
	for port := uint16(40000); port < 44000; port++ {
		src := netip.AddrPortFrom(netip.MustParseAddr("192.0.2.7"), port)
		before[src] = backendOf(all, src)
	}
	kept := []string{all[0], all[1], all[3], all[4]} // all[2] goes; the others shift index
	sync(kept)
	moved, stayed := 0, 0
	for src, was := range before {
		if was == all[2] {
			continue
		}
		stayed++
		if backendOf(kept, src) != was {
			moved++
		}
	}
	if share := float64(moved) / float64(stayed); share > 0.02 {
		t.Errorf("removing one of 5 backends moved %.1f%% of the other backends' flows, want ≤ 2%%", 100*share)
	} else {
		t.Logf("removing one of 5 backends moved %.2f%% of the other backends' flows", 100*share)
	}
}

// TestServiceAddressesFromOutside: with BalanceAddresses, a service address that routers
// send clients to is balanced like a node port, keyed by the address; others are not.
func TestServiceAddressesFromOutside(t *testing.T) {
	b := load(t)
	p := nodePort(30080, "10.96.0.10", "10.1.0.5:8080")
	p.Backends = []proxy.Backend{{IP: netip.MustParseAddr("10.1.0.5"), Port: 8080}, {IP: netip.MustParseAddr("10.1.1.5"), Port: 8080}}
	st := proxy.State{Ports: map[string]*proxy.Port{"a": p}}
	if err := b.Sync(st); err != nil {
		t.Fatal(err)
	}
	src := netip.MustParseAddrPort("192.0.2.7:40000")
	if m := b.mark(t, frame(src, netip.MustParseAddrPort("10.96.0.10:80"))); m != 0 {
		t.Fatalf("a service address was balanced without BalanceAddresses: %#x", m)
	}
	b.BalanceAddresses()
	if err := b.Sync(st); err != nil {
		t.Fatal(err)
	}
	seen := map[uint32]bool{}
	for port := uint16(40000); port < 40200; port++ {
		m := b.mark(t, frame(netip.AddrPortFrom(src.Addr(), port), netip.MustParseAddrPort("10.96.0.10:80")))
		if m&dataplane.MarkMaglev == 0 || m&dataplane.MaglevIndexMask > 1 {
			t.Fatalf("to the service address: mark %#x", m)
		}
		seen[m] = true
	}
	if len(seen) != 2 {
		t.Errorf("200 flows to the service address reached %v", seen)
	}
	if m := b.mark(t, frame(src, netip.MustParseAddrPort("10.96.0.11:80"))); m != 0 {
		t.Errorf("another address was marked %#x", m)
	}
	ports, _ := b.Programmed()
	if len(ports) != 2 || ports[0].Address != "10.96.0.10" && ports[1].Address != "10.96.0.10" {
		t.Errorf("programmed: %+v", ports)
	}
}
