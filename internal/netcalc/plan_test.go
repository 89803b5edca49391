package netcalc

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestMakePlan(t *testing.T) {
	p, err := MakePlan(PlanRequest{Nodes: 3, PodsPerNode: 110, Services: 100})
	if err != nil {
		t.Fatal(err)
	}
	want := Plan{ClusterCIDR: "10.0.0.0/21", NodePrefixLength: 24, ServiceCIDR: "10.0.8.0/24", MaxNodes: 8, PodsPerNode: 253, Services: 254}
	if p != want {
		t.Fatalf("got %+v\nwant %+v", p, want)
	}
	// Avoiding the start of 10/8 moves both past it, without overlapping anything.
	avoid := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16"), netip.MustParsePrefix("10.1.0.0/24")}
	p, err = MakePlan(PlanRequest{Nodes: 3, PodsPerNode: 110, Services: 100, Avoid: avoid})
	if err != nil {
		t.Fatal(err)
	}
	if p.ClusterCIDR != "10.1.8.0/21" || p.ServiceCIDR != "10.1.1.0/24" {
		t.Fatalf("with avoid: %+v", p)
	}
	c, s := netip.MustParsePrefix(p.ClusterCIDR), netip.MustParsePrefix(p.ServiceCIDR)
	for _, a := range append(avoid, c) {
		if a.Overlaps(s) && a != c || (a != c && a.Overlaps(c)) {
			t.Fatalf("plan overlaps %s", a)
		}
	}
	if p.MaxNodes < 6 || p.PodsPerNode < 220 || p.Services < 200 {
		t.Fatalf("no room to grow: %+v", p)
	}
}

func TestMakePlanDualStack(t *testing.T) {
	p, err := MakePlan(PlanRequest{Nodes: 50, PodsPerNode: 30, Services: 500, DualStack: true, Avoid: []netip.Prefix{netip.MustParsePrefix("fd00::/16")}})
	if err != nil {
		t.Fatal(err)
	}
	if p.ClusterCIDRV6 != "fd01::/48" || p.NodePrefixLengthV6 != 64 || p.ServiceCIDRV6 != "fd01:0:1::/108" {
		t.Fatalf("%+v", p)
	}
	if p.MaxNodesV6 != "65536" || p.ServicesV6 != "1048575" {
		t.Fatalf("v6 capacity %+v", p)
	}
}

func TestMakePlanExplainsFailure(t *testing.T) {
	cases := []struct {
		req  PlanRequest
		want string
	}{
		{PlanRequest{Nodes: 100000, PodsPerNode: 1000, Services: 10}, "largest free block is 10.0.0.0/8: with room to grow it holds 4096 nodes"},
		{PlanRequest{Nodes: 1, PodsPerNode: 1, Services: 1 << 21}, "at most a /12"},
		{PlanRequest{Nodes: 3, PodsPerNode: 100, Services: 10, Avoid: PrivatePools}, "need a /21 (with room to grow) and there is no free one"},
		{PlanRequest{Nodes: 0, PodsPerNode: 1, Services: 1}, "at least 1"},
	}
	for _, c := range cases {
		_, err := MakePlan(c.req)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: got %v, want %q", c.req, err, c.want)
		}
	}
	_, err := MakePlan(PlanRequest{Nodes: 3, PodsPerNode: 100, Services: 10, Avoid: PrivatePools})
	if !errors.Is(err, ErrNoPlan) {
		t.Errorf("not ErrNoPlan: %v", err)
	}
}

func TestCheck(t *testing.T) {
	got := Check(CheckRequest{
		ClusterCIDRs:  []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")},
		ServiceCIDRs:  []netip.Prefix{netip.MustParsePrefix("10.0.128.0/20")},
		NodePrefixLen: 16,
		Host:          []HostPrefix{{netip.MustParsePrefix("10.0.5.0/24"), "route via 192.168.1.1 dev wg0"}},
	})
	if len(got) != 3 {
		t.Fatalf("%d conflicts: %+v", len(got), got)
	}
	joined := ""
	for _, c := range got {
		joined += c.What + "|" + c.With + "|" + c.Reason + "\n"
	}
	for _, want := range []string{"they overlap", "wg0", "smaller than the cluster range"} {
		if !strings.Contains(joined, want) {
			t.Errorf("conflicts lack %q:\n%s", want, joined)
		}
	}
	if c := Check(CheckRequest{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}, ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}, NodePrefixLen: 24}); len(c) != 0 {
		t.Fatalf("clean plan: %+v", c)
	}
	if c := Check(CheckRequest{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}, NodePrefixLen: 31}); len(c) != 1 {
		t.Fatalf("/31 node blocks: %+v", c)
	}
}

func TestMakePlanPools(t *testing.T) {
	shared := []netip.Prefix{SharedAddressSpace}
	p, err := MakePlan(PlanRequest{Nodes: 500, PodsPerNode: 100, Services: 100, Pools: shared})
	if err != nil {
		t.Fatal(err)
	}
	if p.ClusterCIDR != "100.64.0.0/14" || p.ServiceCIDR != "100.68.0.0/24" {
		t.Fatalf("in 100.64.0.0/10: %+v", p)
	}
	// Too big for the private ranges: the error says what fits and where more room is.
	_, err = MakePlan(PlanRequest{Nodes: 5000, PodsPerNode: 1000, Services: 100})
	if !errors.Is(err, ErrNoPlan) || !strings.Contains(err.Error(), "largest free block is 10.0.0.0/8") ||
		!strings.Contains(err.Error(), "4096 nodes × 1000 pods") || !strings.Contains(err.Error(), "--pool 100.64.0.0/10") {
		t.Fatalf("error %v", err)
	}
	// Planning in the shared space already: no suggestion to use it.
	_, err = MakePlan(PlanRequest{Nodes: 5000, PodsPerNode: 1000, Services: 100, Pools: shared})
	if err == nil || strings.Contains(err.Error(), "try the shared") || !strings.Contains(err.Error(), "100.64.0.0/10") {
		t.Fatalf("error %v", err)
	}
	// A pool with a hole: the largest free piece is named.
	_, err = MakePlan(PlanRequest{Nodes: 50, PodsPerNode: 100, Services: 10, Pools: []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")},
		Avoid: []netip.Prefix{netip.MustParsePrefix("192.168.0.0/17"), netip.MustParsePrefix("192.168.128.0/18")}})
	if err == nil || !strings.Contains(err.Error(), "192.168.192.0/18: with room to grow it holds 32 nodes") {
		t.Fatalf("error %v", err)
	}
	// IPv6 pools for dual stack.
	p, err = MakePlan(PlanRequest{Nodes: 3, PodsPerNode: 10, Services: 10, DualStack: true, Pools6: []netip.Prefix{netip.MustParsePrefix("fd12:3400::/32")}})
	if err != nil || !strings.HasPrefix(p.ClusterCIDRV6, "fd12:3400:") {
		t.Fatalf("v6 pool: %+v %v", p, err)
	}
}
