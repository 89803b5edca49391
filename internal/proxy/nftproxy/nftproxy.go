// Package nftproxy programs a proxy.State into weft's own nftables table (inet weft-svc)
// over netlink, in the shape of kube-proxy's nftables mode:
//
//   - one verdict-map lookup on daddr . l4proto . dport for every service (O(1) in the
//     number of services), and one on l4proto . dport for node ports on local addresses;
//   - a chain per service port and family: hairpin mark, ClientIP affinity (per-backend
//     dynamic sets with a timeout), then `dnat to numgen random mod N map {...}`;
//   - services without endpoints are in a second pair of maps whose verdict rejects new
//     connections at once (TCP reset, ICMP port unreachable) from the nat chain itself;
//   - a set of every service endpoint: packets from one, and packets to one on a pod, are
//     marked at raw priority so weft-nat's pod-to-pod notrack leaves them to conntrack
//     (the replies' reverse NAT, and both directions of a connection made straight to
//     an endpoint).
//
// The first sync (and any sync after a failure) replaces the whole table in one
// transaction; later syncs send only the difference, also as one transaction: a change to
// one service touches only that service's chains and map elements.
package nftproxy

import (
	"fmt"
	"net/netip"
	"os"
	"slices"
	"sort"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/dataplane"
	"github.com/weftnet/weft/internal/nftexpr"
	"github.com/weftnet/weft/internal/proxy"
)

// Proxy keeps the table converged with the states it is given. Not safe for concurrent
// use: one reconcile loop drives it.
type Proxy struct {
	applied *proxy.State // nil: the next sync replaces the whole table
	table   *nftables.Table
	sets    map[string]*nftables.Set
	slots   *slots
	netns   int // a network namespace fd, or -1: the calling thread's
	// external: masquerade connections to service addresses from outside the cluster
	// (set by MasqueradeExternal).
	external *externalNets
	// maglev: node port rules take the backend the node port balancer (tc) marked
	// before picking one at random (set by UseMaglevMarks).
	maglev bool
	// podNets: connections from these (the cluster's pods) to load balancer addresses
	// go to the service's internal backends (set by PodNetworks).
	podNets []netip.Prefix
}

// PodNetworks names the cluster's pod networks: their connections to a load balancer
// address are short-circuited to the service's internal backends, unmasqueraded, as
// kube-proxy does. It takes effect at the next full sync.
func (p *Proxy) PodNetworks(cidrs []netip.Prefix) {
	p.podNets = slices.Clone(cidrs)
	p.applied = nil
}

type externalNets struct{ cluster, services []netip.Prefix }

// MasqueradeExternal makes connections to the service networks from outside the cluster
// (a source neither in the cluster's pod networks nor the node's own) be masqueraded, as
// kube-proxy does: a router may send them to any node (BGP announces service addresses),
// and the backend's replies must come back through the node that translated them. It
// takes effect at the next full sync.
func (p *Proxy) MasqueradeExternal(cluster, services []netip.Prefix) {
	p.external = &externalNets{cluster: cluster, services: services}
	p.applied = nil
}

// New returns a proxy for the calling thread's network namespace.
func New() *Proxy {
	return &Proxy{table: &nftables.Table{Family: nftables.TableFamilyINet, Name: dataplane.TableServices}, netns: -1}
}

// NewIn returns a proxy for the network namespace open at fd, usable from any goroutine
// (only the netlink socket is opened in the namespace).
func NewIn(fd int) *Proxy {
	p := New()
	p.netns = fd
	return p
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
	opts := []nftables.ConnOption{nftables.WithSockOptions(bigBuffers)}
	if p.netns >= 0 {
		opts = append(opts, nftables.WithNetNSFd(p.netns))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return Stats{}, fmt.Errorf("nftables: %w", err)
	}
	b := &batch{c: c, table: p.table, maglev: p.maglev, podNets: p.podNets}
	st := Stats{Ports: len(want.Ports), Endpoints: len(want.Endpoints)}
	if p.applied == nil {
		st.Full = true
		p.slots = newSlots()
		b.slots = p.slots
		b.replaceTable()
		p.sets = b.staticObjects(p.external)
		b.sets = p.sets
		for _, id := range sortedIDs(want.Ports) {
			b.addPort(want.Ports[id])
			st.Changed++
		}
		b.endpoints(nil, want.Endpoints)
	} else {
		b.sets, b.slots = p.sets, p.slots
		old := p.applied
		for id, o := range old.Ports {
			if _, ok := want.Ports[id]; !ok {
				b.removePort(o)
				st.Changed++
			}
		}
		for id, n := range want.Ports {
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
		st.Removed = b.removed
	}
	b.flushPending()
	if b.err != nil {
		p.applied = nil
		return st, b.err
	}
	fs := time.Now()
	defer func() {
		if os.Getenv("WEFT_NFT_DEBUG") != "" {
			fmt.Fprintf(os.Stderr, "flush %v\n", time.Since(fs))
		}
	}()
	if err := c.Flush(); err != nil {
		p.applied = nil
		return st, fmt.Errorf("apply table %s: %w", dataplane.TableServices, err)
	}
	st.Elements, st.Rules = b.elements, b.rules
	p.applied = &want
	return st, nil
}

// bigBuffers lets one transaction carry tens of thousands of services: the whole batch
// goes in one sendmsg (the kernel applies a batch per message, atomically) and every
// message is acknowledged. The default socket buffers (~200 KiB) hold a few hundred
// services. The *FORCE options (CAP_NET_ADMIN, which weftd has) pass the sysctl limits;
// they bound the buffers, they do not allocate them.
func bigBuffers(c *netlink.Conn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		for _, opt := range []int{unix.SO_SNDBUFFORCE, unix.SO_RCVBUFFORCE} {
			if e := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, 256<<20); e != nil && serr == nil {
				serr = e
			}
		}
	}); err != nil {
		return err
	}
	return serr
}

// UseMaglevMarks makes the node port rules DNAT a packet the node port balancer marked
// (dataplane.MarkMaglev | index) to the backend of that index, and only unmarked packets
// to a random one. It takes effect when the table is next written whole.
func (p *Proxy) UseMaglevMarks() {
	p.maglev = true
	p.applied = nil
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
	mapAffinity4  = "affinity4"  // ipv4_addr . inet_proto . inet_service : verdict (ClientIP ports)
	mapAffinity6  = "affinity6"  //
	mapNPVerdict4 = "nodeports4" // inet_proto . inet_service : verdict (affinity ports, and drop)
	mapNPVerdict6 = "nodeports6" //
	mapNoEP4      = "no-endpoints4"
	mapNoEP6      = "no-endpoints6"
	mapNoEPNP4    = "no-endpoint-nodeports4"
	mapNoEPNP6    = "no-endpoint-nodeports6"
	mapPick       = "pick"       // slot : verdict (the backend chains of affinity ports)
	setEndpoints4 = "endpoints4" // ipv4_addr . inet_proto . inet_service
	setEndpoints6 = "endpoints6"
	setHairpin4   = "hairpin4" // ipv4_addr . ipv4_addr: each endpoint address twice
	setHairpin6   = "hairpin6"

	chainServices = "services"
	chainCounts   = "service-counts" // the per-count rules of service addresses
	chainPodLB    = "pod-lb-counts"  // the same for pods' connections to load balancer addresses
	chainNodePort = "nodeports"      // node ports (after one local-address check)
	chainReject   = "reject"

	// The raw chain's endpoint lookups, per family, for packets within a pod network.
	chainRawEndpoints4 = "raw-endpoints4"
	chainRawEndpoints6 = "raw-endpoints6"
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
	slots    *slots
	err      error
	elements int
	rules    int
	removed  []proxy.Key // backends that left changed ports (for conntrack cleanup)
	pending  []pendingElements
	maglev   bool           // see Proxy.UseMaglevMarks
	podNets  []netip.Prefix // see Proxy.PodNetworks
}

// pendingElements are element additions sent at the end of the transaction.
type pendingElements struct {
	set *nftables.Set
	els []nftables.SetElement
}

func (b *batch) later(s *nftables.Set, els []nftables.SetElement) {
	if len(els) > 0 {
		b.pending = append(b.pending, pendingElements{s, els})
	}
}

// flushPending sends the deferred element additions, merged per set into full messages.
func (b *batch) flushPending() {
	bySet := map[*nftables.Set][]nftables.SetElement{}
	var order []*nftables.Set
	for _, p := range b.pending {
		if _, ok := bySet[p.set]; !ok {
			order = append(order, p.set)
		}
		bySet[p.set] = append(bySet[p.set], p.els...)
	}
	for _, s := range order {
		b.addElements(s, bySet[s])
	}
	b.pending = nil
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

func (b *batch) staticObjects(ext *externalNets) map[string]*nftables.Set {
	sets := map[string]*nftables.Set{}
	key4 := concat(b, nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)
	key6 := concat(b, nftables.TypeIP6Addr, nftables.TypeInetProto, nftables.TypeInetService)
	keyNP := concat(b, nftables.TypeInetProto, nftables.TypeInetService)
	for name, key := range map[string]nftables.SetDatatype{
		mapAffinity4: key4, mapAffinity6: key6, mapNPVerdict4: keyNP, mapNPVerdict6: keyNP,
		mapNoEP4: key4, mapNoEP6: key6, mapNoEPNP4: keyNP, mapNoEPNP6: keyNP,
	} {
		s := &nftables.Set{Table: b.table, Name: name, IsMap: true, KeyType: key, DataType: nftables.TypeVerdict}
		b.fail(b.c.AddSet(s, nil))
		sets[name] = s
	}
	pick := &nftables.Set{Table: b.table, Name: mapPick, IsMap: true, KeyType: nftables.TypeInteger, DataType: nftables.TypeVerdict, KeyByteOrder: binaryutil.NativeEndian}
	b.fail(b.c.AddSet(pick, nil))
	sets[mapPick] = pick
	for name, key := range map[string]nftables.SetDatatype{
		setEndpoints4: key4, setEndpoints6: key6,
		setHairpin4: concat(b, nftables.TypeIPAddr, nftables.TypeIPAddr), setHairpin6: concat(b, nftables.TypeIP6Addr, nftables.TypeIP6Addr),
	} {
		s := &nftables.Set{Table: b.table, Name: name, KeyType: key}
		b.fail(b.c.AddSet(s, nil))
		sets[name] = s
	}
	base := func(name string, typ nftables.ChainType, hook *nftables.ChainHook, prio *nftables.ChainPriority) {
		b.c.AddChain(&nftables.Chain{Name: name, Table: b.table, Type: typ, Hooknum: hook, Priority: prio})
	}
	for _, name := range []string{chainServices, chainCounts, chainPodLB, chainNodePort, chainReject} {
		b.c.AddChain(b.chain(name))
	}
	base("nat-prerouting", nftables.ChainTypeNAT, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest)
	base("nat-output", nftables.ChainTypeNAT, nftables.ChainHookOutput, nftables.ChainPriorityNATDest)
	base("nat-postrouting", nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource)
	raw := nftables.ChainPriority(dataplane.PriorityServicesRaw)
	base("raw-prerouting", nftables.ChainTypeFilter, nftables.ChainHookPrerouting, &raw)
	b.rule("nat-prerouting", jump(chainServices))
	b.rule("nat-output", jump(chainServices))
	// The services chain (nat: the first packet of a connection only), cheapest first:
	// service addresses (one rule per backend count in use, in service-counts, see
	// ports.go), affinity ports, services without endpoints (refused here, before routing,
	// which may have no route for a VIP and drop it silently), then node ports behind a
	// single local-address check.
	if ext != nil {
		for _, svc := range ext.services {
			b.rule(chainServices, externalToService(svc, ext.cluster)...)
		}
	}
	for _, c := range b.podNets {
		// From a pod: its load balancer addresses first (pod-lb-counts returns on a miss).
		b.rule(chainServices, append(append(nftexpr.LoadAddr(c.Addr().Is6(), false), nftexpr.InPrefix(c, expr.CmpOpEq)...), jump(chainPodLB))...)
	}
	b.rule(chainServices, jump(chainCounts))
	b.rule(chainServices, vipLookup(false, mapAffinity4)...)
	b.rule(chainServices, vipLookup(true, mapAffinity6)...)
	b.rule(chainServices, vipLookup(false, mapNoEP4)...)
	b.rule(chainServices, vipLookup(true, mapNoEP6)...)
	b.rule(chainServices, append(localNotLoopback(false), jump(chainNodePort))...)
	b.rule(chainServices, append(localNotLoopback(true), jump(chainNodePort))...)
	b.rule(chainNodePort, nodePortKeyLookup(mapNPVerdict4, false)...)
	b.rule(chainNodePort, nodePortKeyLookup(mapNPVerdict6, true)...)
	b.rule(chainNodePort, nodePortKeyLookup(mapNoEPNP4, false)...)
	b.rule(chainNodePort, nodePortKeyLookup(mapNoEPNP6, true)...)
	b.rule("nat-postrouting", append(nftexpr.MarkIsSet(dataplane.MarkMasq), &expr.Masq{})...)
	// Hairpin: a DNATed connection whose backend is its own client (source = destination)
	// is masqueraded, so the answer comes back through the node.
	b.rule("nat-postrouting", hairpin(false)...)
	b.rule("nat-postrouting", hairpin(true)...)
	b.rawEndpoints()

	b.rule(chainReject,
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Reject{Type: unix.NFT_REJECT_TCP_RST})
	b.rule(chainReject, &expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH})
	return sets
}

// rawEndpoints fills the raw chain, which keeps weft-nat's pod-to-pod notrack off the
// packets of connections that involve a service endpoint's port, with MarkTracked: packets
// from one (the replies of DNATed connections, which conntrack must translate back) and
// packets to one on a pod (so conntrack sees both directions of a connection made
// straight to an endpoint; with its replies alone tracked, such connections stalled now
// and then). The notrack applies only to packets between two addresses of one pod
// network, so only those are looked up (a connection's packets to a service address, and
// anything to or from outside, pass with one prefix test); the mark also exempts from
// masquerade, which a pod's connection to an endpoint outside the cluster needs. Without
// the pod networks, every packet from an endpoint is marked.
func (b *batch) rawEndpoints() {
	if len(b.podNets) == 0 {
		for _, is6 := range []bool{false, true} {
			b.rule("raw-prerouting", append(endpointSource(is6), nftexpr.SetMark(dataplane.MarkTracked)...)...)
		}
		return
	}
	for _, is6 := range []bool{false, true} {
		ch := chainRawEndpoints4
		if is6 {
			ch = chainRawEndpoints6
		}
		b.c.AddChain(b.chain(ch))
		mark := append(nftexpr.SetMark(dataplane.MarkTracked), &expr.Verdict{Kind: expr.VerdictReturn})
		b.rule(ch, append(endpointLookup(is6, false), mark...)...)
		b.rule(ch, append(endpointLookup(is6, true), mark...)...)
	}
	for _, c := range b.podNets {
		ch := chainRawEndpoints4
		if c.Addr().Is6() {
			ch = chainRawEndpoints6
		}
		b.rule("raw-prerouting", append(nftexpr.WithinPrefix(c), jump(ch))...)
	}
}

func concat(b *batch, types ...nftables.SetDatatype) nftables.SetDatatype {
	t, err := nftables.ConcatSetType(types...)
	b.fail(err)
	return t
}

// elementsPerMessage keeps each element message's nested list under netlink's 64 KiB
// attribute length (an element is up to ~100 bytes here).
const elementsPerMessage = 256

// addElements and delElements send els to s in messages of at most elementsPerMessage.
func (b *batch) addElements(s *nftables.Set, els []nftables.SetElement) {
	b.chunked(b.c.SetAddElements, s, els)
}

func (b *batch) delElements(s *nftables.Set, els []nftables.SetElement) {
	b.chunked(b.c.SetDeleteElements, s, els)
}

func (b *batch) chunked(send func(*nftables.Set, []nftables.SetElement) error, s *nftables.Set, els []nftables.SetElement) {
	for len(els) > 0 {
		n := min(len(els), elementsPerMessage)
		b.elements += n
		b.fail(send(s, els[:n]))
		els = els[n:]
	}
}

// endpoints makes the endpoint and hairpin sets hold want (old: what they hold now). Both
// lists are sorted (proxy.State's contract), so the difference is one merge, without
// building maps of every endpoint on each sync.
func (b *batch) endpoints(old, want []proxy.Key) {
	add, del := diffSorted(old, want, proxy.KeyLess)
	split := func(keys []proxy.Key) (v4, v6 []nftables.SetElement) {
		for _, k := range keys {
			el := nftables.SetElement{Key: concatKey(k.IP.AsSlice(), []byte{k.Proto}, nftexpr.BE16(k.Port))}
			if k.IP.Is4() {
				v4 = append(v4, el)
			} else {
				v6 = append(v6, el)
			}
		}
		return v4, v6
	}
	del4, del6 := split(del)
	add4, add6 := split(add)
	b.delElements(b.sets[setEndpoints4], del4)
	b.delElements(b.sets[setEndpoints6], del6)
	b.addElements(b.sets[setEndpoints4], add4)
	b.addElements(b.sets[setEndpoints6], add6)

	// Hairpin pairs: one per distinct endpoint address (the keys are sorted by address).
	addAddrs, delAddrs := diffSorted(distinctAddrs(old), distinctAddrs(want), netip.Addr.Less)
	pairs := func(addrs []netip.Addr) (v4, v6 []nftables.SetElement) {
		for _, a := range addrs {
			el := nftables.SetElement{Key: concatKey(a.AsSlice(), a.AsSlice())}
			if a.Is4() {
				v4 = append(v4, el)
			} else {
				v6 = append(v6, el)
			}
		}
		return v4, v6
	}
	del4, del6 = pairs(delAddrs)
	add4, add6 = pairs(addAddrs)
	b.delElements(b.sets[setHairpin4], del4)
	b.delElements(b.sets[setHairpin6], del6)
	b.addElements(b.sets[setHairpin4], add4)
	b.addElements(b.sets[setHairpin6], add6)
}

func distinctAddrs(keys []proxy.Key) []netip.Addr {
	var out []netip.Addr
	for i, k := range keys {
		if i == 0 || k.IP != keys[i-1].IP {
			out = append(out, k.IP)
		}
	}
	return out
}

// diffSorted returns what want has and old lacks (add), and the reverse (del), for two
// slices sorted by less.
func diffSorted[T comparable](old, want []T, less func(a, b T) bool) (add, del []T) {
	i, j := 0, 0
	for i < len(old) && j < len(want) {
		switch {
		case old[i] == want[j]:
			i++
			j++
		case less(old[i], want[j]):
			del = append(del, old[i])
			i++
		default:
			add = append(add, want[j])
			j++
		}
	}
	return append(add, want[j:]...), append(del, old[i:]...)
}
