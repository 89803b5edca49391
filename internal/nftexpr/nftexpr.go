// Package nftexpr holds the nftables expressions weft's tables share (the service proxy's,
// the policy enforcement's): family checks, address loads, marks, connection state.
package nftexpr

import (
	"encoding/binary"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Family matches packets of one address family (in an inet table).
func Family(is6 bool) []expr.Any {
	f := byte(unix.NFPROTO_IPV4)
	if is6 {
		f = unix.NFPROTO_IPV6
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{f}},
	}
}

// LoadAddr checks the family and loads the source or destination address into register 1.
func LoadAddr(is6, dst bool) []expr.Any {
	off, size := uint32(12), uint32(4)
	if is6 {
		off, size = 8, 16
	}
	if dst {
		off += size
	}
	return append(Family(is6), &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: size})
}

// LoadAddrSameFamily loads an address without checking the family again (after LoadAddr).
func LoadAddrSameFamily(is6, dst bool) []expr.Any { return LoadAddr(is6, dst)[len(Family(is6)):] }

// SetMarkVia is `meta mark set mark | bit`, computed in register reg.
func SetMarkVia(reg, bit uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: reg},
		&expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(^bit), Xor: binaryutil.NativeEndian.PutUint32(bit)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg},
	}
}

// SetMark is SetMarkVia register 1.
func SetMark(bit uint32) []expr.Any { return SetMarkVia(1, bit) }

// MarkIsSet is `meta mark & bit != 0`.
func MarkIsSet(bit uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(bit), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

// InPrefix compares the address in register 1 (loaded by LoadAddr) with a prefix: a mask
// and a compare, cheaper than a set lookup for one prefix.
func InPrefix(p netip.Prefix, op expr.CmpOp) []expr.Any {
	n := p.Addr().BitLen() / 8
	mask := make([]byte, n)
	for i := 0; i < p.Bits(); i++ {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	return []expr.Any{
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(n), Mask: mask, Xor: make([]byte, n)},
		&expr.Cmp{Op: op, Register: 1, Data: p.Masked().Addr().AsSlice()},
	}
}

// WithinPrefix is `ip daddr p ip saddr p`: a packet between two addresses of p (a pod
// network, as weft-nat's notrack matches it).
func WithinPrefix(p netip.Prefix) []expr.Any {
	is6 := p.Addr().Is6()
	ex := append(LoadAddr(is6, true), InPrefix(p, expr.CmpOpEq)...)
	ex = append(ex, LoadAddrSameFamily(is6, false)...)
	return append(ex, InPrefix(p, expr.CmpOpEq)...)
}

// EstablishedAccept is `ct state established,related accept`.
func EstablishedAccept() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}
}

// BE16 is a port in network byte order.
func BE16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

// Conn opens an nftables connection in the namespace open at nsFd (-1: the calling
// thread's).
func Conn(nsFd int) (*nftables.Conn, error) {
	if nsFd >= 0 {
		return nftables.New(nftables.WithNetNSFd(nsFd))
	}
	return nftables.New()
}

// ChainCounters adds up the counters of each chain of table (family, name) that keep
// accepts: chain name → packets. No such table: none.
func ChainCounters(c *nftables.Conn, family nftables.TableFamily, table string, keep func(chain string) bool) (map[string]uint64, error) {
	chains, err := c.ListChainsOfTableFamily(family)
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	for _, ch := range chains {
		if ch.Table.Name != table || !keep(ch.Name) {
			continue
		}
		rules, err := c.GetRules(ch.Table, ch)
		if err != nil {
			return nil, err
		}
		for _, r := range rules {
			for _, e := range r.Exprs {
				if cnt, ok := e.(*expr.Counter); ok {
					out[ch.Name] += cnt.Packets
				}
			}
		}
	}
	return out, nil
}
