package bgp

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	v1 "github.com/weftnet/weft/api/v1"
)

func clusterNode(name, addr string, rr bool) v1.Node {
	n := v1.Node{Name: name, Underlay: []netip.Addr{netip.MustParseAddr(addr), netip.MustParseAddr("fd00::" + strings.TrimPrefix(name, "n"))}, RouteReflector: rr}
	return n
}

func describe(ps []Peer) string {
	var out []string
	for _, p := range ps {
		s := fmt.Sprintf("%s@%s/%d", p.Name, p.Address, p.ASN)
		if p.RRClient {
			s += "(client)"
		}
		if p.Passive {
			s += "(waits)"
		}
		out = append(out, s)
	}
	return strings.Join(out, " ")
}

func TestPlanPeers(t *testing.T) {
	cfg := v1.BGPConfig{ASN: 64512}
	n1, n2, n3 := clusterNode("n1", "10.0.1.1", false), clusterNode("n2", "10.0.2.2", false), clusterNode("n3", "10.0.1.3", false)
	tor1 := v1.BGPPeer{Name: "tor1", Address: netip.MustParseAddr("10.0.1.254"), ASN: 65001, NodeSubnet: netip.MustParsePrefix("10.0.1.0/24")}
	tor2 := v1.BGPPeer{Name: "tor2", Address: netip.MustParseAddr("10.0.2.254"), ASN: 65002, Nodes: []string{"n2"}}
	edge := v1.BGPPeer{Name: "edge", Address: netip.MustParseAddr("10.9.9.9"), ASN: 65009, Multihop: 4}
	rr := clusterNode("n2", "10.0.2.2", true)
	for _, tc := range []struct {
		name  string
		cfg   v1.BGPConfig
		self  v1.Node
		nodes []v1.Node
		ext   []v1.BGPPeer
		want  string
	}{
		{"full mesh", cfg, n1, []v1.Node{n3, n2, n1}, nil, "n2@10.0.2.2/64512 n3@10.0.1.3/64512"},
		{"the higher address waits for the lower", cfg, n3, []v1.Node{n3, n2, n1}, nil, "n1@10.0.1.1/64512(waits) n2@10.0.2.2/64512"},
		{"mesh and the rack's router", cfg, n1, []v1.Node{n1, n2}, []v1.BGPPeer{tor1, tor2}, "n2@10.0.2.2/64512 tor1@10.0.1.254/65001"},
		{"named node", cfg, n2, []v1.Node{n2}, []v1.BGPPeer{tor1, tor2, edge}, "tor2@10.0.2.254/65002 edge@10.9.9.9/65009"},
		{"no mesh: routers only", v1.BGPConfig{ASN: 64512, NoNodeMesh: true}, n3, []v1.Node{n1, n2, n3}, []v1.BGPPeer{tor1, tor2}, "tor1@10.0.1.254/65001"},
		{"client talks to the reflector only", cfg, n1, []v1.Node{n1, rr, n3}, nil, "n2@10.0.2.2/64512"},
		{"reflector serves its clients", cfg, rr, []v1.Node{n1, rr, n3}, nil, "n1@10.0.1.1/64512(client)(waits) n3@10.0.1.3/64512(client)(waits)"},
		{"node with its own AS", cfg, n1, []v1.Node{n1, {Name: "n4", Underlay: []netip.Addr{netip.MustParseAddr("10.0.4.4")}, BGPASN: 64600}}, nil, "n4@10.0.4.4/64600"},
		{"no IPv4 underlay: no sessions", cfg, v1.Node{Name: "n5"}, []v1.Node{n1}, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := describe(PlanPeers(tc.cfg, tc.self, tc.nodes, tc.ext)); got != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
}

func TestPlanAnnouncements(t *testing.T) {
	self := clusterNode("n1", "10.0.1.1", false)
	got := PlanAnnouncements(self, []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:244:0:1::/64")},
		[]netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")})
	want := "[{10.244.1.0/24 10.0.1.1} {fd00:244:0:1::/64 fd00::1} {10.96.0.0/16 10.0.1.1}]"
	if fmt.Sprint(got) != want {
		t.Errorf("got %v, want %s", got, want)
	}
	// Without an IPv6 underlay address the IPv6 block cannot be reached: not announced.
	v4only := v1.Node{Name: "n2", Underlay: []netip.Addr{netip.MustParseAddr("10.0.2.2")}}
	if got := PlanAnnouncements(v4only, []netip.Prefix{netip.MustParsePrefix("fd00:244:0:2::/64")}, nil); len(got) != 0 {
		t.Errorf("v4-only node announces %v", got)
	}
}

func TestPeerValidation(t *testing.T) {
	ok := v1.BGPPeer{Name: "tor", Address: netip.MustParseAddr("10.0.0.1"), ASN: 65000}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for field, p := range map[string]v1.BGPPeer{
		"name":       {Address: ok.Address, ASN: 1},
		"address":    {Name: "x", ASN: 1},
		"asn":        {Name: "x", Address: ok.Address, ASN: 23456},
		"nodeSubnet": {Name: "x", Address: ok.Address, ASN: 1, NodeSubnet: netip.MustParsePrefix("10.0.1.1/24")},
		"holdTime":   {Name: "x", Address: ok.Address, ASN: 1, HoldTime: v1.Duration(1e9)},
	} {
		if err := p.Validate(); err == nil || !strings.HasPrefix(err.Error(), field) {
			t.Errorf("%s: got %v", field, err)
		}
	}
}
