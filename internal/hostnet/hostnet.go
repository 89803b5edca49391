// Package hostnet reads what the current network namespace already uses: its addresses,
// its routes and the underlay device, through netlink. It only reads.
package hostnet

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/netcalc"
	"github.com/weftnet/weft/internal/netlinkx"
)

// weftOwned reports whether a link is weft's own (bridges, veths, VXLAN): its addresses and
// routes are the plan itself, not something to avoid.
func weftOwned(name string) bool { return strings.HasPrefix(name, "weft") }

// Prefixes lists the addresses and routes of the current namespace that an address plan
// must not overlap. Default routes, loopback, link-local and multicast are left out (they
// overlap everything or nothing a plan could choose), and so is everything weft made.
func Prefixes() ([]netcalc.HostPrefix, error) {
	links, err := netlinkx.Retry(netlink.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	names := map[int]string{}
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	var out []netcalc.HostPrefix
	addrs, err := netlinkx.Retry(func() ([]netlink.Addr, error) { return netlink.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP)
		ones, _ := a.Mask.Size()
		p := netip.PrefixFrom(ip.Unmap(), ones)
		dev := names[a.LinkIndex]
		if ignorable(p) || weftOwned(dev) {
			continue
		}
		out = append(out, netcalc.HostPrefix{Prefix: p.Masked(), Source: "address on " + dev})
	}
	routes, err := netlinkx.Retry(func() ([]netlink.Route, error) { return netlink.RouteList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst == nil || r.Protocol == netlinkx.RouteProtocol || r.Protocol == netlinkx.RouteProtocolFabric || r.Protocol == netlinkx.RouteProtocolBGP {
			continue // default route, or one of weft's
		}
		ip, _ := netip.AddrFromSlice(r.Dst.IP)
		ones, _ := r.Dst.Mask.Size()
		p := netip.PrefixFrom(ip.Unmap(), ones)
		dev := names[r.LinkIndex]
		if ignorable(p) || p.Bits() == 0 || weftOwned(dev) {
			continue
		}
		src := "route dev " + dev
		if gw, ok := netip.AddrFromSlice(r.Gw); ok {
			src = fmt.Sprintf("route via %s dev %s", gw.Unmap(), dev)
		}
		out = append(out, netcalc.HostPrefix{Prefix: p, Source: src})
	}
	return out, nil
}

func ignorable(p netip.Prefix) bool {
	a := p.Addr()
	return a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsMulticast() || a.IsLinkLocalMulticast()
}

// AvoidList is Prefixes without their sources.
func AvoidList() ([]netip.Prefix, error) {
	hp, err := Prefixes()
	if err != nil {
		return nil, err
	}
	out := make([]netip.Prefix, len(hp))
	for i, h := range hp {
		out[i] = h.Prefix
	}
	return out, nil
}

// Underlay is the device traffic to a destination leaves by.
type Underlay struct {
	Device string
	MTU    int
	IPv6   bool
}

// FindUnderlay returns the named device, else the device of the route to `to`, else that
// of the default route (IPv4 first).
func FindUnderlay(dev string, to netip.Addr) (Underlay, error) {
	if dev != "" {
		l, err := netlink.LinkByName(dev)
		if err != nil {
			return Underlay{}, fmt.Errorf("device %q: %w", dev, err)
		}
		return Underlay{Device: dev, MTU: l.Attrs().MTU}, nil
	}
	if to.IsValid() {
		rs, err := netlink.RouteGet(to.AsSlice())
		if err != nil || len(rs) == 0 {
			return Underlay{}, fmt.Errorf("no route to %s: %v", to, err)
		}
		return underlayOf(rs[0], to.Is6())
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := netlinkx.Retry(func() ([]netlink.Route, error) { return netlink.RouteList(nil, fam) })
		if err != nil {
			continue
		}
		for _, r := range routes {
			if r.Dst == nil || r.Dst.IP.IsUnspecified() {
				if ones, _ := maskOnes(r); ones == 0 {
					return underlayOf(r, fam == netlink.FAMILY_V6)
				}
			}
		}
	}
	return Underlay{}, fmt.Errorf("no default route: name the device with --dev")
}

func maskOnes(r netlink.Route) (int, int) {
	if r.Dst == nil {
		return 0, 0
	}
	return r.Dst.Mask.Size()
}

func underlayOf(r netlink.Route, v6 bool) (Underlay, error) {
	l, err := netlink.LinkByIndex(r.LinkIndex)
	if err != nil {
		return Underlay{}, err
	}
	mtu := l.Attrs().MTU
	if r.MTU > 0 && r.MTU < mtu {
		mtu = r.MTU // a route may carry a smaller MTU of its own
	}
	return Underlay{Device: l.Attrs().Name, MTU: mtu, IPv6: v6}, nil
}
