package masq

import (
	"encoding/binary"
	"net/netip"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/dataplane"
)

// PortRule publishes one pod port: traffic to a local address (or HostIP) on HostPort is
// sent to PodIP:ContainerPort.
type PortRule struct {
	Mapping v1.PortMapping
	PodIP   netip.Addr
}

// DNATExprs compiles a port rule:
// meta nfproto X; (fib daddr type local | ip daddr HostIP); meta l4proto P; th dport H;
// meta mark set mark | MarkPortDNAT; dnat to PodIP:C.
func DNATExprs(r PortRule) []expr.Any {
	proto, daddrOff := byte(unix.NFPROTO_IPV4), uint32(16)
	if r.PodIP.Is6() {
		proto, daddrOff = byte(unix.NFPROTO_IPV6), 24
	}
	ex := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
	if r.Mapping.HostIP.IsValid() {
		ex = append(ex,
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: daddrOff, Len: uint32(r.PodIP.BitLen() / 8)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: r.Mapping.HostIP.AsSlice()},
		)
	} else {
		ex = append(ex,
			&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: nativeUint32(unix.RTN_LOCAL)},
		)
	}
	l4 := byte(unix.IPPROTO_TCP)
	if r.Mapping.Protocol == "udp" {
		l4 = unix.IPPROTO_UDP
	}
	ex = append(ex,
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{l4}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: be16(r.Mapping.HostPort)},
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: nativeUint32(^uint32(dataplane.MarkPortDNAT)), Xor: nativeUint32(dataplane.MarkPortDNAT)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
		&expr.Immediate{Register: 1, Data: r.PodIP.AsSlice()},
		&expr.Immediate{Register: 2, Data: be16(r.Mapping.ContainerPort)},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(proto), RegAddrMin: 1, RegProtoMin: 2, Specified: true},
	)
	return ex
}

// HairpinExprs masquerades a pod reaching a published port that leads back into the pod
// network (its own, or a neighbour's), so the answer returns through the node:
// ip saddr P; ip daddr P; meta mark & MarkPortDNAT != 0; masquerade. (Only published
// ports: connections through a service keep their source; the service proxy masquerades
// its own hairpin.)
func HairpinExprs(p netip.Prefix) []expr.Any {
	ex := withinPrefix(p)
	ex = append(ex,
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: nativeUint32(dataplane.MarkPortDNAT), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	)
	return append(ex, &expr.Masq{})
}

// be16 is a port in network byte order.
func be16(p int) []byte {
	b := make([]byte, 2)
	binary.BigEndian.PutUint16(b, uint16(p))
	return b
}

func nativeUint32(v uint32) []byte {
	b := make([]byte, 4)
	binary.NativeEndian.PutUint32(b, v)
	return b
}
