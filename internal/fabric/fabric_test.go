package fabric

import (
	"net/netip"
	"testing"

	v1 "github.com/weftnet/weft/api/v1"
)

func peer(name, under, block string) Peer {
	return Peer{
		Node:  v1.Node{Name: name, Underlay: []netip.Addr{netip.MustParseAddr(under)}, VTEPMAC: VTEPMAC(name).String()},
		Lease: v1.Lease{Node: name, PodCIDRs: []netip.Prefix{netip.MustParsePrefix(block)}},
	}
}

func TestDesired(t *testing.T) {
	self := Self{Node: peer("a", "192.168.1.1", "10.0.1.0/24").Node, Lease: peer("a", "192.168.1.1", "10.0.1.0/24").Lease, Underlay: netip.MustParsePrefix("192.168.1.1/24")}
	peers := []Peer{peer("a", "192.168.1.1", "10.0.1.0/24"), peer("b", "192.168.1.2", "10.0.2.0/24"), peer("c", "172.16.0.3", "10.0.3.0/24")}
	cfg := v1.ClusterConfig{Fabric: v1.FabricVXLAN}

	st, err := Desired(cfg, self, peers)
	if err != nil {
		t.Fatal(err)
	}
	if !st.VXLAN || st.VNI != DefaultVNI || st.Port != DefaultPort || len(st.VTEPAddrs) != 1 || st.VTEPAddrs[0].String() != "10.0.1.0/32" {
		t.Fatalf("device: %+v", st)
	}
	if len(st.Routes) != 2 || !st.Routes[0].VXLAN || st.Routes[0].Via.String() != "10.0.2.0" || len(st.FDB) != 2 || len(st.Neighs) != 2 {
		t.Fatalf("vxlan state: %+v", st)
	}

	cfg.DirectRouting = true
	st, _ = Desired(cfg, self, peers)
	if st.Routes[0].VXLAN || st.Routes[0].Via.String() != "192.168.1.2" || !st.Routes[1].VXLAN {
		t.Fatalf("directRouting: same-subnet peer b direct, c over VXLAN: %+v", st.Routes)
	}

	cfg = v1.ClusterConfig{Fabric: v1.FabricDirect}
	st, _ = Desired(cfg, self, peers)
	if st.VXLAN || len(st.Routes) != 2 || st.Routes[1].Via.String() != "172.16.0.3" {
		t.Fatalf("direct: %+v", st)
	}

	// Fabric bgp: nothing without CrossSubnetVXLAN; with it, only c (another subnet) is
	// tunnelled, and the pods' MTU leaves room for VXLAN.
	cfg = v1.ClusterConfig{Fabric: v1.FabricBGP, BGP: &v1.BGPConfig{ASN: 64512}}
	if st, _ = Desired(cfg, self, peers); st.VXLAN || len(st.Routes) != 0 || PodMTU(cfg, 1500, false) != 1500 {
		t.Fatalf("bgp: %+v", st)
	}
	cfg.BGP.CrossSubnetVXLAN = true
	st, _ = Desired(cfg, self, peers)
	if !st.VXLAN || len(st.Routes) != 1 || !st.Routes[0].VXLAN || st.Routes[0].Dst.String() != "10.0.3.0/24" || len(st.FDB) != 1 || st.FDB[0].Dst.String() != "172.16.0.3" {
		t.Fatalf("bgp cross-subnet: %+v", st)
	}
	if got := st.Tunnelled(); len(got) != 1 || !got[netip.MustParsePrefix("10.0.3.0/24")] || PodMTU(cfg, 1500, false) != 1450 {
		t.Fatalf("bgp cross-subnet: tunnelled %v, MTU %d", got, PodMTU(cfg, 1500, false))
	}
	if PodMTU(v1.ClusterConfig{Fabric: v1.FabricVXLAN}, 1500, false) != 1450 || PodMTU(v1.ClusterConfig{Fabric: v1.FabricVXLAN}, 1500, true) != 1430 || PodMTU(v1.ClusterConfig{Fabric: v1.FabricDirect}, 1500, false) != 1500 {
		t.Fatal("PodMTU")
	}
}
