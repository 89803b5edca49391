package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/dataplane/fastpath"
	"github.com/weftnet/weft/internal/ipam"
	"github.com/weftnet/weft/internal/netlinkx"
	"github.com/weftnet/weft/internal/podnet"
	"github.com/weftnet/weft/internal/reconcile"
)

// fastpathSync keeps the eBPF fast path converged: every live host veth carries the
// program, and the map lists exactly the addresses of the pods behind them. Triggers (link
// events, allocations, the periodic resync) only mark it dirty; each pass recomputes the
// whole map from the node store and the kernel's links.
type fastpathSync struct {
	fp       *fastpath.Fastpath
	alloc    *ipam.Allocator
	loop     *reconcile.Loop
	attached map[string]bool // "ifindex/alias" this weftd attached the program to
	// uplink and tunnel name the devices where traffic from other nodes arrives (the
	// underlay and the VXLAN device): with the program there too, a packet for a local pod
	// goes straight in; on the uplink, a VXLAN packet is decapsulated on the way.
	uplink, tunnel string
	passes         int
	fail           func(error)
}

// fastpathDelay batches the link events of a burst of ADDs into one pass; until a new
// pod's entry lands its traffic takes the normal path.
const fastpathDelay = 50 * time.Millisecond

func newFastpathSync(fp *fastpath.Fastpath, alloc *ipam.Allocator, fail func(error)) *fastpathSync {
	s := &fastpathSync{fp: fp, alloc: alloc, attached: map[string]bool{}, fail: fail}
	s.loop = reconcile.New(fastpathDelay, s.sync, fail)
	return s
}

func (s *fastpathSync) Trigger() { s.loop.Trigger() }

func (s *fastpathSync) run(ctx context.Context) {
	updates := make(chan netlink.LinkUpdate, 64)
	done := make(chan struct{})
	defer close(done)
	if err := netlink.LinkSubscribeWithOptions(updates, done, netlink.LinkSubscribeOptions{ErrorCallback: s.fail}); err != nil {
		s.fail(fmt.Errorf("subscribe to link events: %w", err))
	}
	go func() {
		for range updates {
			s.Trigger()
		}
	}()
	s.loop.Run(ctx)
}

// verifyEvery is how often a pass re-reads every link's filters instead of trusting what
// it attached itself, to repair a filter someone removed.
const verifyEvery = 20

func (s *fastpathSync) sync() error {
	s.passes++
	verify := s.passes%verifyEvery == 0
	allocs, err := s.alloc.List()
	if err != nil {
		return err
	}
	byKey := make(map[ipam.Key]ipam.Allocation, len(allocs))
	for _, a := range allocs {
		byKey[a.Key] = a
	}
	h := &netlink.Handle{}
	links, err := netlinkx.Retry(h.LinkList)
	if err != nil {
		return err
	}
	want := map[fastpath.Key]fastpath.Value{}
	var toAttach []netlink.Link
	seen := map[string]bool{}
	for _, l := range links {
		attrs := l.Attrs()
		owner, ok := podnet.ParseAlias(attrs.Alias)
		if !ok || l.Type() != "veth" || attrs.Group == podnet.ReapGroup {
			continue
		}
		al, ok := byKey[ipam.Key{Network: owner.Network, ContainerID: owner.ContainerID, IfName: owner.IfName}]
		if !ok {
			continue // allocation not committed yet, or already released
		}
		cacheKey := fmt.Sprintf("%d/%s", attrs.Index, attrs.Alias)
		seen[cacheKey] = true
		mac := owner.PodMAC
		for _, ip := range al.IPs {
			want[fastpath.KeyOf(ip.Address.Addr())] = fastpath.ValueOf(attrs.Index, mac)
		}
		if !s.attached[cacheKey] || (verify && !s.fp.Attached(h, l, false)) {
			toAttach = append(toAttach, l)
		}
	}
	for _, name := range []string{s.uplink, s.tunnel} {
		if name == "" {
			continue
		}
		l, err := h.LinkByName(name)
		if err != nil {
			continue // not there (yet): the VXLAN device comes with the first fabric sync
		}
		cacheKey := fmt.Sprintf("%d/%s", l.Attrs().Index, l.Attrs().Alias)
		seen[cacheKey] = true
		if !s.attached[cacheKey] || (verify && !s.fp.Attached(h, l, name == s.uplink)) {
			toAttach = append(toAttach, l)
		}
	}
	for k := range s.attached {
		if !seen[k] {
			delete(s.attached, k)
		}
	}
	// The map first, then the filters: a freshly attached program finds its entries.
	if err := s.fp.Sync(want); err != nil {
		return err
	}
	for _, l := range toAttach {
		if err := s.fp.Attach(h, l, l.Attrs().Name == s.uplink); err != nil && !netlinkx.IsNotFound(err) {
			return err
		}
		s.attached[fmt.Sprintf("%d/%s", l.Attrs().Index, l.Attrs().Alias)] = true
	}
	return nil
}
