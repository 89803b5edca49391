package nftpolicy_test

import (
	"context"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/dataplane/masq"

	"github.com/weftnet/weft/internal/policy"
	"github.com/weftnet/weft/internal/policy/nftpolicy"
	"github.com/weftnet/weft/internal/probe"
	"github.com/weftnet/weft/internal/testutil"
)

// A node namespace routing two pod namespaces (a: 10.50.1.2, b: 10.50.2.2) through routed
// veths, as weft's ptp mode does; every probe is real TCP through the node's forward hook.
type topo struct {
	node, a, b testutil.NS
}

func build(t *testing.T) topo {
	t.Helper()
	tp := topo{node: testutil.NewNS(t, "pn"), a: testutil.NewNS(t, "pa"), b: testutil.NewNS(t, "pb")}
	nh := tp.node.Handle(t)
	for i, pod := range []testutil.NS{tp.a, tp.b} {
		host, podIP, gw := "h"+string(rune('a'+i)), netip.AddrFrom4([4]byte{10, 50, byte(i + 1), 2}), netip.AddrFrom4([4]byte{10, 50, byte(i + 1), 1})
		pf, err := os.Open(pod.Path)
		if err != nil {
			t.Fatal(err)
		}
		if err := nh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host}, PeerName: "eth0", PeerNamespace: netlink.NsFd(pf.Fd())}); err != nil {
			t.Fatal(err)
		}
		pf.Close()
		hl, _ := nh.LinkByName(host)
		must(t, nh.AddrAdd(hl, &netlink.Addr{IPNet: &net.IPNet{IP: gw.AsSlice(), Mask: net.CIDRMask(32, 32)}}))
		must(t, nh.LinkSetUp(hl))
		must(t, nh.RouteAdd(&netlink.Route{Dst: &net.IPNet{IP: podIP.AsSlice(), Mask: net.CIDRMask(32, 32)}, LinkIndex: hl.Attrs().Index, Scope: netlink.SCOPE_LINK}))
		ph := pod.Handle(t)
		el, _ := ph.LinkByName("eth0")
		must(t, ph.AddrAdd(el, &netlink.Addr{IPNet: &net.IPNet{IP: podIP.AsSlice(), Mask: net.CIDRMask(32, 32)}}))
		must(t, ph.LinkSetUp(el))
		lo, _ := ph.LinkByName("lo")
		must(t, ph.LinkSetUp(lo))
		must(t, ph.RouteAdd(&netlink.Route{Dst: &net.IPNet{IP: gw.AsSlice(), Mask: net.CIDRMask(32, 32)}, LinkIndex: el.Attrs().Index, Scope: netlink.SCOPE_LINK}))
		must(t, ph.RouteAdd(&netlink.Route{Gw: gw.AsSlice(), LinkIndex: el.Attrs().Index}))
	}
	must(t, probe.InNS(tp.node.Path, func() error { return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644) }))
	for _, pod := range []testutil.NS{tp.a, tp.b} {
		for _, port := range []string{"80", "81"} {
			ln, err := probe.ListenTCP(pod.Path, ":"+port)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			go probe.Echo(ln)
		}
	}
	return tp
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

var (
	ipA = netip.MustParseAddr("10.50.1.2")
	ipB = netip.MustParseAddr("10.50.2.2")
)

func (tp topo) apply(t *testing.T, pods ...nftpolicy.Pod) {
	t.Helper()
	f, err := os.Open(tp.node.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := nftpolicy.Apply(nftpolicy.State{Cluster: []netip.Prefix{netip.MustParsePrefix("10.50.0.0/16")}, Pods: pods}, int(f.Fd())); err != nil {
		t.Fatal(err)
	}
}

// reach: can from open a connection to to:port (and get its echo back)?
func (tp topo) reach(from testutil.NS, to netip.Addr, port uint16) bool {
	return probe.TCPEcho(from.Path, netip.AddrPortFrom(to, port), 400*time.Millisecond) == nil
}

// expect checks one probe. A connection that should work gets a few tries within 3 s: on
// a loaded machine a fresh topology's first one can miss the 400 ms (neighbour
// resolution); one that should be dropped never gets through a single probe.
func (tp topo) expect(t *testing.T, what string, from testutil.NS, to netip.Addr, port uint16, want bool) {
	t.Helper()
	got := tp.reach(from, to, port)
	for deadline := time.Now().Add(3 * time.Second); want && !got && time.Now().Before(deadline); {
		got = tp.reach(from, to, port)
	}
	if got != want {
		t.Errorf("%s: %v:%d reachable %v, want %v", what, to, port, got, want)
	}
}

func p(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func TestEnforcement(t *testing.T) {
	testutil.RequireRoot(t)
	tp := build(t)
	tp.expect(t, "no table", tp.a, ipB, 81, true)

	// b takes TCP 80 from a only; everything else to b is dropped. a's echo replies come
	// back (stateful), and b may still open connections of its own (egress open).
	tp.apply(t, nftpolicy.Pod{ID: "b", IPs: []netip.Addr{ipB}, Rules: policy.PodRules{
		Ingress: &policy.Rules{Ports: []policy.PortRule{{Peer: p("10.50.1.2/32"), Proto: "TCP", First: 80, Last: 80}}}}})
	tp.expect(t, "a to b's allowed port", tp.a, ipB, 80, true)
	tp.expect(t, "a to b's other port", tp.a, ipB, 81, false)
	tp.expect(t, "b to a (b's egress is open)", tp.b, ipA, 81, true)

	// Interval sets: a range of ports and peers given as overlapping prefixes.
	tp.apply(t, nftpolicy.Pod{ID: "b", IPs: []netip.Addr{ipB}, Rules: policy.PodRules{
		Ingress: &policy.Rules{Ports: []policy.PortRule{
			{Peer: p("10.50.0.0/16"), Proto: "TCP", First: 81, Last: 90},
			{Peer: p("10.50.1.0/24"), Proto: "TCP", First: 81, Last: 90}}}}})
	tp.expect(t, "a to b in the range", tp.a, ipB, 81, true)
	tp.expect(t, "a to b below the range", tp.a, ipB, 80, false)

	// Egress: a may reach only 10.50.3.0/24 (not b); b's ingress open again.
	tp.apply(t, nftpolicy.Pod{ID: "a", IPs: []netip.Addr{ipA}, Rules: policy.PodRules{Egress: &policy.Rules{Any: []netip.Prefix{p("10.50.3.0/24")}}}})
	tp.expect(t, "a's egress to b", tp.a, ipB, 80, false)
	tp.expect(t, "b to a (a's ingress is open; replies are established)", tp.b, ipA, 80, true)

	// A direction selected with no rule at all denies everything; Any 0.0.0.0/0 allows all.
	tp.apply(t, nftpolicy.Pod{ID: "a", IPs: []netip.Addr{ipA}, Rules: policy.PodRules{Ingress: &policy.Rules{}, Egress: &policy.Rules{Any: []netip.Prefix{p("0.0.0.0/0")}}}})
	tp.expect(t, "b to a (a's ingress denies all)", tp.b, ipA, 80, false)
	tp.expect(t, "a to b (a's egress allows all)", tp.a, ipB, 80, true)

	// What the table polices can be read back (a restarted weftd keeps those pods off the
	// fast path until it has synced).
	f, _ := os.Open(tp.node.Path)
	policed, err := nftpolicy.Policed(int(f.Fd()))
	f.Close()
	if err != nil || len(policed) != 1 || !policed[ipA] {
		t.Errorf("policed = %v, %v", policed, err)
	}

	// The drops are counted.
	out, _ := tp.node.Command("nft", "list", "chain", "inet", "weft-policy", "i-a").CombinedOutput()
	if !strings.Contains(string(out), "counter packets") || strings.Contains(string(out), "counter packets 0 ") {
		t.Errorf("i-a's drop counter:\n%s", out)
	}

	// No policed pod: no table.
	tp.apply(t)
	if out, err := tp.node.Command("nft", "list", "table", "inet", "weft-policy").CombinedOutput(); err == nil {
		t.Errorf("the table is still there:\n%s", out)
	}
	tp.expect(t, "no table again", tp.b, ipA, 80, true)
}

// TestDropsAreLogged reads the nflog group while a denied connection is tried: the drop
// arrives with its chain and 5-tuple.
func TestDropsAreLogged(t *testing.T) {
	testutil.RequireRoot(t)
	tp := build(t)
	tp.apply(t, nftpolicy.Pod{ID: "b", IPs: []netip.Addr{ipB}, Rules: policy.PodRules{Ingress: &policy.Rules{}}})
	drops := make(chan nftpolicy.Drop, 16)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan error, 1)
	go func() {
		ready <- probe.InNS(tp.node.Path, func() error {
			return nftpolicy.ReadLog(ctx, func(d nftpolicy.Drop) { drops <- d })
		})
	}()
	deadline := time.After(5 * time.Second)
	for {
		tp.reach(tp.a, ipB, 81) // denied: dropped and logged
		select {
		case d := <-drops:
			if d.Chain != "i-b" || d.Proto != "TCP" || d.Src != ipA || d.Dst != ipB || d.DPort != 81 || d.SPort == 0 {
				t.Fatalf("drop %+v", d)
			}
			return
		case err := <-ready:
			t.Fatalf("log reader ended: %v", err)
		case <-deadline:
			t.Fatal("no drop logged")
		default:
		}
	}
}

// TestUntrackedWhereAllowedBothWays runs the node as weftd does, with weft-nat's pod-to-pod
// notrack: a TCP connection the policies allow as a new connection in both directions is
// never tracked; one whose replies need state is; and a packet shaped like the reply of an
// allowed connection does not get past a policy that denies it as a new one.
func TestUntrackedWhereAllowedBothWays(t *testing.T) {
	testutil.RequireRoot(t)
	tp := build(t)
	must(t, probe.InNS(tp.node.Path, func() error {
		return masq.Apply(masq.Table{PodCIDRs: []netip.Prefix{p("10.50.0.0/16")},
			LocalAddrs: []netip.Addr{netip.MustParseAddr("10.50.1.1"), netip.MustParseAddr("10.50.2.1")}})
	}))
	h := tp.node.Handle(t)
	// tracked: does the node's conntrack hold a connection from a to b's port?
	tracked := func(port uint16) bool {
		flows, err := h.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range flows {
			if f.Forward.SrcIP.Equal(ipA.AsSlice()) && f.Forward.DstIP.Equal(ipB.AsSlice()) && f.Forward.DstPort == port {
				return true
			}
		}
		return false
	}

	// b takes TCP 80 and 90 from a; a has no policy, so b's replies are allowed as new
	// connections too: nothing of the connection is tracked.
	b := nftpolicy.Pod{ID: "b", IPs: []netip.Addr{ipB}, Rules: policy.PodRules{
		Ingress: &policy.Rules{Ports: []policy.PortRule{{Peer: p("10.50.1.2/32"), Proto: "TCP", First: 80, Last: 80}, {Peer: p("10.50.1.2/32"), Proto: "TCP", First: 90, Last: 90}}}}}
	tp.apply(t, b)
	tp.expect(t, "a to b's allowed port", tp.a, ipB, 80, true)
	if tracked(80) {
		t.Error("a connection allowed both ways was tracked")
	}
	tp.expect(t, "a to b's other port", tp.a, ipB, 81, false)

	// A DNATed connection (a published port on a's gateway, hairpinned as weft-nat does)
	// gets b's policy statefully: to a's gateway address the packet looked allowed both
	// ways.
	dnat := tp.node.Command("nft", "-f", "-")
	dnat.Stdin = strings.NewReader("table ip ports {\n chain pre { type nat hook prerouting priority dstnat;\n" +
		" ip daddr 10.50.1.1 tcp dport 8080 dnat to 10.50.2.2:81\n ip daddr 10.50.1.1 tcp dport 8081 dnat to 10.50.2.2:80\n }\n" +
		" chain post { type nat hook postrouting priority srcnat;\n ct status dnat masquerade\n }\n}\n")
	if out, err := dnat.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	gw := netip.MustParseAddr("10.50.1.1")
	tp.expect(t, "a through a DNAT to b's allowed port", tp.a, gw, 8081, true)
	tp.expect(t, "a through a DNAT to b's other port", tp.a, gw, 8080, false)

	// a now denies every new connection in: b's replies to a pass only as replies, so the
	// connection is tracked, and works.
	tp.apply(t, b, nftpolicy.Pod{ID: "a", IPs: []netip.Addr{ipA}, Rules: policy.PodRules{Ingress: &policy.Rules{}}})
	tp.expect(t, "a to b, replies stateful", tp.a, ipB, 80, true)
	if !tracked(80) {
		t.Error("a connection whose replies need state was not tracked")
	}
	// b opens a connection from its port 90 to a: shaped like a reply of a connection a
	// may open (a to b:90), but a new connection a's ingress denies.
	err := probe.InNS(tp.b.Path, func() error {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: ipB.AsSlice(), Port: 90}, Timeout: 400 * time.Millisecond}
		c, err := d.Dial("tcp", netip.AddrPortFrom(ipA, 81).String())
		if err == nil {
			c.Close()
		}
		return err
	})
	if err == nil {
		t.Error("b reached a from its allowed port 90: a reply-shaped packet passed a's ingress")
	}

	// Egress: a may reach b:80 only (b's ingress open): untracked, and nothing else.
	tp.apply(t, nftpolicy.Pod{ID: "a", IPs: []netip.Addr{ipA}, Rules: policy.PodRules{
		Egress: &policy.Rules{Ports: []policy.PortRule{{Peer: p("10.50.2.2/32"), Proto: "TCP", First: 81, Last: 81}}}}})
	tp.expect(t, "a to b's port its egress allows", tp.a, ipB, 81, true)
	if tracked(81) {
		t.Error("a connection its egress allows both ways was tracked")
	}
	tp.expect(t, "a to b's port its egress denies", tp.a, ipB, 80, false)
}
