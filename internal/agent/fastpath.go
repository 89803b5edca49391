package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/dataplane/fastpath"
	"github.com/weftnet/weft/internal/ipam"
	"github.com/weftnet/weft/internal/netlinkx"
	"github.com/weftnet/weft/internal/podnet"
	"github.com/weftnet/weft/internal/policy"
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
	yielded  map[string]bool // host veths left to another tool's tc (see foreignTC)
	// yieldedPods counts the pods off the fast path for that reason (a metric).
	yieldedPods atomic.Int64
	// uplink and tunnel name the devices where traffic from other nodes arrives (the
	// underlay and the VXLAN device): with the program there too, a packet for a local pod
	// goes straight in; on the uplink, a VXLAN packet is decapsulated on the way.
	uplink, tunnel string
	passes         int
	fail           func(error)
	// policed gives a pod address's rules when a network policy selects it: the pod's
	// entry in the map carries the directions, and the program leaves to the kernel's path
	// whatever the policy trie does not allow both ways.
	policed func(netip.Addr) (policy.PodRules, bool)
}

// fastpathDelay batches the link events of a burst of ADDs into one pass; until a new
// pod's entry lands its traffic takes the normal path.
const fastpathDelay = 50 * time.Millisecond

func newFastpathSync(fp *fastpath.Fastpath, alloc *ipam.Allocator, fail func(error)) *fastpathSync {
	s := &fastpathSync{fp: fp, alloc: alloc, attached: map[string]bool{}, yielded: map[string]bool{}, fail: fail}
	s.loop = reconcile.New(fastpathDelay, s.sync, fail)
	return s
}

func (s *fastpathSync) Trigger() { s.loop.Trigger() }

// policyFlags are the directions a policy selects the pod of al in (Value.Flags).
func (s *fastpathSync) policyFlags(al ipam.Allocation) uint8 {
	var flags uint8
	if s.policed == nil {
		return 0
	}
	for _, ip := range al.IPs {
		if r, ok := s.policed(ip.Address.Addr()); ok {
			flags |= fastpath.FlagsOf(r)
		}
	}
	return flags
}

func (s *fastpathSync) run(ctx context.Context) {
	// Qdisc and filter changes: another plugin (bandwidth) shaping a pod takes it off the
	// fast path at once.
	if tc, err := nl.Subscribe(unix.NETLINK_ROUTE, unix.RTNLGRP_TC); err != nil {
		s.fail(fmt.Errorf("subscribe to tc events: %w", err))
	} else {
		go func() { <-ctx.Done(); tc.Close() }()
		go func() {
			for {
				if _, _, err := tc.Receive(); err != nil {
					if ctx.Err() == nil && !errors.Is(err, unix.ENOBUFS) {
						s.fail(fmt.Errorf("tc events: %w", err))
						return
					}
					if ctx.Err() != nil {
						return
					}
				}
				s.Trigger()
			}
		}()
	}
	s.loop.Run(ctx)
}

// followLinks calls trigger on every link event. A subscription the kernel breaks (its
// socket overran) is renewed, with a trigger, since events were lost; closing it at
// shutdown is not an error.
func followLinks(ctx context.Context, trigger func(), fail func(error)) {
	for ctx.Err() == nil {
		updates := make(chan netlink.LinkUpdate, 64)
		done := make(chan struct{})
		report := func(err error) {
			if ctx.Err() == nil {
				fail(err)
			}
		}
		if err := netlink.LinkSubscribeWithOptions(updates, done, netlink.LinkSubscribeOptions{ErrorCallback: report}); err != nil {
			report(fmt.Errorf("subscribe to link events: %w", err))
		} else {
			closeAtShutdown := func() { close(done) }
			stop := context.AfterFunc(ctx, closeAtShutdown)
			for range updates {
				trigger()
			}
			if stop() {
				closeAtShutdown()
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
			trigger()
		}
	}
}

// foreignTC lists the devices whose traffic another tool controls with tc: a root qdisc
// other than the default (the bandwidth plugin's tbf), or an ingress/clsact qdisc carrying
// filters that are not weft's (its redirect to an IFB). The fast path must not carry
// those pods' packets around that qdisc, so they leave it.
func foreignTC(h *netlink.Handle) (map[int]bool, error) {
	qdiscs, err := netlinkx.Retry(func() ([]netlink.Qdisc, error) { return h.QdiscList(nil) })
	if err != nil {
		return nil, fmt.Errorf("list qdiscs: %w", err)
	}
	out := map[int]bool{}
	for _, q := range qdiscs {
		a := q.Attrs()
		switch {
		case q.Type() == "ingress":
			out[a.LinkIndex] = true
		case q.Type() == "clsact":
			if hasForeignFilter(h, a.LinkIndex) {
				out[a.LinkIndex] = true
			}
		case a.Parent == netlink.HANDLE_ROOT && q.Type() != "noqueue":
			out[a.LinkIndex] = true
		}
	}
	return out, nil
}

func hasForeignFilter(h *netlink.Handle, ifindex int) bool {
	l, err := h.LinkByIndex(ifindex)
	if err != nil {
		return false
	}
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		filters, _ := h.FilterList(l, parent)
		for _, f := range filters {
			if bf, ok := f.(*netlink.BpfFilter); !ok || bf.Name != fastpath.FilterName {
				return true
			}
		}
	}
	return false
}

// role says which program the device with this name carries.
func (s *fastpathSync) role(name string) fastpath.Role {
	switch name {
	case s.uplink:
		return fastpath.RoleUplink
	case s.tunnel:
		return fastpath.RoleTunnel
	}
	return fastpath.RolePod
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
	foreign, err := foreignTC(h)
	if err != nil {
		return err
	}
	want := map[fastpath.Key]fastpath.Value{}
	var toAttach, toDetach []netlink.Link
	seen := map[string]bool{}
	keepPins := map[int]bool{}
	yielded := 0
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
		if foreign[attrs.Index] {
			// Shaped or filtered by another plugin: neither redirected into nor out of.
			yielded++
			if s.attached[cacheKey] || verify || !s.yielded[cacheKey] {
				toDetach = append(toDetach, l)
			}
			continue
		}
		seen[cacheKey] = true
		keepPins[attrs.Index] = true
		mac := owner.PodMAC
		flags := s.policyFlags(al)
		for _, ip := range al.IPs {
			v := fastpath.ValueOf(attrs.Index, mac)
			v.Flags = flags
			want[fastpath.KeyOf(ip.Address.Addr())] = v
		}
		if !s.attached[cacheKey] || (verify && !s.fp.Attached(h, l, fastpath.RolePod)) {
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
		keepPins[l.Attrs().Index] = true
		if !s.attached[cacheKey] || (verify && !s.fp.Attached(h, l, s.role(name))) {
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
		if err := s.fp.Attach(h, l, s.role(l.Attrs().Name)); err != nil && !netlinkx.IsNotFound(err) {
			return err
		}
		s.attached[fmt.Sprintf("%d/%s", l.Attrs().Index, l.Attrs().Alias)] = true
	}
	// With the map no longer naming them, nothing is redirected into the yielded pods;
	// now their own traffic stops being redirected out.
	s.yielded = map[string]bool{}
	for _, l := range toDetach {
		if err := s.fp.Detach(h, l); err != nil {
			return err
		}
		s.yielded[fmt.Sprintf("%d/%s", l.Attrs().Index, l.Attrs().Alias)] = true
	}
	s.yieldedPods.Store(int64(yielded))
	return s.fp.SweepPins(keepPins)
}
