// Package nftproxy programs a proxy.State into weft's own nftables table (inet weft-svc)
// over netlink, in the shape of kube-proxy's nftables mode:
//
//   - one verdict-map lookup on daddr . l4proto . dport for every service (O(1) in the
//     number of services), and one on l4proto . dport for node ports on local addresses;
//   - a chain per service port and family: hairpin mark, ClientIP affinity (per-backend
//     dynamic sets with a timeout), then `dnat to numgen random mod N map {...}`;
//   - services without endpoints are in a second pair of maps whose verdict rejects new
//     connections at once (TCP reset, ICMP port unreachable) in prerouting and output;
//   - a set of every service endpoint: packets from one are marked at raw priority so
//     weft-nat's pod-to-pod notrack leaves them to conntrack (their reverse NAT).
//
// The first sync (and any sync after a failure) replaces the whole table in one
// transaction; later syncs send only the difference, also as one transaction: a change to
// one service touches only that service's chains and map elements.
package nftproxy

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"sort"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/dataplane"
	"github.com/weftnet/weft/internal/proxy"
)

// Proxy keeps the table converged with the states it is given. Not safe for concurrent
// use: one reconcile loop drives it.
type Proxy struct {
	applied *proxy.State // nil: the next sync replaces the whole table
	table   *nftables.Table
	sets    map[string]*nftables.Set
}

// New returns a proxy for the calling thread's network namespace.
func New() *Proxy {
	return &Proxy{table: &nftables.Table{Family: nftables.TableFamilyINet, Name: dataplane.TableServices}}
}

// Stats describes the last sync.
type Stats struct {
	Full      bool
	Ports     int // service ports programmed
	Changed   int // service ports whose objects were (re)written
	Elements  int // map and set elements sent
	Rules     int // rules sent
	Removed   []proxy.Key
	Endpoints int
}

// Sync makes the table program want. On error the next Sync starts afresh.
func (p *Proxy) Sync(want proxy.State) (Stats, error) {
	c, err := nftables.New()
	if err != nil {
		return Stats{}, fmt.Errorf("nftables: %w", err)
	}
	b := &batch{c: c, table: p.table}
	st := Stats{Ports: len(want.Ports), Endpoints: len(want.Endpoints)}
	if p.applied == nil {
		st.Full = true
		b.replaceTable()
		p.sets = b.staticObjects()
		b.sets = p.sets
		for _, id := range sortedIDs(want.Ports) {
			b.addPort(want.Ports[id])
			st.Changed++
		}
		b.endpoints(nil, want.Endpoints)
	} else {
		b.sets = p.sets
		old := p.applied
		for _, id := range sortedIDs(old.Ports) {
			if _, ok := want.Ports[id]; !ok {
				b.removePort(old.Ports[id])
				st.Changed++
			}
		}
		for _, id := range sortedIDs(want.Ports) {
			n := want.Ports[id]
			o, ok := old.Ports[id]
			switch {
			case !ok:
				b.addPort(n)
				st.Changed++
			case !o.Equal(n):
				b.changePort(o, n)
				st.Changed++
			}
		}
		b.endpoints(old.Endpoints, want.Endpoints)
		st.Removed = proxy.Removed(*old, want)
	}
	if b.err != nil {
		p.applied = nil
		return st, b.err
	}
	if err := c.Flush(); err != nil {
		p.applied = nil
		return st, fmt.Errorf("apply table %s: %w", dataplane.TableServices, err)
	}
	st.Elements, st.Rules = b.elements, b.rules
	p.applied = &want
	return st, nil
}

// Reset makes the next Sync replace the whole table (after drift, or to adopt a table left
// by an earlier weftd).
func (p *Proxy) Reset() { p.applied = nil }

// PrepareNode makes bridged IPv4 and IPv6 traffic pass the inet hooks in the calling
// thread's network namespace (bridge-nf-call-iptables/ip6tables), as kube-proxy requires:
// a backend's reply to a client on the same bridge is bridged, not routed, and only then
// does conntrack translate it back. With the fast path on, plain pod-to-pod traffic never
// crosses the bridge, so this costs little.
func PrepareNode() error {
	for _, k := range []string{"bridge-nf-call-iptables", "bridge-nf-call-ip6tables"} {
		if err := os.WriteFile("/proc/sys/net/bridge/"+k, []byte("1"), 0o644); err != nil {
			return fmt.Errorf("enable %s (is br_netfilter loaded?): %w", k, err)
		}
	}
	return nil
}

// TableExists reports whether weft's service table is in the calling thread's namespace.
func TableExists() bool {
	c, err := nftables.New()
	if err != nil {
		return false
	}
	_, err = c.ListTableOfFamily(dataplane.TableServices, nftables.TableFamilyINet)
	return err == nil
}

// Delete removes the table (the proxy is being turned off).
func Delete() error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: dataplane.TableServices}
	c.AddTable(t)
	c.DelTable(t)
	return c.Flush()
}

func sortedIDs(m map[string]*proxy.Port) []string {
	ids := make([]string, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// Names of the static objects.
const (
	mapServices4  = "services4"  // ipv4_addr . inet_proto . inet_service : verdict
	mapServices6  = "services6"  // ipv6_addr . ...
	mapNodePorts4 = "nodeports4" // inet_proto . inet_service : verdict
	mapNodePorts6 = "nodeports6" //
	mapNoEP4      = "no-endpoints4"
	mapNoEP6      = "no-endpoints6"
	mapNoEPNP4    = "no-endpoint-nodeports4"
	mapNoEPNP6    = "no-endpoint-nodeports6"
	setEndpoints4 = "endpoints4" // ipv4_addr . inet_proto . inet_service
	setEndpoints6 = "endpoints6"
	setHairpin4   = "hairpin4" // ipv4_addr . ipv4_addr: each endpoint address twice
	setHairpin6   = "hairpin6"

	chainServices = "services"
	chainNoEP     = "no-endpoints"
	chainReject   = "reject"
)

func svcChain(p *proxy.Port) string      { return "svc-" + p.ID }
func nodePortChain(p *proxy.Port) string { return "np-" + p.ID }
func backendChain(p *proxy.Port, b proxy.Backend) string {
	return "ep-" + p.ID + "-" + proxy.BackendID(p, b)
}
func affinitySet(p *proxy.Port, b proxy.Backend) string {
	return "aff-" + p.ID + "-" + proxy.BackendID(p, b)
}

// batch accumulates one transaction.
type batch struct {
	c        *nftables.Conn
	table    *nftables.Table
	sets     map[string]*nftables.Set
	err      error
	elements int
	rules    int
}

func (b *batch) fail(err error) {
	if b.err == nil && err != nil {
		b.err = err
	}
}

// replaceTable deletes any table of ours (an earlier weftd's) and creates it empty, in
// the same transaction as everything that follows: the kernel swaps old for new at once.
func (b *batch) replaceTable() {
	b.c.AddTable(b.table)
	b.c.DelTable(b.table)
	b.c.AddTable(b.table)
}

func (b *batch) chain(name string) *nftables.Chain {
	return &nftables.Chain{Name: name, Table: b.table}
}

func (b *batch) rule(chain string, ex ...expr.Any) {
	b.rules++
	b.c.AddRule(&nftables.Rule{Table: b.table, Chain: b.chain(chain), Exprs: ex})
}

func (b *batch) staticObjects() map[string]*nftables.Set {
	sets := map[string]*nftables.Set{}
	concat := func(types ...nftables.SetDatatype) nftables.SetDatatype {
		t, err := nftables.ConcatSetType(types...)
		b.fail(err)
		return t
	}
	key4 := concat(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)
	key6 := concat(nftables.TypeIP6Addr, nftables.TypeInetProto, nftables.TypeInetService)
	keyNP := concat(nftables.TypeInetProto, nftables.TypeInetService)
	for name, key := range map[string]nftables.SetDatatype{
		mapServices4: key4, mapServices6: key6, mapNodePorts4: keyNP, mapNodePorts6: keyNP,
		mapNoEP4: key4, mapNoEP6: key6, mapNoEPNP4: keyNP, mapNoEPNP6: keyNP,
	} {
		s := &nftables.Set{Table: b.table, Name: name, IsMap: true, KeyType: key, DataType: nftables.TypeVerdict, Concatenation: true}
		b.fail(b.c.AddSet(s, nil))
		sets[name] = s
	}
	for name, key := range map[string]nftables.SetDatatype{
		setEndpoints4: key4, setEndpoints6: key6,
		setHairpin4: concat(nftables.TypeIPAddr, nftables.TypeIPAddr), setHairpin6: concat(nftables.TypeIP6Addr, nftables.TypeIP6Addr),
	} {
		s := &nftables.Set{Table: b.table, Name: name, KeyType: key, Concatenation: true}
		b.fail(b.c.AddSet(s, nil))
		sets[name] = s
	}
	base := func(name string, typ nftables.ChainType, hook *nftables.ChainHook, prio *nftables.ChainPriority) {
		b.c.AddChain(&nftables.Chain{Name: name, Table: b.table, Type: typ, Hooknum: hook, Priority: prio})
	}
	for _, name := range []string{chainServices, chainNoEP, chainReject} {
		b.c.AddChain(b.chain(name))
	}
	base("nat-prerouting", nftables.ChainTypeNAT, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest)
	base("nat-output", nftables.ChainTypeNAT, nftables.ChainHookOutput, nftables.ChainPriorityNATDest)
	base("nat-postrouting", nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource)
	raw := nftables.ChainPriority(dataplane.PriorityServicesRaw)
	base("raw-prerouting", nftables.ChainTypeFilter, nftables.ChainHookPrerouting, &raw)
	// Connections to a service without endpoints are refused where they enter: in
	// prerouting (before routing, which may have no route for a VIP and drop it
	// silently) and in output for the node's own.
	filterPrio := nftables.ChainPriority(-90) // after DNAT (-100)
	base("filter-prerouting", nftables.ChainTypeFilter, nftables.ChainHookPrerouting, &filterPrio)
	base("filter-output", nftables.ChainTypeFilter, nftables.ChainHookOutput, &filterPrio)
	b.rule("filter-prerouting", jump(chainNoEP))
	b.rule("filter-output", jump(chainNoEP))

	b.rule("nat-prerouting", jump(chainServices))
	b.rule("nat-output", jump(chainServices))
	b.rule(chainServices, vipLookup(false, mapServices4)...)
	b.rule(chainServices, vipLookup(true, mapServices6)...)
	b.rule(chainServices, nodePortLookup(false, mapNodePorts4)...)
	b.rule(chainServices, nodePortLookup(true, mapNodePorts6)...)
	b.rule("nat-postrouting", append(markIsSet(dataplane.MarkMasq), &expr.Masq{})...)
	// Hairpin: a DNATed connection whose backend is its own client (source = destination)
	// is masqueraded, so the answer comes back through the node.
	b.rule("nat-postrouting", hairpin(false)...)
	b.rule("nat-postrouting", hairpin(true)...)
	b.rule("raw-prerouting", append(endpointSource(false), setMark(dataplane.MarkTracked)...)...)
	b.rule("raw-prerouting", append(endpointSource(true), setMark(dataplane.MarkTracked)...)...)

	b.rule(chainNoEP, ctStateNewOnly()...)
	b.rule(chainNoEP, vipLookup(false, mapNoEP4)...)
	b.rule(chainNoEP, vipLookup(true, mapNoEP6)...)
	b.rule(chainNoEP, nodePortLookup(false, mapNoEPNP4)...)
	b.rule(chainNoEP, nodePortLookup(true, mapNoEPNP6)...)
	b.rule(chainReject,
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Reject{Type: unix.NFT_REJECT_TCP_RST})
	b.rule(chainReject, &expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH})
	return sets
}

// addPort creates a service port's chains and map elements.
func (b *batch) addPort(p *proxy.Port) {
	b.portChains(p, nil)
	b.portElements(p, true)
}

// removePort deletes them: elements first, so no map points at a chain being deleted.
func (b *batch) removePort(p *proxy.Port) {
	b.portElements(p, false)
	b.c.FlushChain(b.chain(svcChain(p)))
	b.c.DelChain(b.chain(svcChain(p)))
	if p.NodePort != 0 {
		b.c.FlushChain(b.chain(nodePortChain(p)))
		b.c.DelChain(b.chain(nodePortChain(p)))
	}
	b.removeAffinity(p, nil)
}

// changePort rewrites a port's rules; affinity sets of backends that stay are kept, so
// pinned clients stay pinned.
func (b *batch) changePort(o, n *proxy.Port) {
	b.portElements(o, false)
	b.c.FlushChain(b.chain(svcChain(o)))
	if o.NodePort != 0 {
		b.c.FlushChain(b.chain(nodePortChain(o)))
		if n.NodePort == 0 {
			b.c.DelChain(b.chain(nodePortChain(o)))
		}
	}
	keep := map[string]bool{}
	if n.Affinity != 0 && n.Affinity == o.Affinity {
		for _, be := range n.Backends {
			keep[proxy.BackendID(n, be)] = true
		}
	}
	b.removeAffinity(o, keep)
	b.portChains(n, o)
	b.portElements(n, true)
}

func (b *batch) removeAffinity(p *proxy.Port, keep map[string]bool) {
	if p.Affinity == 0 {
		return
	}
	for _, be := range p.Backends {
		if keep[proxy.BackendID(p, be)] {
			continue
		}
		b.c.FlushChain(b.chain(backendChain(p, be)))
		b.c.DelChain(b.chain(backendChain(p, be)))
		b.c.DelSet(&nftables.Set{Table: b.table, Name: affinitySet(p, be)})
	}
}

// portChains writes the rules of p's chains (creating the chains; old, if set, is what
// existed before, whose affinity chains and sets may be reused).
func (b *batch) portChains(p, old *proxy.Port) {
	is6 := p.Is6()
	b.c.AddChain(b.chain(svcChain(p)))
	existing := map[string]bool{}
	if old != nil && old.Affinity == p.Affinity && old.Affinity != 0 {
		for _, be := range old.Backends {
			existing[proxy.BackendID(old, be)] = true
		}
	}
	if len(p.Backends) > 0 {
		if p.Affinity != 0 {
			for _, be := range p.Backends {
				if !existing[proxy.BackendID(p, be)] {
					b.affinityBackend(p, be)
				}
			}
			for _, be := range p.Backends {
				b.rule(svcChain(p), append(loadAddr(is6, false),
					&expr.Lookup{SourceRegister: 1, SetName: affinitySet(p, be)},
					&expr.Verdict{Kind: expr.VerdictGoto, Chain: backendChain(p, be)})...)
			}
			b.rule(svcChain(p), b.pickChain(p, p.Backends)...)
		} else {
			b.rule(svcChain(p), b.pickDNAT(is6, p.Backends)...)
		}
	}
	if p.NodePort == 0 || len(p.NodePortBackends) == 0 {
		return
	}
	b.c.AddChain(b.chain(nodePortChain(p)))
	if !p.ExternalLocal {
		// From outside under policy Cluster: masquerade, so replies come back this way.
		b.rule(nodePortChain(p), setMark(dataplane.MarkMasq)...)
	}
	if sameBackends(p.Backends, p.NodePortBackends) {
		b.rule(nodePortChain(p), &expr.Verdict{Kind: expr.VerdictGoto, Chain: svcChain(p)})
		return
	}
	b.rule(nodePortChain(p), b.pickDNAT(is6, p.NodePortBackends)...)
}

func sameBackends(a, b []proxy.Backend) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// affinityBackend creates a backend's affinity set and chain: remember the client, DNAT.
func (b *batch) affinityBackend(p *proxy.Port, be proxy.Backend) {
	is6 := p.Is6()
	key := nftables.TypeIPAddr
	if is6 {
		key = nftables.TypeIP6Addr
	}
	s := &nftables.Set{Table: b.table, Name: affinitySet(p, be), KeyType: key, HasTimeout: true, Dynamic: true, Timeout: p.Affinity}
	b.fail(b.c.AddSet(s, nil))
	b.c.AddChain(b.chain(backendChain(p, be)))
	b.rule(backendChain(p, be), append(loadAddr(is6, false),
		&expr.Dynset{SrcRegKey: 1, SetName: s.Name, Operation: unix.NFT_DYNSET_OP_UPDATE, Timeout: p.Affinity})...)
	b.rule(backendChain(p, be), dnatTo(be)...)
}

// portElements adds (or deletes) p's map elements: its VIP (or its no-endpoint entry), and
// its node port.
func (b *batch) portElements(p *proxy.Port, add bool) {
	is6 := p.Is6()
	vipKey := concatKey(p.VIP.AsSlice(), []byte{p.Proto}, be16(p.Port))
	svcMap, noEP, npMap, noEPNP := mapServices4, mapNoEP4, mapNodePorts4, mapNoEPNP4
	if is6 {
		svcMap, noEP, npMap, noEPNP = mapServices6, mapNoEP6, mapNodePorts6, mapNoEPNP6
	}
	if len(p.Backends) > 0 {
		b.element(svcMap, add, vipKey, &expr.Verdict{Kind: expr.VerdictGoto, Chain: svcChain(p)})
	} else {
		b.element(noEP, add, vipKey, &expr.Verdict{Kind: expr.VerdictGoto, Chain: chainReject})
	}
	if p.NodePort == 0 {
		return
	}
	npKey := concatKey([]byte{p.Proto}, be16(p.NodePort))
	switch {
	case len(p.NodePortBackends) > 0:
		b.element(npMap, add, npKey, &expr.Verdict{Kind: expr.VerdictGoto, Chain: nodePortChain(p)})
	case p.ExternalLocal && len(p.Backends) > 0:
		// Endpoints exist, none on this node: traffic policy Local drops it here (a load
		// balancer's health check sends it to a node that has one).
		b.element(npMap, add, npKey, &expr.Verdict{Kind: expr.VerdictDrop})
	default:
		b.element(noEPNP, add, npKey, &expr.Verdict{Kind: expr.VerdictGoto, Chain: chainReject})
	}
}

func (b *batch) element(set string, add bool, key []byte, v *expr.Verdict) {
	b.elements++
	el := []nftables.SetElement{{Key: key, VerdictData: v}}
	if add {
		b.fail(b.c.SetAddElements(b.sets[set], el))
	} else {
		b.fail(b.c.SetDeleteElements(b.sets[set], el))
	}
}

// endpoints makes the endpoint sets hold want (old: what they hold now).
func (b *batch) endpoints(old, want []proxy.Key) {
	have := map[proxy.Key]bool{}
	for _, k := range old {
		have[k] = true
	}
	wanted := map[proxy.Key]bool{}
	for _, k := range want {
		wanted[k] = true
	}
	var add4, add6, del4, del6 []nftables.SetElement
	for _, k := range want {
		if !have[k] {
			el := nftables.SetElement{Key: concatKey(k.IP.AsSlice(), []byte{k.Proto}, be16(k.Port))}
			if k.IP.Is4() {
				add4 = append(add4, el)
			} else {
				add6 = append(add6, el)
			}
		}
	}
	for _, k := range old {
		if !wanted[k] {
			el := nftables.SetElement{Key: concatKey(k.IP.AsSlice(), []byte{k.Proto}, be16(k.Port))}
			if k.IP.Is4() {
				del4 = append(del4, el)
			} else {
				del6 = append(del6, el)
			}
		}
	}
	for set, els := range map[string][]nftables.SetElement{setEndpoints4: del4, setEndpoints6: del6} {
		if len(els) > 0 {
			b.elements += len(els)
			b.fail(b.c.SetDeleteElements(b.sets[set], els))
		}
	}
	for set, els := range map[string][]nftables.SetElement{setEndpoints4: add4, setEndpoints6: add6} {
		if len(els) > 0 {
			b.elements += len(els)
			b.fail(b.c.SetAddElements(b.sets[set], els))
		}
	}
	b.hairpinPairs(old, want)
}

// hairpinPairs makes the hairpin sets hold "ip . ip" for every endpoint address.
func (b *batch) hairpinPairs(old, want []proxy.Key) {
	addrs := func(keys []proxy.Key) map[netip.Addr]bool {
		m := map[netip.Addr]bool{}
		for _, k := range keys {
			m[k.IP] = true
		}
		return m
	}
	have, wanted := addrs(old), addrs(want)
	pair := func(a netip.Addr) nftables.SetElement {
		return nftables.SetElement{Key: concatKey(a.AsSlice(), a.AsSlice())}
	}
	diff := map[string][]nftables.SetElement{}
	for a := range wanted {
		if !have[a] {
			set := setHairpin4
			if a.Is6() {
				set = setHairpin6
			}
			diff["+"+set] = append(diff["+"+set], pair(a))
		}
	}
	for a := range have {
		if !wanted[a] {
			set := setHairpin4
			if a.Is6() {
				set = setHairpin6
			}
			diff["-"+set] = append(diff["-"+set], pair(a))
		}
	}
	for _, op := range []string{"-" + setHairpin4, "-" + setHairpin6, "+" + setHairpin4, "+" + setHairpin6} {
		els := diff[op]
		if len(els) == 0 {
			continue
		}
		b.elements += len(els)
		if op[0] == '-' {
			b.fail(b.c.SetDeleteElements(b.sets[op[1:]], els))
		} else {
			b.fail(b.c.SetAddElements(b.sets[op[1:]], els))
		}
	}
}

// hairpin is `ct status dnat ip saddr . ip daddr @hairpin masquerade`.
func hairpin(is6 bool) []expr.Any {
	off, size, set := uint32(12), uint32(8), setHairpin4
	if is6 {
		off, size, set = 8, 32, setHairpin6
	}
	ex := append(family(is6),
		&expr.Ct{Key: expr.CtKeySTATUS, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(ipsDstNAT), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
		// Source and destination are adjacent in the header: one load fills both.
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: size},
		&expr.Lookup{SourceRegister: 1, SetName: set},
	)
	return append(ex, &expr.Masq{})
}

// ipsDstNAT is IPS_DST_NAT from linux/netfilter/nf_conntrack_common.h.
const ipsDstNAT = 1 << 5

// pickDNAT is `dnat to numgen random mod N map { 0 : addr . port, ... }`.
func (b *batch) pickDNAT(is6 bool, backends []proxy.Backend) []expr.Any {
	dataType := nftables.TypeIPAddr
	family, protoReg := uint32(unix.NFPROTO_IPV4), uint32(9)
	if is6 {
		dataType, family, protoReg = nftables.TypeIP6Addr, unix.NFPROTO_IPV6, 12
	}
	data, err := nftables.ConcatSetType(dataType, nftables.TypeInetService)
	b.fail(err)
	m := &nftables.Set{Table: b.table, Anonymous: true, Constant: true, IsMap: true,
		KeyType: nftables.TypeInteger, DataType: data, KeyByteOrder: binaryutil.NativeEndian}
	els := make([]nftables.SetElement, len(backends))
	for i, be := range backends {
		els[i] = nftables.SetElement{Key: binaryutil.NativeEndian.PutUint32(uint32(i)), Val: concatKey(be.IP.AsSlice(), be16(be.Port))}
	}
	b.elements += len(els)
	b.fail(b.c.AddSet(m, els))
	return []expr.Any{
		&expr.Numgen{Register: 1, Modulus: uint32(len(backends)), Type: unix.NFT_NG_RANDOM},
		&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: m.Name, SetID: m.ID},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: family, RegAddrMin: 1, RegProtoMin: protoReg, Specified: true},
	}
}

// pickChain is `numgen random mod N vmap { 0 : goto ep-..., ... }` (affinity services).
func (b *batch) pickChain(p *proxy.Port, backends []proxy.Backend) []expr.Any {
	m := &nftables.Set{Table: b.table, Anonymous: true, Constant: true, IsMap: true,
		KeyType: nftables.TypeInteger, DataType: nftables.TypeVerdict, KeyByteOrder: binaryutil.NativeEndian}
	els := make([]nftables.SetElement, len(backends))
	for i, be := range backends {
		els[i] = nftables.SetElement{Key: binaryutil.NativeEndian.PutUint32(uint32(i)),
			VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: backendChain(p, be)}}
	}
	b.elements += len(els)
	b.fail(b.c.AddSet(m, els))
	return []expr.Any{
		&expr.Numgen{Register: 1, Modulus: uint32(len(backends)), Type: unix.NFT_NG_RANDOM},
		&expr.Lookup{SourceRegister: 1, DestRegister: 0, IsDestRegSet: true, SetName: m.Name, SetID: m.ID},
	}
}

func dnatTo(be proxy.Backend) []expr.Any {
	family := uint32(unix.NFPROTO_IPV4)
	if be.IP.Is6() {
		family = unix.NFPROTO_IPV6
	}
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: be.IP.AsSlice()},
		&expr.Immediate{Register: 2, Data: be16(be.Port)},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: family, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
	}
}

// family matches packets of one address family (in an inet table).
func family(is6 bool) []expr.Any {
	f := byte(unix.NFPROTO_IPV4)
	if is6 {
		f = unix.NFPROTO_IPV6
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{f}},
	}
}

// loadAddr loads the source or destination address into register 1 (family checked).
func loadAddr(is6, dst bool) []expr.Any {
	off, size := uint32(12), uint32(4)
	if is6 {
		off, size = 8, 16
	}
	if dst {
		off += size
	}
	return append(family(is6), &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: size})
}

// vipLookup is `ip daddr . meta l4proto . th dport vmap @m`.
func vipLookup(is6 bool, m string) []expr.Any {
	protoReg, portReg := uint32(9), uint32(10)
	if is6 {
		protoReg, portReg = 12, 13
	}
	return append(loadAddr(is6, true),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: protoReg},
		&expr.Payload{DestRegister: portReg, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: 1, DestRegister: 0, IsDestRegSet: true, SetName: m},
	)
}

// nodePortLookup is `fib daddr type local ip daddr != loopback meta l4proto . th dport vmap @m`.
func nodePortLookup(is6 bool, m string) []expr.Any {
	ex := family(is6)
	ex = append(ex,
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
	)
	if is6 {
		ex = append(ex, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 24, Len: 16},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: netip.IPv6Loopback().AsSlice()})
	} else {
		ex = append(ex, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{127}})
	}
	return append(ex,
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Payload{DestRegister: 9, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: 1, DestRegister: 0, IsDestRegSet: true, SetName: m},
	)
}

// endpointSource is `ip saddr . meta l4proto . th sport @endpoints`.
func endpointSource(is6 bool) []expr.Any {
	protoReg, portReg, set := uint32(9), uint32(10), setEndpoints4
	if is6 {
		protoReg, portReg, set = 12, 13, setEndpoints6
	}
	return append(loadAddr(is6, false),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: protoReg},
		&expr.Payload{DestRegister: portReg, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
		&expr.Lookup{SourceRegister: 1, SetName: set},
	)
}

func setMark(bit uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(^bit), Xor: binaryutil.NativeEndian.PutUint32(bit)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
	}
}

func markIsSet(bit uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(bit), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

func ctStateNewOnly() []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitNEW), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: make([]byte, 4)},
		&expr.Verdict{Kind: expr.VerdictReturn},
	}
}

func jump(chain string) expr.Any { return &expr.Verdict{Kind: expr.VerdictJump, Chain: chain} }

// concatKey lays out a concatenation as nftables does: each part padded to 4 bytes.
func concatKey(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
		if pad := len(p) % 4; pad != 0 {
			out = append(out, make([]byte, 4-pad)...)
		}
	}
	return out
}

func be16(v uint16) []byte {
	b := make([]byte, 2)
	binary.BigEndian.PutUint16(b, v)
	return b
}
