// Package netcalc holds pure address arithmetic over net/netip, for IPv4 and IPv6.
package netcalc

import (
	"math/big"
	"net/netip"
)

// Add returns a + n, and false when the result leaves the address family.
func Add(a netip.Addr, n uint64) (netip.Addr, bool) {
	b := a.AsSlice()
	carry := n
	for i := len(b) - 1; i >= 0 && carry > 0; i-- {
		sum := uint64(b[i]) + (carry & 0xff)
		b[i] = byte(sum)
		carry = (carry >> 8) + (sum >> 8)
	}
	if carry > 0 {
		return netip.Addr{}, false
	}
	r, _ := netip.AddrFromSlice(b)
	if a.Is4In6() {
		r = netip.AddrFrom16(r.As16())
	}
	return r.WithZone(a.Zone()), true
}

// Last returns the highest address of p (the broadcast address for IPv4).
func Last(p netip.Prefix) netip.Addr {
	p = p.Masked()
	b := p.Addr().AsSlice()
	bits := p.Bits()
	for i := range b {
		lo := i * 8
		switch {
		case bits <= lo:
			b[i] = 0xff
		case bits < lo+8:
			b[i] |= 0xff >> (bits - lo)
		}
	}
	r, _ := netip.AddrFromSlice(b)
	return r
}

// Size is the number of addresses in p, exact for every prefix length.
func Size(p netip.Prefix) *big.Int {
	return new(big.Int).Lsh(big.NewInt(1), uint(p.Addr().BitLen()-p.Bits()))
}

// Distance returns b - a + 1, the count of addresses in [a, b]; zero when b < a.
func Distance(a, b netip.Addr) *big.Int {
	if b.Less(a) {
		return new(big.Int)
	}
	x := new(big.Int).SetBytes(a.AsSlice())
	y := new(big.Int).SetBytes(b.AsSlice())
	return y.Sub(y, x).Add(y, big.NewInt(1))
}

// UsableBounds returns the first and last host addresses of p by the usual conventions:
// IPv4 skips network and broadcast except on /31 and /32 (RFC 3021); IPv6 skips only the
// subnet-router anycast address, except on /127 and /128.
func UsableBounds(p netip.Prefix) (first, last netip.Addr) {
	p = p.Masked()
	first, last = p.Addr(), Last(p)
	hostBits := p.Addr().BitLen() - p.Bits()
	if hostBits <= 1 {
		return first, last
	}
	first, _ = Add(first, 1)
	if p.Addr().Is4() {
		last = last.Prev()
	}
	return first, last
}

// AddBig returns a + n for any n ≥ 0, and false when the result leaves the family.
func AddBig(a netip.Addr, n *big.Int) (netip.Addr, bool) {
	size := a.BitLen() / 8
	v := new(big.Int).SetBytes(a.AsSlice())
	v.Add(v, n)
	if v.Sign() < 0 || v.BitLen() > a.BitLen() {
		return netip.Addr{}, false
	}
	b := make([]byte, size)
	v.FillBytes(b)
	r, _ := netip.AddrFromSlice(b)
	return r, true
}
