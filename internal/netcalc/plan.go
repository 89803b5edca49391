package netcalc

import (
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"strings"
)

// PrivatePools are where plans look for room, in order of preference.
var PrivatePools = []netip.Prefix{
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
}

// ULAPool is where dual-stack plans look for IPv6 room.
var ULAPool = netip.MustParsePrefix("fd00::/8")

// SharedAddressSpace (RFC 6598, carrier-grade NAT) is the usual next choice when the
// private pools are full: it is not routed on the internet either.
var SharedAddressSpace = netip.MustParsePrefix("100.64.0.0/10")

// PlanRequest is what a cluster needs. Growth is built in: the plan holds at least twice
// the nodes, pods per node and services asked for.
type PlanRequest struct {
	Nodes, PodsPerNode, Services int
	DualStack                    bool
	Avoid                        []netip.Prefix // host addresses and routes, VPNs, the office network
	Pools                        []netip.Prefix // IPv4 ranges to plan in, in order; empty: PrivatePools
	Pools6                       []netip.Prefix // IPv6 ranges for dual-stack; empty: ULAPool
}

// Plan is a non-overlapping choice of cluster and service CIDRs.
type Plan struct {
	ClusterCIDR      string `json:"clusterCIDR"`
	NodePrefixLength int    `json:"nodePrefixLength"`
	ServiceCIDR      string `json:"serviceCIDR"`
	MaxNodes         uint64 `json:"maxNodes"`
	PodsPerNode      uint64 `json:"podsPerNode"`
	Services         uint64 `json:"services"`

	ClusterCIDRV6      string `json:"clusterCIDRV6,omitempty"`
	NodePrefixLengthV6 int    `json:"nodePrefixLengthV6,omitempty"`
	ServiceCIDRV6      string `json:"serviceCIDRV6,omitempty"`
	MaxNodesV6         string `json:"maxNodesV6,omitempty"` // decimal strings: can exceed 2^53
	PodsPerNodeV6      string `json:"podsPerNodeV6,omitempty"`
	ServicesV6         string `json:"servicesV6,omitempty"`
}

// ErrNoPlan means no plan satisfies the request; its message says which constraint failed.
var ErrNoPlan = errors.New("no plan fits")

// ceilLog2 returns the smallest b with 2^b >= n (n >= 1).
func ceilLog2(n uint64) int { return bits.Len64(n - 1) }

// MakePlan chooses a plan, or explains which constraint cannot be met.
func MakePlan(r PlanRequest) (Plan, error) {
	if r.Nodes < 1 || r.PodsPerNode < 1 || r.Services < 1 {
		return Plan{}, fmt.Errorf("nodes, pods per node and services must each be at least 1")
	}
	// A node block holds its pods twice over plus network, gateway and broadcast.
	hostBits := ceilLog2(uint64(r.PodsPerNode)*2 + 3)
	nodeLen := 32 - hostBits
	clusterLen := nodeLen - ceilLog2(uint64(r.Nodes)*2)
	serviceLen := 32 - ceilLog2(uint64(r.Services)*2+2)
	if serviceLen < 12 {
		return Plan{}, fmt.Errorf("%w: %d services need a /%d; Kubernetes allows at most a /12", ErrNoPlan, r.Services, serviceLen)
	}
	pools, pools6 := r.Pools, r.Pools6
	if len(pools) == 0 {
		pools = PrivatePools
	}
	if len(pools6) == 0 {
		pools6 = []netip.Prefix{ULAPool}
	}
	taken := append([]netip.Prefix(nil), r.Avoid...)
	cluster, ok := netip.Prefix{}, false
	if clusterLen >= 1 && nodeLen >= 1 {
		cluster, ok = firstFree(pools, clusterLen, taken)
	}
	if !ok {
		return Plan{}, fmt.Errorf("%w: %d nodes × %d pods need a /%d (with room to grow) and there is no free one in %s avoiding %s; %s",
			ErrNoPlan, r.Nodes, r.PodsPerNode, clusterLen, joinPrefixes(pools), describeAvoid(r.Avoid), whatFits(r, pools, taken, nodeLen))
	}
	taken = append(taken, cluster)
	service, ok := firstFree(pools, serviceLen, taken)
	if !ok {
		return Plan{}, fmt.Errorf("%w: the cluster fits in %s but no free /%d is left for services in %s avoiding %s%s",
			ErrNoPlan, cluster, serviceLen, joinPrefixes(pools), describeAvoid(r.Avoid), suggestShared(pools))
	}
	p := Plan{
		ClusterCIDR:      cluster.String(),
		NodePrefixLength: nodeLen,
		ServiceCIDR:      service.String(),
		MaxNodes:         1 << (nodeLen - clusterLen),
		PodsPerNode:      1<<hostBits - 3,
		Services:         1<<(32-serviceLen) - 2,
	}
	if r.DualStack {
		// A /48 of unique local space per cluster, /64 per node, a /108 of services (the
		// largest Kubernetes accepts), in the /48 after it.
		c6, ok := firstFree(pools6, 48, taken)
		if !ok {
			return Plan{}, fmt.Errorf("%w: no free /48 in %s avoiding %s", ErrNoPlan, joinPrefixes(pools6), describeAvoid(r.Avoid))
		}
		taken = append(taken, c6)
		s6, ok := firstFree(pools6, 108, taken)
		if !ok {
			return Plan{}, fmt.Errorf("%w: no free /108 for IPv6 services in %s", ErrNoPlan, joinPrefixes(pools6))
		}
		p.ClusterCIDRV6, p.NodePrefixLengthV6, p.ServiceCIDRV6 = c6.String(), 64, s6.String()
		p.MaxNodesV6 = Size(netip.PrefixFrom(netip.IPv6Unspecified(), 128-16)).String()
		p.PodsPerNodeV6 = Describe(netip.MustParsePrefix("::/64")).Usable
		p.ServicesV6 = Describe(netip.PrefixFrom(netip.IPv6Unspecified(), 108)).Usable
	}
	return p, nil
}

// whatFits says what the largest free block of pools would hold at the requested pods per
// node, and suggests the shared address space when planning in the private pools.
func whatFits(r PlanRequest, pools, taken []netip.Prefix, nodeLen int) string {
	for l := 1; l <= 32; l++ {
		if b, ok := firstFree(pools, l, taken); ok {
			fit := "it is too small for even one node of that size"
			if l <= nodeLen {
				// The plan keeps room to grow: half the node blocks are spare.
				nodes := uint64(1) << (nodeLen - l) / 2
				fit = fmt.Sprintf("with room to grow it holds %d nodes × %d pods", max(nodes, 1), r.PodsPerNode)
			}
			return fmt.Sprintf("the largest free block is %s: %s%s", b, fit, suggestShared(pools))
		}
	}
	return "nothing in them is free" + suggestShared(pools)
}

// suggestShared points at 100.64.0.0/10 when the plan used (only) the private pools.
func suggestShared(pools []netip.Prefix) string {
	for _, p := range pools {
		if p.Overlaps(SharedAddressSpace) {
			return ""
		}
	}
	return fmt.Sprintf("; for more room try the shared address space: --pool %s", SharedAddressSpace)
}

// firstFree returns the first aligned block of length l inside pools that overlaps none of
// taken. It skips past whatever it collides with, so it never walks block by block through
// a large avoided range.
func firstFree(pools []netip.Prefix, l int, taken []netip.Prefix) (netip.Prefix, bool) {
	for _, pool := range pools {
		if l < pool.Bits() || l > pool.Addr().BitLen() {
			continue
		}
		cand := netip.PrefixFrom(pool.Addr(), l)
		for Contains(pool, cand) {
			hit := netip.Prefix{}
			for _, t := range taken {
				if t.Addr().Is4() == cand.Addr().Is4() && t.Masked().Overlaps(cand) {
					hit = t.Masked()
					break
				}
			}
			if !hit.IsValid() {
				return cand, true
			}
			// Jump past the larger of the two.
			end := Last(cand)
			if hit.Bits() < cand.Bits() {
				end = Last(hit)
			}
			next := end.Next()
			if !next.IsValid() {
				break
			}
			cand = netip.PrefixFrom(next, l).Masked()
			if cand.Addr().Less(next) { // next was not aligned to l: go to the next block
				n := Last(cand).Next()
				if !n.IsValid() {
					break
				}
				cand = netip.PrefixFrom(n, l)
			}
		}
	}
	return netip.Prefix{}, false
}

// CheckRequest is a proposed address plan to vet.
type CheckRequest struct {
	ClusterCIDRs   []netip.Prefix
	ServiceCIDRs   []netip.Prefix
	NodePrefixLen  int // 0: not checked
	NodePrefixLen6 int
	Host           []HostPrefix // what the host already uses
}

// HostPrefix is an address or route found on the host, with where it came from.
type HostPrefix struct {
	Prefix netip.Prefix
	Source string // e.g. "address on eth0", "route via 192.168.1.1 dev eth0"
}

// Conflict is one reason a plan would break.
type Conflict struct {
	What   string `json:"what"`
	With   string `json:"with"`
	Reason string `json:"reason"`
}

// Check lists every conflict of a proposed plan: ranges overlapping each other or the
// host, and node blocks that do not fit the cluster range.
func Check(r CheckRequest) []Conflict {
	var out []Conflict
	all := append(append([]netip.Prefix(nil), r.ClusterCIDRs...), r.ServiceCIDRs...)
	kind := func(i int) string {
		if i < len(r.ClusterCIDRs) {
			return "cluster CIDR"
		}
		return "service CIDR"
	}
	for i := range all {
		for j := i + 1; j < len(all); j++ {
			if all[i].Addr().Is4() == all[j].Addr().Is4() && all[i].Masked().Overlaps(all[j].Masked()) {
				out = append(out, Conflict{What: kind(i) + " " + all[i].String(), With: kind(j) + " " + all[j].String(), Reason: "they overlap"})
			}
		}
		for _, h := range r.Host {
			if h.Prefix.Addr().Is4() == all[i].Addr().Is4() && h.Prefix.Masked().Overlaps(all[i].Masked()) {
				out = append(out, Conflict{What: kind(i) + " " + all[i].String(), With: h.Source + " " + h.Prefix.String(), Reason: "the host already uses it"})
			}
		}
	}
	for _, c := range r.ClusterCIDRs {
		n := r.NodePrefixLen
		if c.Addr().Is6() {
			n = r.NodePrefixLen6
		}
		switch {
		case n == 0:
		case n <= c.Bits():
			out = append(out, Conflict{What: fmt.Sprintf("node prefix /%d", n), With: "cluster CIDR " + c.String(), Reason: "a node block must be smaller than the cluster range"})
		case n > c.Addr().BitLen()-2:
			out = append(out, Conflict{What: fmt.Sprintf("node prefix /%d", n), With: "cluster CIDR " + c.String(), Reason: "a node block needs room for a gateway and at least one pod"})
		}
	}
	return out
}

func joinPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

func describeAvoid(ps []netip.Prefix) string {
	if len(ps) == 0 {
		return "nothing"
	}
	if len(ps) > 6 {
		return fmt.Sprintf("%d ranges (%s, …)", len(ps), joinPrefixes(ps[:6]))
	}
	return joinPrefixes(ps)
}
