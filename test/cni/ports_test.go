package cni_test

import (
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/probe"
	"github.com/weftnet/weft/internal/testutil"
)

// uplink connects node to a new "outside host" namespace: node 192.0.2.1, outside 192.0.2.2.
func uplink(t *testing.T, n *node) testutil.NS {
	outside := testutil.NewNS(t, "ext")
	nh := n.ns.Handle(t)
	if err := nh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "up0"}, PeerName: "up1"}); err != nil {
		t.Fatal(err)
	}
	peer, _ := nh.LinkByName("up1")
	f, err := os.Open(outside.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := nh.LinkSetNsFd(peer, int(f.Fd())); err != nil {
		t.Fatal(err)
	}
	for _, s := range []struct {
		ns         testutil.NS
		name, addr string
	}{{n.ns, "up0", "192.0.2.1/24"}, {outside, "up1", "192.0.2.2/24"}} {
		h := s.ns.Handle(t)
		l, _ := h.LinkByName(s.name)
		a, _ := netlink.ParseAddr(s.addr)
		if err := h.AddrAdd(l, a); err != nil {
			t.Fatal(err)
		}
		_ = h.LinkSetUp(l)
	}
	return outside
}

func udpEcho(t *testing.T, ns testutil.NS, addr string) {
	t.Helper()
	var pc net.PacketConn
	err := probe.InNS(ns.Path, func() error {
		var err error
		pc, err = net.ListenPacket("udp", addr)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
}

func udpRoundTrip(ns testutil.NS, dst string) error {
	var c net.Conn
	err := probe.InNS(ns.Path, func() error {
		var err error
		c, err = net.Dial("udp", dst)
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	buf := make([]byte, 16)
	_, err = c.Read(buf)
	return err
}

func TestPortMappings(t *testing.T) {
	n := newNode(t, "10.99.0.0/24")
	outside := uplink(t, n)
	list := n.conflist("1.1.0", "weft", `"mode":"bridge","capabilities":{"portMappings":true}`)
	p1, rt1 := n.pod("web")
	rt1.CapabilityArgs = map[string]any{"portMappings": []map[string]any{
		{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"},
		{"hostPort": 15353, "containerPort": 53, "protocol": "udp"},
		{"hostPort": 18443, "containerPort": 80, "protocol": "tcp", "hostIP": "192.0.2.1"},
	}}
	r1 := n.mustAdd(list, rt1)
	ln, err := probe.ListenTCP(p1.Path, ":80")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go probe.Echo(ln)
	udpEcho(t, p1, ":53")

	published := netip.MustParseAddrPort("192.0.2.1:18080")
	for _, c := range []struct {
		from testutil.NS
		what string
	}{{outside, "another host"}, {n.ns, "the node itself"}, {p1, "the pod itself (hairpin)"}} {
		if err := probe.TCPEcho(c.from.Path, published, 2*time.Second); err != nil {
			t.Errorf("TCP to %s from %s: %v", published, c.what, err)
		}
	}
	p2, rt2 := n.pod("client")
	n.mustAdd(list, rt2)
	if err := probe.TCPEcho(p2.Path, published, 2*time.Second); err != nil {
		t.Errorf("TCP to %s from a neighbour pod: %v", published, err)
	}
	if err := udpRoundTrip(outside, "192.0.2.1:15353"); err != nil {
		t.Errorf("UDP to the published port: %v", err)
	}
	if err := probe.TCPEcho(outside.Path, netip.MustParseAddrPort("192.0.2.1:18443"), 2*time.Second); err != nil {
		t.Errorf("TCP to the hostIP-bound port: %v", err)
	}
	// The pod's own port stays reachable directly too.
	if err := probe.TCPEcho(p2.Path, netip.AddrPortFrom(podIPs(r1)[0], 80), 2*time.Second); err != nil {
		t.Errorf("direct pod-to-pod TCP: %v", err)
	}

	// A second pod cannot take a published host port.
	_, rt3 := n.pod("clash")
	rt3.CapabilityArgs = map[string]any{"portMappings": []map[string]any{{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}}}
	if _, err := n.add(list, rt3); cniCode(err) != 103 {
		t.Errorf("a clashing host port: got %v, want code 103", err)
	}

	if err := n.del(list, rt1); err != nil {
		t.Fatal(err)
	}
	if err := probe.TCPEcho(outside.Path, published, 500*time.Millisecond); err == nil {
		t.Error("the port is still published after DEL")
	}

	// GC of an attachment the runtime forgot takes its published port down too.
	p4, rt4 := n.pod("forgotten")
	rt4.CapabilityArgs = map[string]any{"portMappings": []map[string]any{{"hostPort": 18081, "containerPort": 80, "protocol": "tcp"}}}
	n.mustAdd(list, rt4)
	ln4, err := probe.ListenTCP(p4.Path, ":80")
	if err != nil {
		t.Fatal(err)
	}
	defer ln4.Close()
	go probe.Echo(ln4)
	gcPub := netip.MustParseAddrPort("192.0.2.1:18081")
	if err := probe.TCPEcho(outside.Path, gcPub, 2*time.Second); err != nil {
		t.Fatalf("before GC: %v", err)
	}
	if err := n.gc(list, []types.GCAttachment{{ContainerID: "client", IfName: "eth0"}}); err != nil {
		t.Fatal(err)
	}
	if err := probe.TCPEcho(outside.Path, gcPub, 500*time.Millisecond); err == nil {
		t.Error("the port is still published after GC")
	}
}
