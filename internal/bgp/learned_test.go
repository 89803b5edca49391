package bgp

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
)

// path is a best-path event's path: from peer ("" for this speaker's own) with next hop nh.
func path(t *testing.T, prefix, peer, nh string, withdrawn bool) *apiutil.Path {
	t.Helper()
	nlri, err := bgp.NewIPAddrPrefix(netip.MustParsePrefix(prefix))
	if err != nil {
		t.Fatal(err)
	}
	attr, err := bgp.NewPathAttributeNextHop(netip.MustParseAddr(nh))
	if err != nil {
		t.Fatal(err)
	}
	p := &apiutil.Path{Family: bgp.RF_IPv4_UC, Nlri: nlri, Attrs: []bgp.PathAttributeInterface{attr}, Withdrawal: withdrawn}
	if peer != "" {
		p.PeerAddress = netip.MustParseAddr(peer)
	}
	return p
}

func show(rs []Route) string {
	var out []string
	for _, r := range rs {
		out = append(out, fmt.Sprintf("%s%v", r.Prefix, r.NextHops))
	}
	slices.Sort(out)
	return strings.Join(out, " ")
}

func TestLearnedFollowsEvents(t *testing.T) {
	l := newLearned()
	l.apply(path(t, "10.244.1.0/24", "192.0.2.1", "192.0.2.1", false))
	l.apply(path(t, "10.244.1.0/24", "192.0.2.2", "192.0.2.2", false)) // joins the equal-cost set
	l.apply(path(t, "10.244.2.0/24", "192.0.2.1", "192.0.2.1", false))
	if got, want := show(l.sorted()), "10.244.1.0/24[192.0.2.1 192.0.2.2] 10.244.2.0/24[192.0.2.1]"; got != want {
		t.Fatalf("routes: %s, want %s", got, want)
	}
	if got := show(l.takeChanges()); got != "10.244.1.0/24[192.0.2.1 192.0.2.2] 10.244.2.0/24[192.0.2.1]" {
		t.Fatalf("changes: %s", got)
	}

	// A path changes its next hop, one leaves, one destination goes, and this speaker's
	// own path for a destination wins it: no route to anyone else.
	l.apply(path(t, "10.244.1.0/24", "192.0.2.2", "192.0.2.9", false))
	l.apply(path(t, "10.244.1.0/24", "192.0.2.1", "192.0.2.1", true))
	l.apply(path(t, "10.244.2.0/24", "192.0.2.1", "192.0.2.1", true))
	l.apply(path(t, "10.244.3.0/24", "192.0.2.1", "192.0.2.1", false))
	l.apply(path(t, "10.244.3.0/24", "", "0.0.0.0", false))
	l.apply(path(t, "10.244.3.0/24", "192.0.2.1", "192.0.2.1", true))
	if got, want := show(l.sorted()), "10.244.1.0/24[192.0.2.9]"; got != want {
		t.Fatalf("routes: %s, want %s", got, want)
	}
	// Every touched destination is a change; the gone ones have no next hops.
	if got, want := show(l.takeChanges()), "10.244.1.0/24[192.0.2.9] 10.244.2.0/24[] 10.244.3.0/24[]"; got != want {
		t.Fatalf("changes: %s, want %s", got, want)
	}
	if got := l.takeChanges(); len(got) != 0 {
		t.Fatalf("changes taken twice: %v", got)
	}
}

func TestLearnedFromTableAndReplay(t *testing.T) {
	// A full read: only the paths GoBGP marks best count.
	l := newLearned()
	a := path(t, "10.244.1.0/24", "192.0.2.1", "192.0.2.1", false)
	b := path(t, "10.244.1.0/24", "192.0.2.2", "192.0.2.2", false)
	c := path(t, "10.244.1.0/24", "192.0.2.3", "192.0.2.3", false)
	a.Best, b.Best = true, true
	l.fromTable(a.Nlri, []*apiutil.Path{a, b, c})
	if got, want := show(l.sorted()), "10.244.1.0/24[192.0.2.1 192.0.2.2]"; got != want {
		t.Fatalf("from the table: %s, want %s", got, want)
	}

	// Events recorded during a read are replayed over its result, in order: one from
	// before the read (already in it) and the withdrawal that followed it end as the
	// withdrawal left things.
	old := newLearned()
	old.recording = true
	old.apply(path(t, "10.244.5.0/24", "192.0.2.1", "192.0.2.1", false))
	old.apply(path(t, "10.244.5.0/24", "192.0.2.1", "192.0.2.1", true))
	fresh := newLearned()
	fresh.apply(path(t, "10.244.5.0/24", "192.0.2.1", "192.0.2.1", false)) // the read saw it
	for _, p := range old.recorded {
		fresh.apply(p)
	}
	if got := show(fresh.sorted()); got != "" {
		t.Fatalf("after the replay: %s, want nothing", got)
	}
}
