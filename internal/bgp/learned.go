package bgp

import (
	"net/netip"
	"slices"

	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
)

// learned is the speaker's own copy of GoBGP's best paths: for every destination, the
// paths as good as the best one (GoBGP's multipath set), which become the kernel route's
// next hops. GoBGP's best-path events carry each change as it happens (a path that joins
// or changes in a destination's set, or one that leaves it), so the copy follows them
// without reading GoBGP's table back: that read copies the whole table (with 10,000
// routes, a third of the speaker's time in a burst).
//
// The copy is rebuilt from a full read of the table at start, after any session changes
// state, and every resyncEvery (level-triggered: a change an event failed to carry is
// repaired by the next read). Events that arrive while a read is under way are replayed
// over its result, so none is lost between the read and its use.
type learned struct {
	paths map[netip.Prefix][]learnedPath
	// changed are the destinations whose route may have changed since the last Changes.
	changed map[netip.Prefix]bool
	// recording holds the events applied while a full read is under way.
	recording bool
	recorded  []*apiutil.Path
}

// learnedPath is one path of a destination's best set, keyed by where it came from.
type learnedPath struct {
	peer    netip.Addr // invalid: this speaker's own path
	id      uint32     // the path identifier (ADD-PATH), 0 without
	nextHop netip.Addr
}

func newLearned() *learned {
	return &learned{paths: map[netip.Prefix][]learnedPath{}, changed: map[netip.Prefix]bool{}}
}

// apply takes one path of a best-path event: a path that leaves a destination's set comes
// as a withdrawal; one that joins it or changes comes as itself.
func (l *learned) apply(p *apiutil.Path) {
	if l.recording {
		l.recorded = append(l.recorded, p)
	}
	pfx, ok := pathPrefix(p)
	if !ok {
		return
	}
	key := learnedPath{peer: p.PeerAddress, id: p.RemoteID}
	set := slices.DeleteFunc(l.paths[pfx], func(e learnedPath) bool { return e.peer == key.peer && e.id == key.id })
	if !p.Withdrawal && !p.IsNexthopInvalid {
		key.nextHop = nextHopOf(p)
		set = append(set, key)
	}
	l.set(pfx, set)
}

// set records a destination's best set.
func (l *learned) set(pfx netip.Prefix, set []learnedPath) {
	l.changed[pfx] = true
	if len(set) == 0 {
		delete(l.paths, pfx)
		return
	}
	l.paths[pfx] = set
}

// route is the route that follows from a destination's best set: the next hops of its
// paths, none when it has no path or when one is this speaker's own (the best there is:
// no route to anyone else).
func (l *learned) route(pfx netip.Prefix) Route {
	var hops []netip.Addr
	for _, e := range l.paths[pfx] {
		if !e.peer.IsValid() {
			return Route{Prefix: pfx}
		}
		if e.nextHop.IsValid() {
			hops = append(hops, e.nextHop)
		}
	}
	slices.SortFunc(hops, func(a, b netip.Addr) int { return a.Compare(b) })
	return Route{Prefix: pfx, NextHops: slices.Compact(hops)}
}

// fromTable adds one destination of a full read: the paths GoBGP marks best (the best
// and, with multipath, those equal to it).
func (l *learned) fromTable(nlri bgp.NLRI, paths []*apiutil.Path) {
	pfx, ok := nlriPrefix(nlri)
	if !ok {
		return
	}
	var set []learnedPath
	for _, p := range paths {
		if !p.Best || p.Withdrawal || p.IsNexthopInvalid {
			continue
		}
		set = append(set, learnedPath{peer: p.PeerAddress, id: p.RemoteID, nextHop: nextHopOf(p)})
	}
	l.set(pfx, set)
}

// takeChanges returns the changed destinations' routes (withdrawn ones without next hops)
// and starts a new set.
func (l *learned) takeChanges() []Route {
	out := make([]Route, 0, len(l.changed))
	for pfx := range l.changed {
		out = append(out, l.route(pfx))
	}
	clear(l.changed)
	return out
}

// sorted returns the learned routes in prefix order.
func (l *learned) sorted() []Route {
	out := make([]Route, 0, len(l.paths))
	for pfx := range l.paths {
		if r := l.route(pfx); len(r.NextHops) > 0 {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b Route) int { return comparePrefixes(a.Prefix, b.Prefix) })
	return out
}

func pathPrefix(p *apiutil.Path) (netip.Prefix, bool) {
	if p.Family != bgp.RF_IPv4_UC && p.Family != bgp.RF_IPv6_UC {
		return netip.Prefix{}, false
	}
	return nlriPrefix(p.Nlri)
}
