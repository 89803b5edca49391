// Package masq masquerades pod traffic that leaves the pod network, and exempts traffic
// within it from connection tracking, from weft's own nftables table. Each sync renders the whole table and replaces it in one netlink
// transaction, so the ruleset is never seen half-written and nothing outside the table is
// touched.
package masq

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/dataplane"
)

// TableName is weft's NAT table, in family inet.
const TableName = dataplane.TableNAT

// Rule masquerades packets from Source to anywhere outside Source and every Exempt prefix.
type Rule struct {
	Source netip.Prefix
	Exempt []netip.Prefix // destinations kept unNATed (the cluster's pod networks, later)
}

// Rules renders the desired NAT rules for the given pod networks.
func Rules(podCIDRs []netip.Prefix, exempt []netip.Prefix) []Rule {
	var out []Rule
	for _, p := range podCIDRs {
		r := Rule{Source: p.Masked()}
		for _, e := range append([]netip.Prefix{p}, exempt...) {
			if e.Addr().Is4() == p.Addr().Is4() {
				r.Exempt = append(r.Exempt, e.Masked())
			}
		}
		out = append(out, r)
	}
	return out
}

// Exprs compiles one rule to nftables expressions:
// meta nfproto X; ip saddr Source; ip daddr != each Exempt; meta mark & MarkTracked == 0;
// masquerade. (A packet from a service endpoint may be the reply of a connection this
// node never saw the start of: it is never masqueraded.)
func Exprs(r Rule) []expr.Any {
	proto, off := byte(unix.NFPROTO_IPV4), uint32(12)
	if r.Source.Addr().Is6() {
		proto, off = byte(unix.NFPROTO_IPV6), 8
	}
	size := uint32(r.Source.Addr().BitLen() / 8)
	ex := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
	ex = append(ex, match(off, size, r.Source, expr.CmpOpEq)...)
	for _, e := range r.Exempt {
		ex = append(ex, match(off+size, size, e, expr.CmpOpNeq)...)
	}
	ex = append(ex,
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: nativeUint32(dataplane.MarkTracked), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: make([]byte, 4)},
	)
	return append(ex, &expr.Masq{})
}

// NotrackExprs compiles the pod-to-pod exemption for one pod network:
// meta nfproto X; ip saddr P; ip daddr P; ip daddr != each local;
// meta mark & MarkTracked == 0; notrack. Pod-to-pod
// traffic is never NATed, so tracking it would only cost a conntrack lookup per packet.
// Traffic to the node's own addresses in P (gateways, VTEP addresses: locals) stays
// tracked: it may be the answer to a hairpinned published port, which conntrack must
// translate back. Listing them beats a fib lookup per packet. So do packets the service
// proxy marked as coming from a service endpoint: replies of DNATed connections.
func NotrackExprs(p netip.Prefix, locals []netip.Addr) []expr.Any {
	ex := withinPrefix(p)
	off := uint32(16)
	if p.Addr().Is6() {
		off = 24
	}
	for _, l := range locals {
		if l.Is4() != p.Addr().Is4() || !p.Contains(l) {
			continue
		}
		ex = append(ex,
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: uint32(l.BitLen() / 8)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: l.AsSlice()},
		)
	}
	ex = append(ex,
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: nativeUint32(dataplane.MarkTracked), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: make([]byte, 4)},
	)
	return append(ex, &expr.Notrack{})
}

// TunnelNotrackExprs exempts the fabric's own tunnel packets from connection tracking:
// meta l4proto udp; udp dport PORT; notrack.
func TunnelNotrackExprs(port int) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: be16(port)},
		&expr.Notrack{},
	}
}

// withinPrefix matches packets of p's family whose source and destination are both in p.
func withinPrefix(p netip.Prefix) []expr.Any {
	proto, off := byte(unix.NFPROTO_IPV4), uint32(12)
	if p.Addr().Is6() {
		proto, off = byte(unix.NFPROTO_IPV6), 8
	}
	size := uint32(p.Addr().BitLen() / 8)
	ex := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
	ex = append(ex, match(off, size, p, expr.CmpOpEq)...)
	return append(ex, match(off+size, size, p, expr.CmpOpEq)...)
}

func match(offset, size uint32, p netip.Prefix, op expr.CmpOp) []expr.Any {
	mask := make([]byte, size)
	for i := 0; i < p.Bits(); i++ {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: size},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: size, Mask: mask, Xor: make([]byte, size)},
		&expr.Cmp{Op: op, Register: 1, Data: p.Masked().Addr().AsSlice()},
	}
}

// Table is everything weft's NAT table holds.
type Table struct {
	Masq       []Rule
	PodCIDRs   []netip.Prefix // pod-to-pod is not tracked, and hairpinned ports are masqueraded
	LocalAddrs []netip.Addr   // the node's own addresses inside PodCIDRs (gateways, VTEPs)
	Ports      []PortRule
	TunnelPort int // the VXLAN UDP port: tunnel packets are never NATed, so not tracked
}

// Apply replaces weft's NAT table in the current network namespace with t, in one
// transaction.
func Apply(t Table) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	table := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: TableName})
	c.FlushTable(table)
	chain := func(name string, typ nftables.ChainType, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
		return c.AddChain(&nftables.Chain{Name: name, Table: table, Type: typ, Hooknum: hook, Priority: prio})
	}
	post := chain("postrouting", nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource)
	raw := chain("prerouting", nftables.ChainTypeFilter, nftables.ChainHookPrerouting, nftables.ChainPriorityRaw)
	pre := chain("ports", nftables.ChainTypeNAT, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest)
	out := chain("ports-local", nftables.ChainTypeNAT, nftables.ChainHookOutput, nftables.ChainPriorityNATDest)
	for _, p := range t.PodCIDRs {
		c.AddRule(&nftables.Rule{Table: table, Chain: raw, Exprs: NotrackExprs(p, t.LocalAddrs)})
		c.AddRule(&nftables.Rule{Table: table, Chain: post, Exprs: HairpinExprs(p)})
	}
	if t.TunnelPort != 0 {
		rawOut := chain("output", nftables.ChainTypeFilter, nftables.ChainHookOutput, nftables.ChainPriorityRaw)
		c.AddRule(&nftables.Rule{Table: table, Chain: raw, Exprs: TunnelNotrackExprs(t.TunnelPort)})
		c.AddRule(&nftables.Rule{Table: table, Chain: rawOut, Exprs: TunnelNotrackExprs(t.TunnelPort)})
	}
	for _, r := range t.Masq {
		c.AddRule(&nftables.Rule{Table: table, Chain: post, Exprs: Exprs(r)})
	}
	for _, r := range t.Ports {
		c.AddRule(&nftables.Rule{Table: table, Chain: pre, Exprs: DNATExprs(r)})
		c.AddRule(&nftables.Rule{Table: table, Chain: out, Exprs: DNATExprs(r)})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("apply table %s: %w", TableName, err)
	}
	return nil
}
