package netcalc

import (
	"fmt"
	"net/netip"
	"strings"
)

// ParseCIDR parses "ADDR/LEN" for IPv4 or IPv6. Host bits may be set (10.1.2.3/24 is read
// as written; Info reports its network). The error names the bad token.
func ParseCIDR(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR (want ADDRESS/LENGTH)", s)
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR", s)
	}
	if p.Addr().Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q: a CIDR has no zone", s)
	}
	return p, nil
}

// ParseCIDRs parses each token with ParseCIDR.
func ParseCIDRs(tokens []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(tokens))
	for _, t := range tokens {
		p, err := ParseCIDR(t)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}
