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
	if k.current == nil || time.Since(k.dumped) > dumpEvery {
		if err := k.dump(); err != nil {
			return Result{}, err
		}
	}
	var res Result
	k.resolved = nil // resolve every next hop afresh
	p := k.planner()
	wanted := make(map[netip.Prefix]bool, len(want))
	for _, r := range want {
		dst := r.Dst.Masked()
		wanted[dst] = true
		p.set(dst, r.NextHops, &res)
	}
	for dst := range k.current {
		if !wanted[dst] && (sweep || k.learned[dst]) {
			p.ops = append(p.ops, op{dst: dst, del: true})
		}
	}
	for dst := range k.learned {
		if !wanted[dst] {
			delete(k.learned, dst)
		}
	}
	for dst := range k.unresolved {
		if !wanted[dst] {
			delete(k.unresolved, dst)
		}
	}
	return k.run(p.ops, res)
}

// Update applies changed routes only, against the record of the last Sync: a route with
// no next hops is withdrawn (deleted, as a route Sync no longer wants). Only changes pass
// through it, so a burst of BGP updates costs what it changes, not the table's size.
// It needs a Sync first (NeedsSync).
func (k *Kernel) Update(changed []Route) (Result, error) {
	if k.NeedsSync() {
		return Result{}, errors.New("routed: a full sync is needed first")
	}
	var res Result
	p := k.planner()
	for _, r := range changed {
		dst := r.Dst.Masked()
		if len(r.NextHops) > 0 {
			p.set(dst, r.NextHops, &res)
			continue
		}
		delete(k.learned, dst)
		delete(k.unresolved, dst)
		if _, ok := k.current[dst]; ok {
			p.ops = append(p.ops, op{dst: dst, del: true})
		}
	}
	return k.run(p.ops, res)
}

// NeedsSync says Update cannot be used: the kernel's routes are to be read again (never
// read, a failed change, or dumpEvery has passed), or a route waits for a next hop to
// resolve (which only a sync over every route tries again).
func (k *Kernel) NeedsSync() bool {
	return k.current == nil || time.Since(k.dumped) > dumpEvery || len(k.unresolved) > 0
}

// Learned counts the wanted routes that are in the kernel (those whose next hops resolve).
func (k *Kernel) Learned() int {
	return len(k.learned) - len(k.unresolved)
}

func (k *Kernel) dump() error {
	have, err := netlinkx.Retry(func() ([]netlink.Route, error) {
		return k.h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN},
			netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return err
	}
	k.current, k.dumped = make(map[netip.Prefix][]hop, len(have)), time.Now()
	for _, r := range have {
		if r.Dst != nil {
			k.current[prefixOf(r.Dst)] = hopsOf(r)
		}
	}
	if k.learned == nil {
		k.learned, k.unresolved = map[netip.Prefix]bool{}, map[netip.Prefix]bool{}
	}
	return nil
}

// planner turns wanted routes into kernel changes.
type planner struct {
	k   *Kernel
	ops []op
}

// resolveFor bounds how long a next hop's resolution is reused by Updates (a Sync
// resolves every next hop afresh): a burst of updates asks the kernel once per next hop.
const resolveFor = time.Second

func (k *Kernel) planner() *planner {
	if k.resolved == nil || time.Since(k.resolvedAt) > resolveFor {
		k.resolved, k.resolvedAt = map[netip.Addr]hop{}, time.Now()
	}
	return &planner{k: k}
}

// set wants dst through nextHops: an op when the kernel's route differs. A destination
// none of whose next hops resolves is counted, and its kernel route (if any) left alone.
func (p *planner) set(dst netip.Prefix, nextHops []netip.Addr, res *Result) {
	k := p.k
	k.learned[dst] = true
	var hops []hop
	for _, nh := range nextHops {
		if nh.Is4() != dst.Addr().Is4() {
			continue
		}
		if hp, ok := p.resolve(nh); ok && !slices.Contains(hops, hp) {
			hops = append(hops, hp)
		}
	}
	if len(hops) == 0 {
		k.unresolved[dst] = true
		res.Unresolved++
		return
	}
	delete(k.unresolved, dst)
	sortHops(hops)
	old, exists := k.current[dst]
	if exists && slices.Equal(old, hops) {
		return
	}
	p.ops = append(p.ops, op{dst: dst, hops: hops, replace: exists})
}

func (p *planner) resolve(a netip.Addr) (hop, bool) {
	if h, ok := p.k.resolved[a]; ok {
		return h, h.ifindex != 0
	}
	hp, ok := resolveNextHop(p.k.h, a)
	p.k.resolved[a] = hp
	return hp, ok
}

// run sends ops to the kernel and keeps the record of what it holds.
func (k *Kernel) run(ops []op, res Result) (Result, error) {
	var errs []error
	for i, err := range k.apply(ops) {
		o := ops[i]
		if o.del {
			delete(k.current, o.dst)
		} else if err == nil {
			k.current[o.dst] = o.hops
		}
		switch {
		case err != nil && o.del && errors.Is(err, unix.ESRCH):
		case err != nil:
			errs = append(errs, fmt.Errorf("route %s: %w", o.dst, err))
		case o.del:
			res.Deleted++
		case o.replace:
			res.Replaced++
		default:
			res.Installed++
		}
	}
	if len(errs) > 0 {
		k.current = nil // read the kernel again next time
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
