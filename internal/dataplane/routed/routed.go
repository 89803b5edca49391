// Package routed puts routes learned by a routing protocol (BGP) into the node's kernel:
// one route per destination with every next hop (ECMP), marked with protocol
// RouteProtocol. A sync changes only what differs from the kernel, so thousands of routes
// cost one dump and the changes; stale routes are deleted only when the caller says its
// view is complete (after a restart, BGP's view fills in over seconds while the kernel's
// routes keep forwarding).
package routed

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/netlinkx"
)

// RouteProtocol marks BGP-learned routes.
const RouteProtocol = netlinkx.RouteProtocolBGP

// Route is a destination with its next hops as learned.
type Route struct {
	Dst      netip.Prefix
	NextHops []netip.Addr
}

type hop struct {
	gw      netip.Addr
	ifindex int
}

// Result says what a sync did.
type Result struct {
	Installed, Replaced, Deleted, Unresolved int
}

// Sync makes the kernel's RouteProtocol routes match want. A next hop that is not on a
// connected network is resolved through the kernel's own routes (recursive next hop, as
// for iBGP peers across a router); one that resolves nowhere is left out. A route an
// earlier sync wanted and this one does not (a withdrawal) is deleted; with sweep, every
// route not in want is (after a restart, those from before it too).
//
// What the kernel holds is read from it (one dump) on the first sync, after a failed one,
// and once every dumpEvery; in between, Sync trusts its own record of what it installed,
// so a sync that changes a few of 10,000 routes costs only those few.
func (k *Kernel) Sync(want []Route, sweep bool) (Result, error) {
	var res Result
	h := k.h
	if k.current == nil || time.Since(k.dumped) > dumpEvery {
		have, err := netlinkx.Retry(func() ([]netlink.Route, error) {
			return h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN},
				netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
		})
		if err != nil {
			return res, err
		}
		k.current, k.dumped = map[netip.Prefix][]hop{}, time.Now()
		for _, r := range have {
			if r.Dst != nil {
				k.current[prefixOf(r.Dst)] = hopsOf(r)
			}
		}
	}
	current := k.current
	resolved := map[netip.Addr]hop{}
	resolve := func(a netip.Addr) (hop, bool) {
		if h, ok := resolved[a]; ok {
			return h, h.ifindex != 0
		}
		hp, ok := resolveNextHop(h, a)
		resolved[a] = hp
		return hp, ok
	}
	var errs []error
	var ops []op
	wanted := map[netip.Prefix]bool{}
	for _, r := range want {
		dst := r.Dst.Masked()
		wanted[dst] = true
		var hops []hop
		for _, nh := range r.NextHops {
			if nh.Is4() != dst.Addr().Is4() {
				continue
			}
			if hp, ok := resolve(nh); ok && !slices.Contains(hops, hp) {
				hops = append(hops, hp)
			}
		}
		if len(hops) == 0 {
			res.Unresolved++
			continue
		}
		sortHops(hops)
		old, exists := current[dst]
		if exists && slices.Equal(old, hops) {
			continue
		}
		ops = append(ops, op{dst: dst, hops: hops, replace: exists})
	}
	if k.learned == nil {
		k.learned = map[netip.Prefix]bool{}
	}
	for p := range current {
		if !wanted[p] && (sweep || k.learned[p]) {
			ops = append(ops, op{dst: p, del: true})
		}
	}
	for p := range k.learned {
		if !wanted[p] {
			delete(k.learned, p)
		}
	}
	for p := range wanted {
		k.learned[p] = true
	}
	for i, err := range k.apply(ops) {
		o := ops[i]
		if o.del {
			delete(current, o.dst)
		} else if err == nil {
			current[o.dst] = o.hops
		}
		switch {
		case err != nil && o.del && errors.Is(err, unix.ESRCH):
		case err != nil:
			k.current = nil // read the kernel again next time
			errs = append(errs, fmt.Errorf("route %s: %w", o.dst, err))
		case o.del:
			res.Deleted++
		case o.replace:
			res.Replaced++
		default:
			res.Installed++
		}
	}
	return res, errors.Join(errs...)
}

// resolveNextHop finds the gateway and device for a next hop: itself on a connected
// network, else the gateway of the kernel route that covers it (not one of ours, which
// would make a loop).
func resolveNextHop(h *netlink.Handle, a netip.Addr) (hop, bool) {
	rs, err := h.RouteGet(a.AsSlice())
	if err != nil || len(rs) == 0 {
		return hop{}, false
	}
	r := rs[0]
	if r.Type == unix.RTN_LOCAL || r.Type == unix.RTN_UNREACHABLE || r.Type == unix.RTN_BLACKHOLE || r.LinkIndex == 0 {
		return hop{}, false
	}
	if r.Gw == nil {
		return hop{gw: a, ifindex: r.LinkIndex}, true
	}
	gw, _ := netip.AddrFromSlice(r.Gw)
	// The covering route must not be one this package installed.
	if covering, err := netlinkx.Retry(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
	}); err == nil {
		for _, c := range covering {
			if c.Dst != nil && prefixOf(c.Dst).Contains(a) {
				return hop{}, false
			}
		}
	}
	return hop{gw: gw.Unmap(), ifindex: r.LinkIndex}, true
}

func hopsOf(r netlink.Route) []hop {
	var out []hop
	if len(r.MultiPath) > 0 {
		for _, nh := range r.MultiPath {
			gw, _ := netip.AddrFromSlice(nh.Gw)
			out = append(out, hop{gw: gw.Unmap(), ifindex: nh.LinkIndex})
		}
	} else {
		gw, _ := netip.AddrFromSlice(r.Gw)
		out = append(out, hop{gw: gw.Unmap(), ifindex: r.LinkIndex})
	}
	sortHops(out)
	return out
}

func sortHops(hs []hop) {
	slices.SortFunc(hs, func(a, b hop) int {
		if c := a.gw.Compare(b.gw); c != 0 {
			return c
		}
		return a.ifindex - b.ifindex
	})
}

func prefixOf(n *net.IPNet) netip.Prefix {
	ip, _ := netip.AddrFromSlice(n.IP)
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(ip.Unmap(), ones)
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
