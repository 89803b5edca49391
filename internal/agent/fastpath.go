package agent

import (
	"context"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/dataplane/fastpath"
	"github.com/weftnet/weft/internal/ipam"
	"github.com/weftnet/weft/internal/netlinkx"
	"github.com/weftnet/weft/internal/podnet"
)

// fastpathSync keeps the eBPF fast path converged: every live host veth carries the
// program, and the map lists exactly the addresses of the pods behind them. Triggers (link
// events, allocations, the periodic resync) only mark it dirty; each pass recomputes the
// whole desired state from the node store and the kernel's links.
type fastpathSync struct {
	fp    *fastpath.Fastpath
	alloc *ipam.Allocator
	kick  chan struct{}
	macs  map[string]net.HardwareAddr // "ifindex/alias" → pod MAC, so a pass need not enter pods
	fail  func(error)
}

func newFastpathSync(fp *fastpath.Fastpath, alloc *ipam.Allocator, fail func(error)) *fastpathSync {
	return &fastpathSync{fp: fp, alloc: alloc, kick: make(chan struct{}, 1), macs: map[string]net.HardwareAddr{}, fail: fail}
}

func (s *fastpathSync) Trigger() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

func (s *fastpathSync) run(ctx context.Context) {
	updates := make(chan netlink.LinkUpdate, 64)
	done := make(chan struct{})
	defer close(done)
	if err := netlink.LinkSubscribeWithOptions(updates, done, netlink.LinkSubscribeOptions{ErrorCallback: s.fail}); err != nil {
		s.fail(fmt.Errorf("subscribe to link events: %w", err))
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-updates:
			s.Trigger()
		case <-s.kick:
			s.fail(s.sync())
		}
	}
}

func (s *fastpathSync) sync() error {
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
		network, cid, ifName, ok := podnet.ParseAlias(attrs.Alias)
		if !ok || l.Type() != "veth" || attrs.Group == podnet.ReapGroup {
			continue
		}
		al, ok := byKey[ipam.Key{Network: network, ContainerID: cid, IfName: ifName}]
		if !ok {
			continue // allocation not committed yet, or already released
		}
		cacheKey := fmt.Sprintf("%d/%s", attrs.Index, attrs.Alias)
		seen[cacheKey] = true
		mac, ok := s.macs[cacheKey]
		if !ok {
			if mac, err = podMAC(al.Netns, ifName); err != nil {
				continue // the pod is still being plumbed, or gone: next pass
			}
			s.macs[cacheKey] = mac
		}
		for _, ip := range al.IPs {
			want[fastpath.KeyOf(ip.Address.Addr())] = fastpath.ValueOf(attrs.Index, mac)
		}
		if !s.fp.Attached(h, l) {
			toAttach = append(toAttach, l)
		}
	}
	for k := range s.macs {
		if !seen[k] {
			delete(s.macs, k)
		}
	}
	// The map first, then the filters: a freshly attached program finds its entries.
	if err := s.fp.Sync(want); err != nil {
		return err
	}
	for _, l := range toAttach {
		if err := s.fp.Attach(h, l); err != nil && !netlinkx.IsNotFound(err) {
			return err
		}
	}
	return nil
}

func podMAC(netnsPath, ifName string) (net.HardwareAddr, error) {
	h, err := netlinkx.HandleAt(netnsPath)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	l, err := h.LinkByName(ifName)
	if err != nil {
		return nil, err
	}
	return l.Attrs().HardwareAddr, nil
}
