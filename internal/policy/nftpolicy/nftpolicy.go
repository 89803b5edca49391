// Package nftpolicy enforces compiled network policies (policy.PodRules of the node's
// pods) in weft's own nftables table, `inet weft-policy`, replaced whole in one
// transaction per sync:
//
//   - raw prerouting (priority -302, before weft-nat's notrack at -300): traffic between a
//     policed pod and the pod networks is marked to stay tracked, so replies of allowed
//     connections pass statefully;
//   - forward: established and related traffic passes; then a verdict map from source
//     address to the pod's egress chain and one from destination address to its ingress
//     chain. A chain holds one rule per distinct protocol/port range, each testing the
//     peer against one interval set of addresses, and ends in a counted drop. A new
//     connection costs two map lookups and a few set lookups, whatever the number of
//     policies behind them.
//
// Host traffic (the node to its pods and back) is not filtered, as Kubernetes specifies.
package nftpolicy

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/dataplane"
	"github.com/weftnet/weft/internal/nftexpr"
	"github.com/weftnet/weft/internal/policy"
)

// Pod is one of the node's policed pods.
type Pod struct {
	ID    string // short, unique on the node: names its chains and sets
	IPs   []netip.Addr
	Rules policy.PodRules
}

// State is what the node enforces.
type State struct {
	Cluster []netip.Prefix // the pod networks
	Pods    []Pod
	// DNS are the node's own DNS addresses: a policed pod's queries to them arrive at the
	// node itself (the input hook), and are checked against its egress like any other.
	DNS []netip.Addr
}

// Apply replaces the table with st in the network namespace open at nsFd (-1: the
// calling thread's). An empty st deletes the table.
func Apply(st State, nsFd int) error {
	c, err := nftexpr.Conn(nsFd)
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	table := &nftables.Table{Family: nftables.TableFamilyINet, Name: dataplane.TablePolicy}
	// Add then delete: removes an earlier version whether or not there is one.
	c.AddTable(table)
	c.DelTable(table)
	if len(st.Pods) == 0 {
		return c.Flush()
	}
	c.AddTable(table)
	b := &builder{c: c, t: table}
	b.build(st)
	if b.err != nil {
		return b.err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("apply table %s: %w", dataplane.TablePolicy, err)
	}
	return nil
}

type builder struct {
	c   *nftables.Conn
	t   *nftables.Table
	err error
	n   int // set names
}

func (b *builder) fail(err error) {
	if b.err == nil && err != nil {
		b.err = err
	}
}

func (b *builder) chain(name string) *nftables.Chain {
	return &nftables.Chain{Name: name, Table: b.t}
}

func (b *builder) rule(ch string, ex ...expr.Any) {
	b.c.AddRule(&nftables.Rule{Table: b.t, Chain: b.chain(ch), Exprs: ex})
}

func (b *builder) build(st State) {
	raw := nftables.ChainPriority(dataplane.PriorityPolicyRaw)
	b.c.AddChain(&nftables.Chain{Name: "raw-prerouting", Table: b.t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookPrerouting, Priority: &raw})
	b.c.AddChain(&nftables.Chain{Name: "forward", Table: b.t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter})
	b.c.AddChain(&nftables.Chain{Name: "input", Table: b.t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter})

	var policed [2][]netip.Prefix
	for _, p := range st.Pods {
		for _, ip := range p.IPs {
			policed[fam(ip)] = append(policed[fam(ip)], netip.PrefixFrom(ip, ip.BitLen()))
		}
	}
	var cluster [2][]netip.Prefix
	for _, p := range st.Cluster {
		cluster[fam(p.Addr())] = append(cluster[fam(p.Addr())], p)
	}
	for f := range 2 {
		is6 := f == 1
		if len(policed[f]) == 0 || len(cluster[f]) == 0 {
			continue
		}
		pol, clu := b.addrSet(is6, policed[f]), b.addrSet(is6, cluster[f])
		for _, dir := range [][2]*nftables.Set{{pol, clu}, {clu, pol}} {
			ex := append(nftexpr.LoadAddr(is6, false), &expr.Lookup{SourceRegister: 1, SetName: dir[0].Name, SetID: dir[0].ID})
			ex = append(ex, nftexpr.LoadAddrSameFamily(is6, true)...)
			ex = append(ex, &expr.Lookup{SourceRegister: 1, SetName: dir[1].Name, SetID: dir[1].ID})
			b.rule("raw-prerouting", append(ex, nftexpr.SetMark(dataplane.MarkTracked)...)...)
		}
	}

	b.rule("forward", nftexpr.EstablishedAccept()...)

	b.rule("input", nftexpr.EstablishedAccept()...)

	// IPv6 neighbour discovery is the link working, not a connection: never policed
	// (ICMPv6 types 133-137: router and neighbour solicitation and advertisement, redirect).
	b.rule("forward", append(nftexpr.Family(true),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ICMPV6}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
		&expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: []byte{133}, ToData: []byte{137}},
		&expr.Verdict{Kind: expr.VerdictAccept})...)

	// Chains first, then the verdict maps that point at them.
	type entry struct {
		ip    netip.Addr
		chain string
	}
	var egress, ingress []entry
	sort.Slice(st.Pods, func(i, j int) bool { return st.Pods[i].ID < st.Pods[j].ID })
	for _, p := range st.Pods {
		if r := p.Rules.Egress; r != nil {
			name := "e-" + p.ID
			b.c.AddChain(b.chain(name))
			b.rules(name, r, true, &expr.Verdict{Kind: expr.VerdictReturn})
			for _, ip := range p.IPs {
				egress = append(egress, entry{ip, name})
			}
		}
		if r := p.Rules.Ingress; r != nil {
			name := "i-" + p.ID
			b.c.AddChain(b.chain(name))
			b.rules(name, r, false, &expr.Verdict{Kind: expr.VerdictAccept})
			for _, ip := range p.IPs {
				ingress = append(ingress, entry{ip, name})
			}
		}
	}
	for _, m := range []struct {
		name string
		src  bool
		es   []entry
	}{{"egress", true, egress}, {"ingress", false, ingress}} {
		for f := range 2 {
			is6 := f == 1
			var els []nftables.SetElement
			for _, e := range m.es {
				if fam(e.ip) == f {
					els = append(els, nftables.SetElement{Key: e.ip.AsSlice(), VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: e.chain}})
				}
			}
			if len(els) == 0 {
				continue
			}
			vm := &nftables.Set{Table: b.t, Name: fmt.Sprintf("%s%d", m.name, 4+2*f), IsMap: true, KeyType: addrType(is6), DataType: nftables.TypeVerdict}
			b.fail(b.c.AddSet(vm, els))
			b.rule("forward", append(nftexpr.LoadAddr(is6, !m.src),
				&expr.Lookup{SourceRegister: 1, SetName: vm.Name, SetID: vm.ID, DestRegister: 0, IsDestRegSet: true})...)
			// The node's DNS is reached through the input hook: the source's egress applies.
			if dns := ofFamily(prefixesOf(st.DNS), f); m.src && len(dns) > 0 {
				ds := b.addrSet(is6, dns)
				ex := append(nftexpr.LoadAddr(is6, true), &expr.Lookup{SourceRegister: 1, SetName: ds.Name, SetID: ds.ID})
				ex = append(ex, nftexpr.LoadAddrSameFamily(is6, false)...)
				b.rule("input", append(ex, &expr.Lookup{SourceRegister: 1, SetName: vm.Name, SetID: vm.ID, DestRegister: 0, IsDestRegSet: true})...)
			}
		}
	}
}

// rules fills a pod's chain: one rule per family for the peers allowed everywhere, one
// per family and protocol/port range for the others, then a counted drop. peerIsDst: the
// peer is the packet's destination (egress).
func (b *builder) rules(chain string, r *policy.Rules, peerIsDst bool, allow *expr.Verdict) {
	type group struct {
		proto       string
		first, last int
	}
	byGroup := map[group][]netip.Prefix{}
	var groups []group
	for _, pr := range r.Ports {
		g := group{pr.Proto, pr.First, pr.Last}
		if _, ok := byGroup[g]; !ok {
			groups = append(groups, g)
		}
		byGroup[g] = append(byGroup[g], pr.Peer)
	}
	sort.Slice(groups, func(i, j int) bool {
		a, c := groups[i], groups[j]
		if a.proto != c.proto {
			return a.proto < c.proto
		}
		if a.first != c.first {
			return a.first < c.first
		}
		return a.last < c.last
	})
	for f := range 2 {
		is6 := f == 1
		if peers := ofFamily(r.Any, f); len(peers) > 0 {
			b.rule(chain, append(b.peerMatch(is6, peerIsDst, peers), allow)...)
		}
		for _, g := range groups {
			peers := ofFamily(byGroup[g], f)
			if len(peers) == 0 {
				continue
			}
			ex := b.peerMatch(is6, peerIsDst, peers)
			ex = append(ex,
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{protoNumber(g.proto)}})
			if g.first != 0 || g.last != 65535 {
				ex = append(ex,
					&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
					&expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: nftexpr.BE16(uint16(g.first)), ToData: nftexpr.BE16(uint16(g.last))})
			}
			b.rule(chain, append(ex, allow)...)
		}
	}
	// Drops are logged to nflog group LogGroup (weftd reads it: `weft policy log`), at
	// most LogRate a second per chain so a flood costs little, then counted.
	b.rule(chain,
		&expr.Limit{Type: expr.LimitTypePkts, Rate: LogRate, Unit: expr.LimitTimeSecond, Burst: LogRate},
		&expr.Log{Group: LogGroup, Data: []byte(chain), Snaplen: 80,
			Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX | 1<<unix.NFTA_LOG_SNAPLEN})
	b.rule(chain, &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop})
}

// LogGroup is the nflog group drops are logged to; LogRate bounds the log per chain.
const (
	LogGroup = 7712
	LogRate  = 50
)

// peerMatch tests the peer address against prefixes: no test for the whole family, else
// a lookup in an interval set of them.
func (b *builder) peerMatch(is6, peerIsDst bool, peers []netip.Prefix) []expr.Any {
	for _, p := range peers {
		if p.Bits() == 0 {
			return nftexpr.Family(is6)
		}
	}
	s := b.addrSet(is6, peers)
	return append(nftexpr.LoadAddr(is6, peerIsDst), &expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID})
}

// addrSet makes an anonymous-like named interval set of prefixes (merged: the kernel
// refuses overlapping intervals).
func (b *builder) addrSet(is6 bool, ps []netip.Prefix) *nftables.Set {
	b.n++
	s := &nftables.Set{Table: b.t, Name: fmt.Sprintf("a%d", b.n), KeyType: addrType(is6), Interval: true}
	b.fail(b.c.AddSet(s, intervalElements(is6, ps)))
	return s
}

// intervalElements are the start and (exclusive) end elements of the merged ranges; a
// range that reaches the top of the address space has no end element.
func intervalElements(is6 bool, ps []netip.Prefix) []nftables.SetElement {
	type rng struct{ lo, hi netip.Addr }
	var rs []rng
	for _, p := range ps {
		p = p.Masked()
		rs = append(rs, rng{p.Addr(), lastAddr(p)})
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].lo.Less(rs[j].lo) })
	var merged []rng
	for _, r := range rs {
		if n := len(merged); n > 0 {
			last := &merged[n-1]
			// Overlapping or adjacent (r starts at most one past last): one range.
			if next := last.hi.Next(); !next.IsValid() || !next.Less(r.lo) {
				if last.hi.Less(r.hi) {
					last.hi = r.hi
				}
				continue
			}
		}
		merged = append(merged, r)
	}
	var els []nftables.SetElement
	for _, r := range merged {
		els = append(els, nftables.SetElement{Key: r.lo.AsSlice()})
		if end := r.hi.Next(); end.IsValid() {
			els = append(els, nftables.SetElement{Key: end.AsSlice(), IntervalEnd: true})
		}
	}
	return els
}

func prefixesOf(as []netip.Addr) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(as))
	for _, a := range as {
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func ofFamily(ps []netip.Prefix, f int) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if fam(p.Addr()) == f {
			out = append(out, p)
		}
	}
	return out
}

func fam(a netip.Addr) int {
	if a.Unmap().Is4() {
		return 0
	}
	return 1
}

func addrType(is6 bool) nftables.SetDatatype {
	if is6 {
		return nftables.TypeIP6Addr
	}
	return nftables.TypeIPAddr
}

func protoNumber(p string) byte {
	switch p {
	case "UDP":
		return unix.IPPROTO_UDP
	case "SCTP":
		return unix.IPPROTO_SCTP
	}
	return unix.IPPROTO_TCP
}

// Drops reads the drop counters of the table's pod chains: chain name ("i-ID" for ingress,
// "e-ID" for egress) to packets dropped since the table was written. No table: none.
func Drops(nsFd int) (map[string]uint64, error) {
	c, err := nftexpr.Conn(nsFd)
	if err != nil {
		return nil, err
	}
	return nftexpr.ChainCounters(c, nftables.TableFamilyINet, dataplane.TablePolicy, func(chain string) bool {
		return strings.HasPrefix(chain, "i-") || strings.HasPrefix(chain, "e-")
	})
}

// Policed reads the addresses the table polices now (the keys of its verdict maps), so a
// restarted weftd keeps those pods off the fast path until its first sync: the table
// outlives weftd, and so must what it needs.
func Policed(nsFd int) (map[netip.Addr]bool, error) {
	c, err := nftexpr.Conn(nsFd)
	if err != nil {
		return nil, err
	}
	table := &nftables.Table{Family: nftables.TableFamilyINet, Name: dataplane.TablePolicy}
	out := map[netip.Addr]bool{}
	for _, name := range []string{"ingress4", "ingress6", "egress4", "egress6"} {
		s, err := c.GetSetByName(table, name)
		if err != nil {
			continue // no such map (or no table): nothing policed in it
		}
		els, err := c.GetSetElements(s)
		if err != nil {
			return nil, err
		}
		for _, e := range els {
			if a, ok := netip.AddrFromSlice(e.Key); ok {
				out[a.Unmap()] = true
			}
		}
	}
	return out, nil
}
