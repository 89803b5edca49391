package netcalc

import "net/netip"

// Classes of address range, as reported by Class.
const (
	ClassPrivate       = "private (RFC 1918)"
	ClassCGNAT         = "shared (CGNAT, RFC 6598)"
	ClassLoopback      = "loopback"
	ClassLinkLocal     = "link-local"
	ClassMulticast     = "multicast"
	ClassDocumentation = "documentation"
	ClassBenchmarking  = "benchmarking (RFC 2544)"
	ClassThisNetwork   = "this network (RFC 1122)"
	ClassReserved      = "reserved"
	ClassBroadcast     = "limited broadcast"
	ClassULA           = "unique local (RFC 4193)"
	ClassIPv4Mapped    = "IPv4-mapped"
	ClassNAT64         = "NAT64 (RFC 6052)"
	ClassDiscard       = "discard-only (RFC 6666)"
	ClassUnspecified   = "unspecified"
	ClassPublic        = "public"
	ClassMixed         = "mixed"
)

type special struct {
	prefix netip.Prefix
	class  string
}

// specials are the IANA special-purpose ranges weft names; order does not matter, they
// do not overlap each other.
var specials = func() []special {
	tab := []struct{ cidr, class string }{
		{"0.0.0.0/8", ClassThisNetwork},
		{"10.0.0.0/8", ClassPrivate},
		{"100.64.0.0/10", ClassCGNAT},
		{"127.0.0.0/8", ClassLoopback},
		{"169.254.0.0/16", ClassLinkLocal},
		{"172.16.0.0/12", ClassPrivate},
		{"192.0.0.0/24", ClassReserved},
		{"192.0.2.0/24", ClassDocumentation},
		{"192.168.0.0/16", ClassPrivate},
		{"198.18.0.0/15", ClassBenchmarking},
		{"198.51.100.0/24", ClassDocumentation},
		{"203.0.113.0/24", ClassDocumentation},
		{"224.0.0.0/4", ClassMulticast},
		{"240.0.0.0/4", ClassReserved},
		{"::/128", ClassUnspecified},
		{"::1/128", ClassLoopback},
		{"::ffff:0:0/96", ClassIPv4Mapped},
		{"64:ff9b::/96", ClassNAT64},
		{"100::/64", ClassDiscard},
		{"2001:db8::/32", ClassDocumentation},
		{"3fff::/20", ClassDocumentation},
		{"fc00::/7", ClassULA},
		{"fe80::/10", ClassLinkLocal},
		{"ff00::/8", ClassMulticast},
	}
	out := make([]special, len(tab))
	for i, t := range tab {
		out[i] = special{netip.MustParsePrefix(t.cidr), t.class}
	}
	return out
}()

// Class names the kind of range p is in. A prefix that straddles kinds is "mixed"; the
// limited broadcast 255.255.255.255/32 sits inside 240/4 and is named on its own.
func Class(p netip.Prefix) string {
	p = p.Masked()
	if p.Addr().Is4() && p.Bits() == 32 && p.Addr() == netip.MustParseAddr("255.255.255.255") {
		return ClassBroadcast
	}
	for _, s := range specials {
		if s.prefix.Addr().Is4() != p.Addr().Is4() {
			continue
		}
		if s.prefix.Bits() <= p.Bits() && s.prefix.Contains(p.Addr()) {
			return s.class
		}
		if p.Overlaps(s.prefix) {
			return ClassMixed
		}
	}
	if p.Addr().Is6() {
		global := netip.MustParsePrefix("2000::/3")
		switch {
		case Contains(global, p):
			return ClassPublic
		case p.Overlaps(global):
			return ClassMixed
		}
		return ClassReserved
	}
	return ClassPublic
}
