// Package nftpolicy enforces compiled network policies (policy.PodRules of the node's
// pods) in weft's own nftables table, `inet weft-policy`, replaced whole in one
// transaction per sync:
//
//   - raw prerouting (priority -302, before weft-nat's notrack at -300) decides what must
//     be tracked. A TCP packet between two pod addresses that the policies would allow as
//     a new connection in both its directions is allowed whatever its connection's state:
//     it gets MarkPolicyAccepted and stays untracked, like unpoliced pod-to-pod traffic.
//     Other traffic between a policed pod and the pod networks is marked to stay tracked,
//     so replies of allowed connections pass statefully. The test is symmetric in a
//     packet and its reply, so both directions of a connection are treated alike.
//   - forward: packets marked accepted pass, then established and related traffic; then
//     a verdict map from source address to the pod's egress chain and one from destination
//     address to its ingress chain. A chain holds one rule per distinct protocol/port
//     range, each testing the peer against one interval set of addresses, and ends in a
//     counted drop. A new connection costs two map lookups and a few set lookups, whatever
//     the number of policies behind them.
//
// Host traffic (the node to its pods and back) is not filtered, as Kubernetes specifies.
package nftpolicy

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
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
	b := &builder{c: c, t: table, sets: map[string]*nftables.Set{}, chains: map[string]bool{}}
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
	c      *nftables.Conn
	t      *nftables.Table
	err    error
	n      int                      // set names
	sets   map[string]*nftables.Set // by content: a pod's chains share their sets
	chains map[string]bool          // raw pod chains made
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
	b.c.AddChain(b.chain("track"))
	for f := range 2 {
		is6 := f == 1
		if len(policed[f]) == 0 || len(cluster[f]) == 0 {
			continue
		}
		pol, clu := b.addrSet(is6, policed[f]), b.addrSet(is6, cluster[f])
		// TCP: decided without state when it can be. The family's stateless chain
		// accepts every packet, which ends this chain.
		b.c.AddChain(b.chain(statelessChain(is6)))
		b.rule("raw-prerouting", append(nftexpr.Family(is6),
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
			&expr.Verdict{Kind: expr.VerdictJump, Chain: statelessChain(is6)})...)
		// Other protocols between a policed pod and the pod networks stay tracked.
		for _, dir := range [][2]*nftables.Set{{pol, clu}, {clu, pol}} {
			b.rule("raw-prerouting", append(addrsIn(is6, dir[0], dir[1]), nftexpr.SetMark(dataplane.MarkTracked)...)...)
		}
		// track, where a raw pod chain sends what it does not allow: between pod
		// addresses (where weft-nat's notrack applies), keep it tracked. Elsewhere it is
		// tracked anyway, and the mark would exempt it from masquerade.
		var within []expr.Any
		if len(cluster[f]) == 1 { // the usual case: a mask beats a set lookup
			within = nftexpr.WithinPrefix(cluster[f][0])
		} else {
			within = addrsIn(is6, clu, clu)
		}
		b.rule("track", append(append(within, nftexpr.SetMark(dataplane.MarkTracked)...), &expr.Verdict{Kind: expr.VerdictAccept})...)
	}
	b.rule("track", &expr.Verdict{Kind: expr.VerdictAccept})

	// Accepted without state, and untracked: a DNATed packet (a service, a node or
	// published port) is tracked, and its real destination's policies apply below.
	b.rule("forward", append(append(ctUntracked(), nftexpr.MarkIsSet(dataplane.MarkPolicyAccepted)...),
		&expr.Verdict{Kind: expr.VerdictAccept})...)
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

	// Chains first, then the verdict maps that point at them. A policed direction has its
	// forward chain and two raw ones: the packet as a new connection, and its reply as one.
	sort.Slice(st.Pods, func(i, j int) bool { return st.Pods[i].ID < st.Pods[j].ID })
	maps := map[string][]mapEntry{}
	for _, p := range st.Pods {
		for _, d := range []struct {
			rules *policy.Rules
			kinds []chainKind
		}{{p.Rules.Egress, egressKinds}, {p.Rules.Ingress, ingressKinds}} {
			if d.rules == nil {
				continue
			}
			for _, k := range d.kinds {
				if !k.raw {
					name := k.prefix + p.ID
					b.c.AddChain(b.chain(name))
					b.rules(name, d.rules, k, -1)
					for _, ip := range p.IPs {
						maps[k.mapName] = append(maps[k.mapName], mapEntry{ip, name})
					}
					continue
				}
				// A raw chain is one family's, as the stateless chain that jumps to it:
				// no family tests.
				for _, ip := range p.IPs {
					name := fmt.Sprintf("%s%d-%s", k.prefix, 4+2*fam(ip), p.ID)
					if !b.chains[name] {
						b.c.AddChain(b.chain(name))
						b.rules(name, d.rules, k, fam(ip))
						b.chains[name] = true
					}
					maps[k.mapName] = append(maps[k.mapName], mapEntry{ip, name})
				}
			}
		}
	}
	for _, k := range append(append([]chainKind(nil), egressKinds...), ingressKinds...) {
		for f := range 2 {
			is6 := f == 1
			var els []nftables.SetElement
			for _, e := range maps[k.mapName] {
				if fam(e.ip) == f {
					els = append(els, nftables.SetElement{Key: e.ip.AsSlice(), VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: e.chain}})
				}
			}
			if len(els) == 0 {
				continue
			}
			vm := &nftables.Set{Table: b.t, Name: fmt.Sprintf("%s%d", k.mapName, 4+2*f), IsMap: true, KeyType: addrType(is6), DataType: nftables.TypeVerdict, Constant: true}
			b.fail(b.c.AddSet(vm, els))
			load, chain := nftexpr.LoadAddr(is6, k.keyIsDst), "forward"
			if k.raw { // the stateless chains are one family's
				load, chain = nftexpr.LoadAddrSameFamily(is6, k.keyIsDst), statelessChain(is6)
			}
			b.rule(chain, append(load, &expr.Lookup{SourceRegister: 1, SetName: vm.Name, SetID: vm.ID, DestRegister: 0, IsDestRegSet: true})...)
			// The node's DNS is reached through the input hook: the source's egress applies.
			if dns := ofFamily(prefixesOf(st.DNS), f); k.mapName == "egress" && len(dns) > 0 {
				ds := b.addrSet(is6, dns)
				ex := append(nftexpr.LoadAddr(is6, true), &expr.Lookup{SourceRegister: 1, SetName: ds.Name, SetID: ds.ID})
				ex = append(ex, nftexpr.LoadAddrSameFamily(is6, false)...)
				b.rule("input", append(ex, &expr.Lookup{SourceRegister: 1, SetName: vm.Name, SetID: vm.ID, DestRegister: 0, IsDestRegSet: true})...)
			}
		}
	}
	// Every test passed (or found no policy): allowed as a new connection both ways.
	for f := range 2 {
		if len(policed[f]) > 0 && len(cluster[f]) > 0 {
			b.rule(statelessChain(f == 1), append(nftexpr.SetMark(dataplane.MarkPolicyAccepted), &expr.Verdict{Kind: expr.VerdictAccept})...)
		}
	}
}

// addrsIn is `ip saddr @src ip daddr @dst`.
func addrsIn(is6 bool, src, dst *nftables.Set) []expr.Any {
	ex := append(nftexpr.LoadAddr(is6, false), &expr.Lookup{SourceRegister: 1, SetName: src.Name, SetID: src.ID})
	ex = append(ex, nftexpr.LoadAddrSameFamily(is6, true)...)
	return append(ex, &expr.Lookup{SourceRegister: 1, SetName: dst.Name, SetID: dst.ID})
}

func statelessChain(is6 bool) string {
	if is6 {
		return "stateless6"
	}
	return "stateless4"
}

// ctUntracked is `ct state untracked`, as one compare: an untracked packet's state is
// that bit alone.
func ctUntracked() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(expr.CtStateBitUNTRACKED)},
	}
}

type mapEntry struct {
	ip    netip.Addr
	chain string
}

// chainKind is one of a policed direction's chains: which verdict map jumps to it (keyed
// by the packet's source or destination address), where the peer and the port are in
// the packet, and what becomes of a packet no rule allows.
type chainKind struct {
	prefix, mapName      string
	keyIsDst             bool
	peerIsDst, portIsSrc bool
	raw                  bool // in the stateless chains: allowed, return; else to track
}

var (
	egressKinds = []chainKind{
		// Forward: the pod is the source, the peer the destination.
		{prefix: "e-", mapName: "egress", peerIsDst: true},
		// Raw, the packet as a new connection from the pod.
		{prefix: "re-", mapName: "raw-egress", peerIsDst: true, raw: true},
		// Raw, the packet's reply as a new connection from the pod (its destination).
		{prefix: "rer-", mapName: "raw-egress-rev", keyIsDst: true, portIsSrc: true, raw: true},
	}
	ingressKinds = []chainKind{
		{prefix: "i-", mapName: "ingress", keyIsDst: true},
		{prefix: "ri-", mapName: "raw-ingress", keyIsDst: true, raw: true},
		{prefix: "rir-", mapName: "raw-ingress-rev", peerIsDst: true, portIsSrc: true, raw: true},
	}
)

// rules fills a pod's chain: one rule per family for the peers allowed everywhere, one
// per family and protocol/port range for the others, then a counted drop (forward) or
// the mark that keeps the packet tracked (raw: only TCP reaches those).
func (b *builder) rules(chain string, r *policy.Rules, k chainKind, onlyFamily int) {
	allow := &expr.Verdict{Kind: expr.VerdictReturn}
	if k.mapName == "ingress" {
		allow = &expr.Verdict{Kind: expr.VerdictAccept}
	}
	type group struct {
		proto       string
		first, last int
	}
	byGroup := map[group][]netip.Prefix{}
	var groups []group
	for _, pr := range r.Ports {
		if k.raw && pr.Proto != "TCP" {
			continue
		}
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
	portOffset := uint32(2) // destination port
	if k.portIsSrc {
		portOffset = 0
	}
	for f := range 2 {
		is6 := f == 1
		if onlyFamily >= 0 && f != onlyFamily {
			continue
		}
		sameFamily := onlyFamily >= 0
		if peers := ofFamily(r.Any, f); len(peers) > 0 {
			b.rule(chain, append(b.peerMatch(is6, sameFamily, k.peerIsDst, peers), allow)...)
		}
		for _, g := range groups {
			peers := ofFamily(byGroup[g], f)
			if len(peers) == 0 {
				continue
			}
			ex := b.peerMatch(is6, sameFamily, k.peerIsDst, peers)
			if !k.raw { // the raw chains see TCP only
				ex = append(ex,
					&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
					&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{protoNumber(g.proto)}})
			}
			port := &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: portOffset, Len: 2}
			switch {
			case g.first == g.last:
				ex = append(ex, port, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: nftexpr.BE16(uint16(g.first))})
			case g.first != 0 || g.last != 65535:
				ex = append(ex, port, &expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: nftexpr.BE16(uint16(g.first)), ToData: nftexpr.BE16(uint16(g.last))})
			}
			b.rule(chain, append(ex, allow)...)
		}
	}
	if k.raw {
		// Not allowed as a new connection: conntrack decides (it may be a reply).
		b.rule(chain, &expr.Verdict{Kind: expr.VerdictGoto, Chain: "track"})
		return
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
func (b *builder) peerMatch(is6, sameFamily, peerIsDst bool, peers []netip.Prefix) []expr.Any {
	for _, p := range peers {
		if p.Bits() == 0 {
			if sameFamily {
				return nil
			}
			return nftexpr.Family(is6)
		}
	}
	s := b.addrSet(is6, peers)
	load := nftexpr.LoadAddr(is6, peerIsDst)
	if sameFamily {
		load = nftexpr.LoadAddrSameFamily(is6, peerIsDst)
	}
	return append(load, &expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID})
}

// addrSet makes an anonymous-like named interval set of prefixes (merged: the kernel
// refuses overlapping intervals).
func (b *builder) addrSet(is6 bool, ps []netip.Prefix) *nftables.Set {
	key := fmt.Sprint(is6, ps)
	if s, ok := b.sets[key]; ok {
		return s
	}
	b.n++
	s := &nftables.Set{Table: b.t, Name: fmt.Sprintf("a%d", b.n), KeyType: addrType(is6), Interval: true, Constant: true}
	b.fail(b.c.AddSet(s, intervalElements(is6, ps)))
	b.sets[key] = s
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
// restarted weftd sends all those pods' traffic to the table until its first sync: the
// table outlives weftd, and so must what it needs.
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
