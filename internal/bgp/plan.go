package bgp

import (
	"net/netip"
	"slices"
	"sort"

	v1 "github.com/weftnet/weft/api/v1"
)

// PlanPeers says whom a node peers with:
//   - the node mesh (unless turned off): with no route reflector, every node peers with
//     every other (iBGP full mesh); with reflectors, a reflector peers with every node
//     (the non-reflectors as its clients) and the others peer only with the reflectors;
//   - external peers that select the node (by name, by its underlay subnet, or all).
//
// Sessions run over each node's first IPv4 underlay address and carry both families.
func PlanPeers(cfg v1.BGPConfig, self v1.Node, nodes []v1.Node, external []v1.BGPPeer) []Peer {
	selfAddr, ok := firstV4(self.Underlay)
	if !ok {
		return nil
	}
	var out []Peer
	if !cfg.NoNodeMesh {
		var reflectors int
		for _, n := range nodes {
			if n.RouteReflector {
				reflectors++
			}
		}
		sort.Slice(nodes, func(i, j int) bool { return nodes[i].Name < nodes[j].Name })
		for _, n := range nodes {
			addr, ok := firstV4(n.Underlay)
			if n.Name == self.Name || !ok {
				continue
			}
			if reflectors > 0 && !self.RouteReflector && !n.RouteReflector {
				continue // clients talk only to reflectors
			}
			out = append(out, Peer{Name: n.Name, Address: addr, ASN: asnOf(n, cfg), LocalAddress: selfAddr,
				RRClient: self.RouteReflector && !n.RouteReflector, Passive: WaitsFor(selfAddr, addr)})
		}
	}
	for _, p := range external {
		if !selects(p, self) {
			continue
		}
		out = append(out, Peer{Name: p.Name, Address: p.Address, ASN: p.ASN, Password: p.Password,
			HoldTime: p.HoldTime.D(), Keepalive: p.Keepalive.D(), Multihop: p.Multihop, LocalAddress: sameFamily(self.Underlay, p.Address)})
	}
	return out
}

// WaitsFor says whether a speaker at self waits for the one at peer to connect: of two
// weft speakers only the one with the lower address connects. When both connect at once
// (as every pair of a mesh does at start), the two sessions collide, and GoBGP was seen
// to leave both in OpenConfirm for good after resolving such a collision.
func WaitsFor(self, peer netip.Addr) bool { return self.Compare(peer) > 0 }

func selects(p v1.BGPPeer, n v1.Node) bool {
	if len(p.Nodes) == 0 && !p.NodeSubnet.IsValid() {
		return true
	}
	if slices.Contains(p.Nodes, n.Name) {
		return true
	}
	for _, a := range n.Underlay {
		if p.NodeSubnet.IsValid() && p.NodeSubnet.Contains(a) {
			return true
		}
	}
	return false
}

func asnOf(n v1.Node, cfg v1.BGPConfig) uint32 {
	if n.BGPASN != 0 {
		return n.BGPASN
	}
	return cfg.ASN
}

func firstV4(as []netip.Addr) (netip.Addr, bool) {
	for _, a := range as {
		if a.Is4() {
			return a, true
		}
	}
	return netip.Addr{}, false
}

func sameFamily(as []netip.Addr, to netip.Addr) netip.Addr {
	for _, a := range as {
		if a.Is4() == to.Is4() {
			return a
		}
	}
	return netip.Addr{}
}

// PlanAnnouncements are a node's own pod blocks, each with the node's underlay address of
// the block's family as next hop (a block with no such address cannot be reached and is
// not announced), plus extra prefixes (service ranges) next-hopped the same way.
func PlanAnnouncements(self v1.Node, blocks []netip.Prefix, extra []netip.Prefix) []Announcement {
	var out []Announcement
	for _, p := range append(append([]netip.Prefix(nil), blocks...), extra...) {
		if nh := sameFamily(self.Underlay, p.Addr()); nh.IsValid() {
			out = append(out, Announcement{Prefix: p.Masked(), NextHop: nh})
		}
	}
	return out
}
