// Package antispoof keeps every pod to its own addresses and MAC: a frame a pod sends
// from another source is dropped (and logged) where it enters the node, before conntrack,
// the service proxy and the policy table see it.
//
// Pods on a bridge are checked in a bridge-family table (their frames are switched, and
// the ARP they send must not claim another pod's address); ptp pods, whose traffic is
// routed, in an inet-family table. Both dispatch on the input interface through a verdict
// map to one chain per pod, so the drop counters and the log name the pod. The eBPF fast
// path, which would carry a frame past both, checks the same thing itself (package
// fastpath) and leaves anything it cannot vouch for to this table.
package antispoof

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/dataplane"
	"github.com/weftnet/weft/internal/nftexpr"
)

// Port is one pod attachment as the node sees it: the host end of its veth, and what the
// pod may send from.
type Port struct {
	ID     string // short and unique on the node: names the chain ("s-ID") and the log prefix
	IfName string // the host veth
	MAC    net.HardwareAddr
	IPs    []netip.Addr
}

// ChainPrefix starts the name of every pod's chain (and its log prefix).
const ChainPrefix = "s-"

// LogRate bounds the logged drops per pod and second; the rest are only counted.
const LogRate = 20

var families = []nftables.TableFamily{nftables.TableFamilyBridge, nftables.TableFamilyINet}

// Apply replaces both tables with ports in the network namespace open at nsFd (-1: the
// calling thread's), in one transaction. No ports: no tables.
func Apply(ports []Port, nsFd int, logGroup uint16) error {
	c, err := nftexpr.Conn(nsFd)
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	ports = append([]Port(nil), ports...)
	sort.Slice(ports, func(i, j int) bool { return ports[i].IfName < ports[j].IfName })
	for _, fam := range families {
		t := &nftables.Table{Family: fam, Name: dataplane.TableAntiSpoof}
		// Add then delete: removes an earlier version whether or not there is one.
		c.AddTable(t)
		c.DelTable(t)
		if len(ports) == 0 {
			continue
		}
		c.AddTable(t)
		if err := build(c, t, ports, logGroup); err != nil {
			return err
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("apply table %s: %w", dataplane.TableAntiSpoof, err)
	}
	return nil
}

func build(c *nftables.Conn, t *nftables.Table, ports []Port, logGroup uint16) error {
	prio := nftables.ChainPriority(dataplane.PriorityAntiSpoof)
	base := c.AddChain(&nftables.Chain{Name: "prerouting", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: &prio})
	bridge := t.Family == nftables.TableFamilyBridge
	var els []nftables.SetElement
	for _, p := range ports {
		if len(p.MAC) != 6 {
			return fmt.Errorf("pod %s: MAC %q is not an Ethernet address", p.ID, p.MAC)
		}
		ch := c.AddChain(&nftables.Chain{Name: ChainPrefix + p.ID, Table: t})
		for _, r := range allowRules(p, bridge) {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: append(r, &expr.Verdict{Kind: expr.VerdictReturn})})
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
			&expr.Limit{Type: expr.LimitTypePkts, Rate: LogRate, Unit: expr.LimitTimeSecond, Burst: LogRate},
			&expr.Log{Group: logGroup, Data: []byte(ch.Name), Snaplen: 80,
				Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX | 1<<unix.NFTA_LOG_SNAPLEN},
		}})
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}}})
		els = append(els, nftables.SetElement{Key: ifname(p.IfName), VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: ch.Name}})
	}
	// Interface names are strings, in host byte order to nft (so `nft list` shows them).
	vm := &nftables.Set{Table: t, Name: "ports", IsMap: true, KeyType: nftables.TypeIFName, KeyByteOrder: binaryutil.NativeEndian, DataType: nftables.TypeVerdict}
	if err := c.AddSet(vm, els); err != nil {
		return fmt.Errorf("port map: %w", err)
	}
	c.AddRule(&nftables.Rule{Table: t, Chain: base, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Lookup{SourceRegister: 1, SetName: vm.Name, SetID: vm.ID, DestRegister: 0, IsDestRegSet: true},
	}})
	return nil
}

// allowRules are the matches of what p may send; anything else falls through to the drop.
// Every one starts with the pod's own source MAC.
func allowRules(p Port, bridge bool) [][]expr.Any {
	mac := []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(p.MAC)},
	}
	proto := func(etherType uint16, nfproto byte) []expr.Any {
		if bridge {
			return []expr.Any{&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: nftexpr.BE16(etherType)}}
		}
		return []expr.Any{&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto}}}
	}
	src := func(is6 bool, match ...expr.Any) []expr.Any {
		off, size := uint32(12), uint32(4)
		if is6 {
			off, size = 8, 16
		}
		r := append(append([]expr.Any{}, mac...), proto(unix.ETH_P_IP, unix.NFPROTO_IPV4)...)
		if is6 {
			r = append(append([]expr.Any{}, mac...), proto(unix.ETH_P_IPV6, unix.NFPROTO_IPV6)...)
		}
		r = append(r, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: size})
		return append(r, match...)
	}
	eq := func(b []byte) *expr.Cmp { return &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b} }
	var rules [][]expr.Any
	for _, ip := range p.IPs {
		rules = append(rules, src(ip.Is6(), eq(ip.AsSlice())))
	}
	// Link-local sources (neighbour and router discovery) and the unspecified address
	// (duplicate address detection) are the link working, not a claim to an address.
	rules = append(rules,
		src(true, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 16,
			Mask: append([]byte{0xff, 0xc0}, make([]byte, 14)...), Xor: make([]byte, 16)},
			eq(append([]byte{0xfe, 0x80}, make([]byte, 14)...))),
		src(true, eq(make([]byte, 16))))
	if !bridge {
		return rules
	}
	// ARP: the sender's hardware address is the pod's, and its protocol address one of the
	// pod's IPv4 addresses (or 0.0.0.0, a probe).
	arp := func(spa []byte) []expr.Any {
		r := append(append([]expr.Any{}, mac...), proto(unix.ETH_P_ARP, 0)...)
		return append(r,
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 8, Len: 6}, eq([]byte(p.MAC)),
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 14, Len: 4}, eq(spa))
	}
	rules = append(rules, arp(make([]byte, 4)))
	for _, ip := range p.IPs {
		if ip.Is4() {
			rules = append(rules, arp(ip.AsSlice()))
		}
	}
	// Other protocols carry no address to check: only the MAC is.
	other := append([]expr.Any{}, mac...)
	other = append(other, &expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1})
	for _, et := range []uint16{unix.ETH_P_IP, unix.ETH_P_IPV6, unix.ETH_P_ARP} {
		other = append(other, &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: nftexpr.BE16(et)})
	}
	return append(rules, other)
}

// ifname is an interface name as nftables keys it: NUL-padded to IFNAMSIZ.
func ifname(s string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, s)
	return b
}

// Drops reads the drop counters of both tables: chain name to packets dropped since the
// tables were written.
func Drops(nsFd int) (map[string]uint64, error) {
	out, _, err := DropsAndChains(nsFd)
	return out, err
}

// DropsAndChains is Drops, and the number of pod chains both tables hold (twice the
// pods when both are whole).
func DropsAndChains(nsFd int) (map[string]uint64, int, error) {
	c, err := nftexpr.Conn(nsFd)
	if err != nil {
		return nil, 0, err
	}
	out, chains := map[string]uint64{}, 0
	for _, fam := range families {
		counts, err := nftexpr.ChainCounters(c, fam, dataplane.TableAntiSpoof, func(chain string) bool { return strings.HasPrefix(chain, ChainPrefix) })
		if err != nil {
			return nil, 0, err
		}
		chains += len(counts)
		for chain, n := range counts {
			out[chain] += n
		}
	}
	return out, chains, nil
}

// Same reports whether two port lists program the same tables.
func Same(a, b []Port) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if x.ID != y.ID || x.IfName != y.IfName || !bytes.Equal(x.MAC, y.MAC) || len(x.IPs) != len(y.IPs) {
			return false
		}
		for j := range x.IPs {
			if x.IPs[j] != y.IPs[j] {
				return false
			}
		}
	}
	return true
}
