package cni_test

import (
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/dataplane/overlay"
	"github.com/weftnet/weft/internal/fabric"
	"github.com/weftnet/weft/internal/probe"
	"github.com/weftnet/weft/internal/testutil"
)

// twoNodes builds two node namespaces joined by a veth underlay (192.168.50.1/.2, MTU
// 1500), each with weftd and one pod, and programs the fabric between them.
func twoNodes(t *testing.T, fab string) (pods [2]testutil.NS, ips [2]netip.Addr, nodes [2]*node, apply func(withPeers bool)) {
	testutil.RequireRoot(t)
	mtu := "1500"
	if fab == v1.FabricVXLAN {
		mtu = "1450"
	}
	blocks := []string{"10.120.1.0/24", "10.120.2.0/24"}
	for i := range nodes {
		nodes[i] = newNode(t, blocks[i], "--cluster-cidr", "10.120.0.0/16", "--mtu", mtu)
	}
	h0, h1 := nodes[0].ns.Handle(t), nodes[1].ns.Handle(t)
	if err := h0.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "under0", MTU: 1500}, PeerName: "under1", PeerMTU: 1500}); err != nil {
		t.Fatal(err)
	}
	peer, _ := h0.LinkByName("under1")
	f, _ := os.Open(nodes[1].ns.Path)
	if err := h0.LinkSetNsFd(peer, int(f.Fd())); err != nil {
		t.Fatal(err)
	}
	f.Close()
	under := []string{"192.168.50.1/24", "192.168.50.2/24"}
	for i, h := range []*netlink.Handle{h0, h1} {
		l, _ := h.LinkByName([]string{"under0", "under1"}[i])
		a, _ := netlink.ParseAddr(under[i])
		if err := h.AddrAdd(l, a); err != nil {
			t.Fatal(err)
		}
		_ = h.LinkSetUp(l)
	}
	cfg := v1.ClusterConfig{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.120.0.0/16")}, NodePrefixLength: 24, Fabric: fab}
	var peers []fabric.Peer
	for i := range nodes {
		peers = append(peers, fabric.Peer{
			Node:  v1.Node{Name: nodes[i].ns.Name, Underlay: []netip.Addr{netip.MustParsePrefix(under[i]).Addr()}, VTEPMAC: fabric.VTEPMAC(nodes[i].ns.Name).String()},
			Lease: v1.Lease{Node: nodes[i].ns.Name, PodCIDRs: []netip.Prefix{netip.MustParsePrefix(blocks[i])}},
		})
	}
	apply = func(withPeers bool) {
		for i, h := range []*netlink.Handle{h0, h1} {
			self := fabric.Self{Node: peers[i].Node, Lease: peers[i].Lease, Underlay: netip.MustParsePrefix(under[i])}
			var others []fabric.Peer
			if withPeers {
				others = peers
			}
			st, err := fabric.Desired(cfg, self, others)
			if err != nil {
				t.Fatal(err)
			}
			if err := overlay.Apply(h, peers[i].Node.Name, st, overlay.Underlay{Device: []string{"under0", "under1"}[i], Addr: self.Underlay.Addr()}, 1450); err != nil {
				t.Fatalf("node %d: %v", i, err)
			}
		}
	}
	apply(true)
	for i := range nodes {
		list := nodes[i].conflist("1.1.0", "weft", `"mode":"bridge"`)
		p, r := nodes[i].pod("x")
		res := nodes[i].mustAdd(list, r)
		pods[i], ips[i] = p, podIPs(res)[0]
	}
	return pods, ips, nodes, apply
}

func TestCrossNodeFabrics(t *testing.T) {
	for _, fab := range []string{v1.FabricVXLAN, v1.FabricDirect} {
		t.Run(fab, func(t *testing.T) {
			pods, ips, nodes, apply := twoNodes(t, fab)
			ping(t, pods[0], ips[1])
			ping(t, pods[1], ips[0])

			// Pod-to-pod across nodes is not NATed: the server sees the client pod's address.
			ln, err := probe.ListenTCP(pods[1].Path, ":7100")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			seen := make(chan netip.Addr, 1)
			go func() {
				c, err := ln.Accept()
				if err == nil {
					seen <- c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
					c.Close()
				}
			}()
			c, err := probe.DialTCP(pods[0].Path, netip.AddrPortFrom(ips[1], 7100), 3*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
			if src := <-seen; src != ips[0] {
				t.Errorf("the remote pod saw %s, want the client pod %s (no NAT inside the cluster)", src, ips[0])
			}

			if fab == v1.FabricVXLAN {
				l, _ := pods[0].Handle(t).LinkByName("eth0")
				if l.Attrs().MTU != 1450 {
					t.Errorf("pod MTU %d, want 1450 (1500 - 50)", l.Attrs().MTU)
				}
				// A DF echo of 1422 bytes of payload fills 1450 exactly; 1423 does not fit.
				if _, err := probe.Ping(pods[0].Path, ips[1], 1422, true, 2*time.Second); err != nil {
					t.Errorf("DF ping of 1422 bytes: %v", err)
				}
				if _, err := probe.Ping(pods[0].Path, ips[1], 1423, true, 2*time.Second); err == nil || !strings.Contains(err.Error(), "message too long") {
					t.Errorf("DF ping of 1423 bytes: %v, want 'message too long' (fragmentation needed)", err)
				}
			}

			// A node that leaves takes its routes with it.
			apply(false)
			routes, _ := nodes[0].ns.Handle(t).RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: overlay.RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
			if len(routes) != 0 {
				t.Errorf("routes left after the peer left: %v", routes)
			}
			// And comes back.
			apply(true)
			ping(t, pods[0], ips[1])
		})
	}
}
