// Package fabric computes how a node reaches every other node's pods: over VXLAN (each
// peer's block routed through the node's VXLAN device to the peer's VTEP, with static
// FDB and neighbour entries: no learning, no multicast), or directly (each peer's block
// routed via the peer's underlay address, host-gw style), or VXLAN with direct routes to
// peers on the same L2 segment. It is pure: Desired returns the objects, and the netlink
// adapter (fabric/netlinkfabric) makes the kernel match them.
package fabric

import (
	"fmt"
	"net"
	"net/netip"
	"sort"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/netcalc"
)

// DeviceName is the VXLAN device of every node.
const DeviceName = "weft.vxlan"

// Defaults.
const (
	DefaultVNI  = 1
	DefaultPort = 4789
)

// Peer is another node with its lease.
type Peer struct {
	Node  v1.Node
	Lease v1.Lease
}

// Self is this node.
type Self struct {
	Node     v1.Node
	Lease    v1.Lease
	Underlay netip.Prefix // this node's underlay address with its subnet (for directRouting)
}

// Route sends a peer's pod block somewhere.
type Route struct {
	Dst   netip.Prefix
	Via   netip.Addr // next hop
	VXLAN bool       // through the VXLAN device (onlink), else through the underlay
}

// Neigh pins a peer VTEP address to its VTEP MAC on the VXLAN device.
type Neigh struct {
	IP  netip.Addr
	MAC net.HardwareAddr
}

// FDB sends a VTEP MAC's frames to the peer's underlay address.
type FDB struct {
	MAC net.HardwareAddr
	Dst netip.Addr
}

// State is everything the fabric needs in the kernel.
type State struct {
	VXLAN     bool // whether the node needs its VXLAN device
	VNI, Port int
	VTEPAddrs []netip.Prefix // this node's addresses on the VXLAN device (/32, /128)
	Routes    []Route
	Neighs    []Neigh
	FDB       []FDB
}

// VTEPAddr is a node's VXLAN address in a block: the block's network address, which no
// pod gets (flannel's convention).
func VTEPAddr(block netip.Prefix) netip.Addr { return block.Masked().Addr() }

// TunnelParams are the VXLAN VNI and UDP port, defaults filled in.
func TunnelParams(cfg v1.ClusterConfig) (vni, port int) {
	vni, port = cfg.VNI, cfg.Port
	if vni == 0 {
		vni = DefaultVNI
	}
	if port == 0 {
		port = DefaultPort
	}
	return vni, port
}

// Desired computes the fabric for self given its peers.
func Desired(cfg v1.ClusterConfig, self Self, peers []Peer) (State, error) {
	st := State{}
	st.VNI, st.Port = TunnelParams(cfg)
	useVXLAN := cfg.Tunnels()
	// Fabric bgp across subnets: only peers outside this node's underlay subnet are
	// tunnelled; BGP's routes reach the others.
	crossSubnetOnly := cfg.Fabric == v1.FabricBGP
	if useVXLAN {
		st.VXLAN = true
		for _, b := range self.Lease.PodCIDRs {
			st.VTEPAddrs = append(st.VTEPAddrs, netip.PrefixFrom(VTEPAddr(b), b.Addr().BitLen()))
		}
	}
	sort.Slice(peers, func(i, j int) bool { return peers[i].Node.Name < peers[j].Node.Name })
	for _, p := range peers {
		if p.Node.Name == self.Node.Name {
			continue
		}
		for _, b := range p.Lease.PodCIDRs {
			under, ok := underlayFor(p.Node, b.Addr().Is4(), self)
			direct := cfg.Fabric == v1.FabricDirect || (cfg.DirectRouting && ok && self.Underlay.Contains(under))
			switch {
			case crossSubnetOnly && sameSubnet(p.Node, self):
			case direct:
				if !ok {
					continue // no underlay of this family: this block cannot be routed directly
				}
				st.Routes = append(st.Routes, Route{Dst: b, Via: under})
			case useVXLAN:
				mac, err := net.ParseMAC(p.Node.VTEPMAC)
				if err != nil {
					return st, fmt.Errorf("peer %s has no VTEP MAC: %v", p.Node.Name, err)
				}
				// The VXLAN tunnel runs over the underlay's family, carrying either family.
				tunnel, ok := underlayFor(p.Node, self.Underlay.Addr().Is4(), self)
				if !ok {
					return st, fmt.Errorf("peer %s has no underlay address of this node's family", p.Node.Name)
				}
				vtep := VTEPAddr(b)
				st.Routes = append(st.Routes, Route{Dst: b, Via: vtep, VXLAN: true})
				st.Neighs = append(st.Neighs, Neigh{IP: vtep, MAC: mac})
				st.FDB = append(st.FDB, FDB{MAC: mac, Dst: tunnel})
			}
		}
	}
	st.FDB = dedupFDB(st.FDB)
	return st, nil
}

// sameSubnet says whether a peer's underlay address (of this node's underlay family) is on
// this node's underlay subnet.
func sameSubnet(n v1.Node, self Self) bool {
	a, ok := underlayFor(n, self.Underlay.Addr().Is4(), self)
	return ok && self.Underlay.Contains(a)
}

// Tunnelled are the pod blocks st routes through VXLAN.
func (st State) Tunnelled() map[netip.Prefix]bool {
	out := map[netip.Prefix]bool{}
	for _, r := range st.Routes {
		if r.VXLAN {
			out[r.Dst] = true
		}
	}
	return out
}

func underlayFor(n v1.Node, v4 bool, _ Self) (netip.Addr, bool) {
	for _, a := range n.Underlay {
		if a.Is4() == v4 {
			return a, true
		}
	}
	return netip.Addr{}, false
}

func dedupFDB(in []FDB) []FDB {
	seen := map[string]bool{}
	var out []FDB
	for _, f := range in {
		k := f.MAC.String() + f.Dst.String()
		if !seen[k] {
			seen[k] = true
			out = append(out, f)
		}
	}
	return out
}

// PodMTU is the pod MTU for the fabric over an underlay of mtu.
func PodMTU(cfg v1.ClusterConfig, underlayMTU int, underlayV6 bool) int {
	if cfg.MTU > 0 {
		return cfg.MTU
	}
	if !cfg.Tunnels() {
		return underlayMTU
	}
	if underlayV6 {
		return underlayMTU - 70
	}
	return underlayMTU - 50
}

// Exempt is what must never be masqueraded from a pod: the whole cluster's pod networks.
func Exempt(cfg v1.ClusterConfig) []netip.Prefix { return netcalc.Summarize(cfg.ClusterCIDRs) }

// VTEPMAC is a node's VXLAN device MAC, derived from its name so that it survives
// restarts and peers can be told it before the device exists.
func VTEPMAC(node string) net.HardwareAddr {
	h := uint64(14695981039346656037)
	for _, c := range []byte("weft-vtep/" + node) {
		h ^= uint64(c)
		h *= 1099511628211
	}
	mac := net.HardwareAddr{byte(h), byte(h >> 8), byte(h >> 16), byte(h >> 24), byte(h >> 32), byte(h >> 40)}
	mac[0] = (mac[0] | 0x02) &^ 0x01
	return mac
}
