package nftproxy

import (
	"fmt"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/dataplane"
	"github.com/weftnet/weft/internal/nftexpr"
	"github.com/weftnet/weft/internal/proxy"
)

// How a service port is programmed, and why this shape.
//
// A port with N backends is N elements of one map, "svc4-nN" (or svc6-nN): the key is
// the port's address . protocol . port . index, the value a backend's address . port.
// The services chain holds one rule per backend count in use:
//
//	ip daddr . meta l4proto . th dport . numgen random mod N  →  @svc4-nN  →  dnat
//
// so a new connection costs one hash lookup per count in use, whatever the number of
// services. Node ports are the same with protocol . node port . index ("np4-nN", and
// "npm4-nN" for the masqueraded externalTrafficPolicy Cluster). Measured reasons:
//   - no chain, rule or set per port: the kernel keeps a table's sets in a list (naming
//     anonymous sets and finding sets by name or transaction ID scan it), walks a map's
//     elements each time another chain binds it, and checks every binding chain for each
//     element added; shapes with a set or a map lookup per port made a full load of
//     10,000 services quadratic (54 s, then 20 s). Here it is one batch of elements.
//   - any change to a port, even one that changes its backend count, is elements moving
//     between maps: no rule is touched, so the kernel never re-validates the table (it
//     does so after any rule with a verdict or a DNAT is added). A rule is added only when
//     the first port with a new backend count appears.
// Ports with ClientIP affinity keep kube-proxy's shape (a chain and a timeout set per
// backend, reached through the verdict map affinity4/6), which affinity needs.

// slotSpan is the room each affinity port has in the pick map.
const slotSpan = 1 << 12

// slots hands out ranges of the pick map to affinity ports, stable while a port lives.
type slots struct {
	byName map[string]uint32
	free   []uint32
	next   uint32
}

func newSlots() *slots { return &slots{byName: map[string]uint32{}} }

func (s *slots) base(name string) uint32 {
	if i, ok := s.byName[name]; ok {
		return i * slotSpan
	}
	var i uint32
	if n := len(s.free); n > 0 {
		i, s.free = s.free[n-1], s.free[:n-1]
	} else {
		i = s.next
		s.next++
	}
	s.byName[name] = i
	return i * slotSpan
}

func (s *slots) release(name string) {
	if i, ok := s.byName[name]; ok {
		delete(s.byName, name)
		s.free = append(s.free, i)
	}
}

// countMap names a per-count map: kind "svc", "svcm" (masquerading), "svcp" (pods to load
// balancer addresses), "np" or "npm", family, count.
type countMap struct {
	kind string
	is6  bool
	n    int
}

// byAddress says the map's key starts with the destination address (else it is a node
// port's: protocol . port).
func (m countMap) byAddress() bool { return m.kind == "svc" || m.kind == "svcm" || m.kind == "svcp" }

// masquerades says the map's rule marks the connection for masquerade.
func (m countMap) masquerades() bool { return m.kind == "npm" || m.kind == "svcm" }

func (m countMap) name() string {
	f := "4"
	if m.is6 {
		f = "6"
	}
	return fmt.Sprintf("%s%s-n%d", m.kind, f, m.n)
}

// elem is one element of a plan: a key in a map, with data or a verdict.
type elem struct {
	set  string
	key  string // bytes as a string
	data string // bytes as a string ("" for a verdict)
	verd expr.Verdict
}

// plan is everything a port programs.
type plan struct {
	elems    map[[2]string]elem // (set, key) → element
	counts   []countMap         // per-count maps the elements use
	affinity map[string]proxy.Backend
	svcRule  bool // affinity: the svc chain's rules
	npRule   bool // affinity with NodePort: the np chain
	npMasq   bool
	npBase   uint32
	npN      int
}

func (pl *plan) add(e elem) { pl.elems[[2]string{e.set, e.key}] = e }

func backendData(be proxy.Backend) string {
	return string(concatKey(be.IP.AsSlice(), nftexpr.BE16(be.Port)))
}

func index(i int) []byte { return binaryutil.NativeEndian.PutUint32(uint32(i)) }

func (b *batch) planOf(p *proxy.Port) plan {
	pl := plan{elems: map[[2]string]elem{}, affinity: map[string]proxy.Backend{}}
	is6 := p.Is6()
	affMap, npVerdict, noEP, noEPNP := mapAffinity4, mapNPVerdict4, mapNoEP4, mapNoEPNP4
	if is6 {
		affMap, npVerdict, noEP, noEPNP = mapAffinity6, mapNPVerdict6, mapNoEP6, mapNoEPNP6
	}
	vip := concatKey(p.VIP.AsSlice(), []byte{p.Proto}, nftexpr.BE16(p.Port))
	backends := p.Backends
	switch {
	case len(backends) == 0 && p.DropIfEmpty:
		pl.add(elem{set: noEP, key: string(vip), verd: expr.Verdict{Kind: expr.VerdictDrop}})
	case len(backends) == 0:
		pl.add(elem{set: noEP, key: string(vip), verd: expr.Verdict{Kind: expr.VerdictGoto, Chain: chainReject}})
	case p.Affinity != 0:
		backends = capped(backends)
		pl.add(elem{set: affMap, key: string(vip), verd: expr.Verdict{Kind: expr.VerdictGoto, Chain: svcChain(p)}})
		pl.svcRule = true
		base := b.slots.base(p.ID)
		for i, be := range backends {
			pl.add(elem{set: mapPick, key: string(index(int(base) + i)), verd: expr.Verdict{Kind: expr.VerdictGoto, Chain: backendChain(p, be)}})
			pl.affinity[proxy.BackendID(p, be)] = be
		}
	default:
		kind := "svc"
		if p.Masquerade {
			kind = "svcm" // a load balancer address under policy Cluster
		}
		m := countMap{kind, is6, len(backends)}
		pl.counts = append(pl.counts, m)
		for i, be := range backends {
			pl.add(elem{set: m.name(), key: string(append(append([]byte(nil), vip...), index(i)...)), data: backendData(be)})
		}
	}
	if p.LoadBalancer && len(b.podNets) > 0 && len(p.PodBackends) > 0 && p.Affinity == 0 {
		m := countMap{"svcp", is6, len(p.PodBackends)}
		pl.counts = append(pl.counts, m)
		for i, be := range p.PodBackends {
			pl.add(elem{set: m.name(), key: string(append(append([]byte(nil), vip...), index(i)...)), data: backendData(be)})
		}
	}
	if p.NodePort == 0 {
		return pl
	}
	np := concatKey([]byte{p.Proto}, nftexpr.BE16(p.NodePort))
	npBackends := p.NodePortBackends
	switch {
	case len(npBackends) > 0 && p.Affinity != 0:
		// Through its own chain: masquerade (policy Cluster), then the affinity chain,
		// or for policy Local a pick among the local backends without affinity.
		pl.add(elem{set: npVerdict, key: string(np), verd: expr.Verdict{Kind: expr.VerdictGoto, Chain: nodePortChain(p)}})
		pl.npRule, pl.npMasq = true, !p.ExternalLocal
		if !sameBackends(backends, npBackends) {
			npBackends = capped(npBackends)
			pl.npBase, pl.npN = b.slots.base(p.ID+"/np"), len(npBackends)
			for i, be := range npBackends {
				pl.add(elem{set: mapPick, key: string(index(int(pl.npBase) + i)), verd: expr.Verdict{Kind: expr.VerdictGoto, Chain: backendChain(p, be)}})
				pl.affinity[proxy.BackendID(p, be)] = be
			}
		}
	case len(npBackends) > 0:
		kind := "np"
		if !p.ExternalLocal {
			kind = "npm" // from outside under policy Cluster: masquerade, so replies come back this way
		}
		m := countMap{kind, is6, len(npBackends)}
		pl.counts = append(pl.counts, m)
		for i, be := range npBackends {
			pl.add(elem{set: m.name(), key: string(append(append([]byte(nil), np...), index(i)...)), data: backendData(be)})
		}
	case p.ExternalLocal && len(backends) > 0:
		// Endpoints exist, none on this node: traffic policy Local drops it here (a load
		// balancer's health check sends it to a node that has one).
		pl.add(elem{set: npVerdict, key: string(np), verd: expr.Verdict{Kind: expr.VerdictDrop}})
	default:
		pl.add(elem{set: noEPNP, key: string(np), verd: expr.Verdict{Kind: expr.VerdictGoto, Chain: chainReject}})
	}
	return pl
}

func capped(bs []proxy.Backend) []proxy.Backend {
	if len(bs) > slotSpan {
		return bs[:slotSpan]
	}
	return bs
}

// addPort programs a port.
func (b *batch) addPort(p *proxy.Port) { b.apply(p, plan{}, b.planOf(p), false) }

// removePort deletes a port's elements (and affinity chains).
func (b *batch) removePort(p *proxy.Port) {
	b.apply(p, b.planOf(p), plan{}, true)
	b.slots.release(p.ID)
	b.slots.release(p.ID + "/np")
	for _, be := range allBackends(p) {
		b.removed = append(b.removed, proxy.Key{IP: be.IP, Proto: p.Proto, Port: be.Port})
	}
}

// allBackends are every backend a port's elements DNAT to.
func allBackends(p *proxy.Port) []proxy.Backend {
	return slices.Concat(p.Backends, p.NodePortBackends, p.PodBackends)
}

// changePort sends only the difference between two versions of a port.
func (b *batch) changePort(o, n *proxy.Port) {
	if o.Affinity != n.Affinity || o.VIP != n.VIP || o.Port != n.Port || o.Proto != n.Proto || o.Masquerade != n.Masquerade {
		b.removePort(o)
		b.addPort(n)
		return
	}
	b.apply(n, b.planOf(o), b.planOf(n), false)
	keep := map[proxy.Key]bool{}
	for _, be := range allBackends(n) {
		keep[proxy.Key{IP: be.IP, Proto: n.Proto, Port: be.Port}] = true
	}
	for _, be := range allBackends(o) {
		if k := (proxy.Key{IP: be.IP, Proto: o.Proto, Port: be.Port}); !keep[k] {
			b.removed = append(b.removed, k)
		}
	}
}

// apply turns plan old into plan new for port p; gone says the port goes.
func (b *batch) apply(p *proxy.Port, old, new plan, gone bool) {
	is6 := p.Is6()
	// 1. Elements that change or go (an element's data cannot be updated in place),
	// before any chain they point at goes.
	dels := map[string][]nftables.SetElement{}
	for k, e := range old.elems {
		if ne, ok := new.elems[k]; !ok || ne != e {
			dels[e.set] = append(dels[e.set], nftables.SetElement{Key: []byte(e.key)})
		}
	}
	for set, els := range dels {
		b.delElements(b.setNamed(set), els)
	}
	// 2. Affinity chains: rewritten when their backends change.
	svcChanged := old.svcRule != new.svcRule || !sameKeys(old.affinity, new.affinity) || old.npN != new.npN
	npChanged := old.npRule != new.npRule || old.npMasq != new.npMasq || old.npN != new.npN || old.npBase != new.npBase
	if old.svcRule && (gone || svcChanged) {
		b.c.FlushChain(b.chain(svcChain(p)))
	}
	if old.npRule && (gone || npChanged) {
		b.c.FlushChain(b.chain(nodePortChain(p)))
		if gone || !new.npRule {
			b.c.DelChain(b.chain(nodePortChain(p)))
		}
	}
	for id, be := range old.affinity {
		if _, ok := new.affinity[id]; !ok || gone {
			b.c.FlushChain(b.chain(backendChain(p, be)))
			b.c.DelChain(b.chain(backendChain(p, be)))
			b.c.DelSet(&nftables.Set{Table: b.table, Name: affinitySet(p, be)})
		}
	}
	if old.svcRule && (gone || !new.svcRule) {
		b.c.DelChain(b.chain(svcChain(p)))
	}
	if gone {
		return
	}
	// 3. What new adds: maps for new counts, chains, then elements (at the end of the
	// transaction), then rules.
	for _, m := range new.counts {
		b.ensureCountMap(m)
	}
	if new.svcRule && !old.svcRule {
		b.c.AddChain(b.chain(svcChain(p)))
	}
	if new.npRule && !old.npRule {
		b.c.AddChain(b.chain(nodePortChain(p)))
	}
	for id, be := range new.affinity {
		if _, ok := old.affinity[id]; !ok {
			b.affinityBackend(p, be)
		}
	}
	for k, e := range new.elems {
		if oe, ok := old.elems[k]; !ok || oe != e {
			b.addElem(e)
		}
	}
	if new.svcRule && (!old.svcRule || svcChanged) {
		if p.Masquerade {
			b.rule(svcChain(p), nftexpr.SetMark(dataplane.MarkMasq)...)
		}
		for _, be := range capped(p.Backends) {
			b.rule(svcChain(p), append(nftexpr.LoadAddr(is6, false),
				&expr.Lookup{SourceRegister: 1, SetName: affinitySet(p, be)},
				&expr.Verdict{Kind: expr.VerdictGoto, Chain: backendChain(p, be)})...)
		}
		b.rule(svcChain(p), pickVerdict(len(capped(p.Backends)), b.slots.base(p.ID))...)
	}
	if new.npRule && (!old.npRule || npChanged) {
		if new.npMasq {
			b.rule(nodePortChain(p), nftexpr.SetMark(dataplane.MarkMasq)...)
		}
		if new.npN == 0 {
			b.rule(nodePortChain(p), &expr.Verdict{Kind: expr.VerdictGoto, Chain: svcChain(p)})
		} else {
			b.rule(nodePortChain(p), pickVerdict(new.npN, new.npBase)...)
		}
	}
}

func (b *batch) addElem(e elem) {
	s := b.setNamed(e.set)
	el := nftables.SetElement{Key: []byte(e.key)}
	if e.data != "" {
		el.Val = []byte(e.data)
	} else {
		v := e.verd
		el.VerdictData = &v
	}
	b.later(s, []nftables.SetElement{el})
}

// setNamed is a static set or a per-count map.
func (b *batch) setNamed(name string) *nftables.Set {
	if s, ok := b.sets[name]; ok {
		return s
	}
	b.fail(fmt.Errorf("no set %s", name))
	return &nftables.Set{Table: b.table, Name: name}
}

// ensureCountMap creates a per-count map and its rule in the services chain the first
// time a port needs it.
func (b *batch) ensureCountMap(m countMap) {
	if _, ok := b.sets[m.name()]; ok {
		return
	}
	addr, addrLen := nftables.TypeIPAddr, uint32(4)
	if m.is6 {
		addr, addrLen = nftables.TypeIP6Addr, 16
	}
	var key nftables.SetDatatype
	if m.byAddress() {
		key = concat(b, addr, nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeInteger)
	} else {
		key = concat(b, nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeInteger)
	}
	s := &nftables.Set{Table: b.table, Name: m.name(), IsMap: true, KeyType: key,
		DataType: concat(b, addr, nftables.TypeInetService)}
	b.fail(b.c.AddSet(s, nil))
	b.sets[m.name()] = s

	natFamily, protoReg := uint32(unix.NFPROTO_IPV4), uint32(9)
	if m.is6 {
		natFamily, protoReg = unix.NFPROTO_IPV6, 12
	}
	var ex []expr.Any
	if m.byAddress() {
		// ip daddr . meta l4proto . th dport . numgen random mod N
		next := 8 + addrLen/4
		ex = append(nftexpr.LoadAddr(m.is6, true),
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: next},
			&expr.Payload{DestRegister: next + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Numgen{Register: next + 2, Modulus: uint32(m.n), Type: unix.NFT_NG_RANDOM})
	} else {
		// (in the nodeports chain, past the local-address check)
		// meta l4proto . th dport . numgen random mod N
		ex = append(nftexpr.Family(m.is6),
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 8},
			&expr.Payload{DestRegister: 9, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Numgen{Register: 10, Modulus: uint32(m.n), Type: unix.NFT_NG_RANDOM})
	}
	chain := chainNodePort
	switch {
	case m.kind == "svcp":
		chain = chainPodLB
	case m.byAddress():
		chain = chainCounts
	}
	if b.maglev && m.kind != "svcp" { // (pods' packets never carry the balancer's mark)
		// The same key with the node port balancer's choice as the index, for packets it
		// marked (from outside: node ports, and service addresses routers send here):
		// meta mark & MarkMaglev == MarkMaglev
		// [ip daddr .] meta l4proto . th dport . meta mark & MaglevIndexMask
		mark := append(nftexpr.Family(m.is6),
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(dataplane.MarkMaglev), Xor: make([]byte, 4)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(dataplane.MarkMaglev)})
		next := uint32(8)
		if m.byAddress() {
			mark = append(mark, nftexpr.LoadAddrSameFamily(m.is6, true)...)
			next += addrLen / 4
		}
		mark = append(mark,
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: next},
			&expr.Payload{DestRegister: next + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Meta{Key: expr.MetaKeyMARK, Register: next + 2},
			&expr.Bitwise{SourceRegister: next + 2, DestRegister: next + 2, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(dataplane.MaglevIndexMask), Xor: make([]byte, 4)})
		b.rule(chain, b.lookupAndDNAT(mark, s, m, natFamily, protoReg)...)
	}
	b.rule(chain, b.lookupAndDNAT(ex, s, m, natFamily, protoReg)...)
}

// lookupAndDNAT ends a count map's rule: look the key up in the map, DNAT to the result.
func (b *batch) lookupAndDNAT(ex []expr.Any, s *nftables.Set, m countMap, natFamily, protoReg uint32) []expr.Any {
	ex = append(ex, &expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: s.Name})
	if m.masquerades() {
		ex = append(ex, nftexpr.SetMarkVia(16, dataplane.MarkMasq)...)
	}
	return append(ex, &expr.NAT{Type: expr.NATTypeDestNAT, Family: natFamily, RegAddrMin: 1, RegProtoMin: protoReg, Specified: true})
}

func sameKeys(a, b map[string]proxy.Backend) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if _, ok := b[k]; !ok {
			return false
		}
	}
	return true
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
	b.rule(backendChain(p, be), append(nftexpr.LoadAddr(is6, false),
		&expr.Dynset{SrcRegKey: 1, SetName: s.Name, Operation: unix.NFT_DYNSET_OP_UPDATE, Timeout: p.Affinity})...)
	b.rule(backendChain(p, be), dnatTo(be)...)
}

// pickVerdict is `numgen random mod n offset base vmap @pick` (affinity ports).
func pickVerdict(n int, base uint32) []expr.Any {
	return []expr.Any{
		&expr.Numgen{Register: 1, Modulus: uint32(n), Type: unix.NFT_NG_RANDOM, Offset: base},
		&expr.Lookup{SourceRegister: 1, DestRegister: 0, IsDestRegSet: true, SetName: mapPick},
	}
}
