package routed_test

import (
	"net"
	"net/netip"
	"sort"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/dataplane/routed"
	"github.com/weftnet/weft/internal/testutil"
)

func route(dst string, hops ...string) routed.Route {
	r := routed.Route{Dst: netip.MustParsePrefix(dst)}
	for _, h := range hops {
		r.NextHops = append(r.NextHops, netip.MustParseAddr(h))
	}
	return r
}

// kernel lists the namespace's BGP routes as "dst via gw[,gw]".
func kernel(t *testing.T, h *netlink.Handle) string {
	t.Helper()
	rs, err := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: routed.RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range rs {
		var gws []string
		if r.Gw != nil {
			gws = append(gws, r.Gw.String())
		}
		for _, nh := range r.MultiPath {
			gws = append(gws, nh.Gw.String())
		}
		sort.Strings(gws)
		out = append(out, r.Dst.String()+" via "+strings.Join(gws, ","))
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

// underlay makes a namespace whose link under0 holds addrs (its peer under1 is up).
func underlay(t *testing.T, name string, addrs ...string) (testutil.NS, *netlink.Handle, netlink.Link) {
	t.Helper()
	testutil.RequireRoot(t)
	ns := testutil.NewNS(t, name)
	h := ns.Handle(t)
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "under0"}, PeerName: "under1"}); err != nil {
		t.Fatal(err)
	}
	if peer, err := h.LinkByName("under1"); err != nil || h.LinkSetUp(peer) != nil {
		t.Fatal(err)
	}
	dev, _ := h.LinkByName("under0")
	for _, a := range addrs {
		p := netip.MustParsePrefix(a)
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}, Flags: unix.IFA_F_NODAD}
		if err := h.AddrAdd(dev, addr); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.LinkSetUp(dev); err != nil {
		t.Fatal(err)
	}
	return ns, h, dev
}

func TestSyncECMPRecursionAndSweep(t *testing.T) {
	ns, h, dev := underlay(t, "rt", "10.0.0.1/24", "fd00::1/64")
	// Another rack's nodes sit behind a router: their next hops resolve through it.
	if err := h.RouteAdd(&netlink.Route{Dst: &net.IPNet{IP: net.IP{10, 1, 0, 0}, Mask: net.CIDRMask(16, 32)}, Gw: net.IP{10, 0, 0, 254}, LinkIndex: dev.Attrs().Index}); err != nil {
		t.Fatal(err)
	}
	k, err := routed.Open(ns.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { k.Close() }()
	want := []routed.Route{
		route("10.244.1.0/24", "10.0.0.2"),
		route("10.244.2.0/24", "10.0.0.3", "10.0.0.2"), // ECMP
		route("10.244.3.0/24", "10.1.2.3"),             // recursive: via the router
		route("10.244.4.0/24", "10.9.9.9"),             // resolves nowhere: left out
		route("fd00:244:0:1::/64", "fd00::2"),
	}
	res, err := k.Sync(want, true)
	if err != nil {
		t.Fatal(err)
	}
	if res.Installed != 4 || res.Unresolved != 1 {
		t.Errorf("first sync: %+v", res)
	}
	const all = "10.244.1.0/24 via 10.0.0.2; 10.244.2.0/24 via 10.0.0.2,10.0.0.3; 10.244.3.0/24 via 10.0.0.254; fd00:244:0:1::/64 via fd00::2"
	if got := kernel(t, h); got != all {
		t.Fatalf("kernel:\n got %s\nwant %s", got, all)
	}
	// The same state again changes nothing.
	if res, err := k.Sync(want, true); err != nil || res.Installed+res.Replaced+res.Deleted != 0 {
		t.Errorf("idempotent sync: %+v %v", res, err)
	}
	// A restart: a new Kernel. Before the view is complete, a route from before the
	// restart that is missing stays; a changed one moves.
	k.Close()
	k, err = routed.Open(ns.Path)
	if err != nil {
		t.Fatal(err)
	}
	partial := []routed.Route{route("10.244.1.0/24", "10.0.0.4")}
	if res, err := k.Sync(partial, false); err != nil || res.Replaced != 1 || res.Deleted != 0 {
		t.Errorf("partial sync: %+v %v", res, err)
	}
	if got := kernel(t, h); !strings.Contains(got, "10.244.1.0/24 via 10.0.0.4") || !strings.Contains(got, "10.244.3.0/24") {
		t.Errorf("after the partial sync: %s", got)
	}
	// A route learned since the restart and then withdrawn goes at once, complete or not.
	learned := append([]routed.Route{route("10.244.5.0/24", "10.0.0.2")}, partial...)
	if res, err := k.Sync(learned, false); err != nil || res.Installed != 1 {
		t.Errorf("learning a route: %+v %v", res, err)
	}
	if res, err := k.Sync(partial, false); err != nil || res.Deleted != 1 || strings.Contains(kernel(t, h), "10.244.5.0/24") {
		t.Errorf("a withdrawal before the view is complete: %+v %v", res, err)
	}
	// Once complete, the rest is swept.
	if res, err := k.Sync(partial, true); err != nil || res.Deleted != 3 {
		t.Errorf("sweep: %+v %v", res, err)
	}
	if got := kernel(t, h); got != "10.244.1.0/24 via 10.0.0.4" {
		t.Errorf("after the sweep: %s", got)
	}
	// Routes of other owners are never touched.
	if rs, _ := h.RouteList(dev, netlink.FAMILY_V4); len(rs) < 2 {
		t.Errorf("the router route went: %v", rs)
	}
}

func TestUpdateAppliesChangesOnly(t *testing.T) {
	ns, h, _ := underlay(t, "rtu", "10.0.0.1/24")
	k, err := routed.Open(ns.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	if _, err := k.Update(nil); err == nil {
		t.Error("Update before any Sync: no error")
	}
	if _, err := k.Sync([]routed.Route{route("10.244.1.0/24", "10.0.0.2"), route("10.244.2.0/24", "10.0.0.2")}, true); err != nil {
		t.Fatal(err)
	}
	// One route gains a next hop, one is withdrawn, one is new; the others stay as they are.
	res, err := k.Update([]routed.Route{route("10.244.1.0/24", "10.0.0.2", "10.0.0.3"), route("10.244.2.0/24"), route("10.244.3.0/24", "10.0.0.4")})
	if err != nil || res.Replaced != 1 || res.Deleted != 1 || res.Installed != 1 {
		t.Errorf("update: %+v %v", res, err)
	}
	if got, want := kernel(t, h), "10.244.1.0/24 via 10.0.0.2,10.0.0.3; 10.244.3.0/24 via 10.0.0.4"; got != want {
		t.Errorf("kernel:\n got %s\nwant %s", got, want)
	}
	if k.Learned() != 2 {
		t.Errorf("learned = %d, want 2", k.Learned())
	}
	// A message that fails inside a batch (the route was deleted behind weft's back) is
	// reported alone: the messages around it still apply.
	if err := h.RouteDel(&netlink.Route{Dst: &net.IPNet{IP: net.IP{10, 244, 3, 0}, Mask: net.CIDRMask(24, 32)}, Protocol: routed.RouteProtocol}); err != nil {
		t.Fatal(err)
	}
	res, err = k.Update([]routed.Route{route("10.244.7.0/24", "10.0.0.2"), route("10.244.3.0/24"), route("10.244.8.0/24", "10.0.0.3")})
	if err != nil || res.Installed != 2 || res.Deleted != 0 {
		t.Errorf("update around a failing delete: %+v %v", res, err)
	}
	if got, want := kernel(t, h), "10.244.1.0/24 via 10.0.0.2,10.0.0.3; 10.244.7.0/24 via 10.0.0.2; 10.244.8.0/24 via 10.0.0.3"; got != want {
		t.Errorf("kernel:\n got %s\nwant %s", got, want)
	}
}
