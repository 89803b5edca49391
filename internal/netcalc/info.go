package netcalc

import (
	"math/big"
	"net"
	"net/netip"
)

// Info describes one CIDR. Counts are decimal strings: an IPv6 prefix holds up to 2^128.
type Info struct {
	CIDR         string `json:"cidr"`
	Network      string `json:"network"`
	PrefixLength int    `json:"prefixLength"`
	Netmask      string `json:"netmask"`
	Wildcard     string `json:"wildcard"`
	Broadcast    string `json:"broadcast,omitempty"` // IPv4 only
	FirstUsable  string `json:"firstUsable"`
	LastUsable   string `json:"lastUsable"`
	Total        string `json:"total"`
	Usable       string `json:"usable"`
	Class        string `json:"class"`
}

// Describe computes Info for p. IPv4 /31 and /32 follow RFC 3021 (every address usable, no
// broadcast); IPv6 has no broadcast, and only the subnet-router anycast address is set
// aside (except on /127 and /128).
func Describe(p netip.Prefix) Info {
	m := p.Masked()
	bits, size := m.Bits(), m.Addr().BitLen()
	mask := net.CIDRMask(bits, size)
	wild := make(net.IP, len(mask))
	for i := range mask {
		wild[i] = ^mask[i]
	}
	first, last := UsableBounds(m)
	total := Size(m)
	usable := new(big.Int).Set(total)
	hostBits := size - bits
	switch {
	case m.Addr().Is4() && hostBits >= 2:
		usable.Sub(usable, big.NewInt(2))
	case m.Addr().Is6() && hostBits >= 2:
		usable.Sub(usable, big.NewInt(1))
	}
	info := Info{
		CIDR:         p.String(),
		Network:      m.Addr().String(),
		PrefixLength: bits,
		Netmask:      ipString(net.IP(mask), m.Addr().Is4()),
		Wildcard:     ipString(wild, m.Addr().Is4()),
		FirstUsable:  first.String(),
		LastUsable:   last.String(),
		Total:        total.String(),
		Usable:       usable.String(),
		Class:        Class(m),
	}
	if m.Addr().Is4() && hostBits >= 2 {
		info.Broadcast = Last(m).String()
	}
	return info
}

func ipString(b net.IP, v4 bool) string {
	a, _ := netip.AddrFromSlice(b)
	if v4 {
		return a.Unmap().String()
	}
	return a.String()
}
