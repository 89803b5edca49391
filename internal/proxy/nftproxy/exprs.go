package nftproxy

import (
	"net/netip"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/dataplane"
	"github.com/weftnet/weft/internal/nftexpr"
	"github.com/weftnet/weft/internal/proxy"
)

// hairpin is `ct status dnat ip saddr . ip daddr @hairpin masquerade`.
func hairpin(is6 bool) []expr.Any {
	off, size, set := uint32(12), uint32(8), setHairpin4
	if is6 {
		off, size, set = 8, 32, setHairpin6
	}
	ex := append(nftexpr.Family(is6),
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

func dnatTo(be proxy.Backend) []expr.Any {
	family := uint32(unix.NFPROTO_IPV4)
	if be.IP.Is6() {
		family = unix.NFPROTO_IPV6
	}
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: be.IP.AsSlice()},
		&expr.Immediate{Register: 2, Data: nftexpr.BE16(be.Port)},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: family, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
	}
}

// vipLookup is `ip daddr . meta l4proto . th dport vmap @m`.
func vipLookup(is6 bool, m string) []expr.Any {
	protoReg, portReg := uint32(9), uint32(10)
	if is6 {
		protoReg, portReg = 12, 13
	}
	return append(nftexpr.LoadAddr(is6, true),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: protoReg},
		&expr.Payload{DestRegister: portReg, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: 1, DestRegister: 0, IsDestRegSet: true, SetName: m},
	)
}

// nodePortKeyLookup is `meta nfproto F meta l4proto . th dport vmap @m` (in the nodeports
// chain, after the local-address check).
func nodePortKeyLookup(m string, is6 bool) []expr.Any {
	return append(nftexpr.Family(is6),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Payload{DestRegister: 9, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: 1, DestRegister: 0, IsDestRegSet: true, SetName: m},
	)
}

// endpointSource is `meta nfproto X ip saddr . meta l4proto . th sport @endpoints`.
func endpointSource(is6 bool) []expr.Any {
	return append(nftexpr.Family(is6), endpointLookup(is6, false)...)
}

// endpointLookup is `ip saddr . meta l4proto . th sport @endpoints` (dst: the
// destination and its port), the family already known.
func endpointLookup(is6, dst bool) []expr.Any {
	protoReg, portReg, set := uint32(9), uint32(10), setEndpoints4
	if is6 {
		protoReg, portReg, set = 12, 13, setEndpoints6
	}
	var portOff uint32
	if dst {
		portOff = 2
	}
	return append(nftexpr.LoadAddrSameFamily(is6, dst),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: protoReg},
		&expr.Payload{DestRegister: portReg, Base: expr.PayloadBaseTransportHeader, Offset: portOff, Len: 2},
		&expr.Lookup{SourceRegister: 1, SetName: set},
	)
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

// localNotLoopback is `fib daddr type local` and a destination that is not loopback (node
// ports are on the node's addresses, not 127.0.0.1, as in Kubernetes).
func localNotLoopback(is6 bool) []expr.Any {
	ex := nftexpr.Family(is6)
	ex = append(ex,
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
	)
	if is6 {
		return append(ex, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 24, Len: 16},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: netip.IPv6Loopback().AsSlice()})
	}
	return append(ex, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{127}})
}

// externalToService is `daddr in svc, saddr in none of cluster, saddr not local: mark
// for masquerade`.
func externalToService(svc netip.Prefix, cluster []netip.Prefix) []expr.Any {
	is6 := svc.Addr().Is6()
	ex := append(nftexpr.LoadAddr(is6, true), nftexpr.InPrefix(svc, expr.CmpOpEq)...)
	for _, c := range cluster {
		if c.Addr().Is6() == is6 {
			ex = append(ex, nftexpr.LoadAddrSameFamily(is6, false)...)
			ex = append(ex, nftexpr.InPrefix(c, expr.CmpOpNeq)...)
		}
	}
	ex = append(ex,
		&expr.Fib{Register: 1, FlagSADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)})
	return append(ex, nftexpr.SetMark(dataplane.MarkMasq)...)
}
