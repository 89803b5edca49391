package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/dataplane/fastpath"
	"github.com/weftnet/weft/internal/dataplane/overlay"
	"github.com/weftnet/weft/internal/fabric"
	"github.com/weftnet/weft/internal/lease"
	"github.com/weftnet/weft/internal/netlinkx"
	"github.com/weftnet/weft/internal/reconcile"
	"github.com/weftnet/weft/internal/resources"
	"github.com/weftnet/weft/internal/store"
)

// ClusterOptions configure cluster membership.
type ClusterOptions struct {
	Store       store.Store
	NodeName    string
	UnderlayDev string
	StateDir    string
	TTL         time.Duration
	// RouteReflector marks the node a route reflector under fabric bgp.
	RouteReflector bool
	Log            *slog.Logger
}

// Cluster is this node's membership: its config, lease and fabric.
type Cluster struct {
	o      ClusterOptions
	cfg    v1.ClusterConfig
	node   v1.Node
	under  netip.Prefix
	mtu    int
	mgr    *lease.Manager
	held   *lease.Held
	fabric *reconcile.Loop
	// onRemote receives, after each fabric sync, where every other node's pod block goes,
	// for the eBPF fast path to send there directly.
	onRemote func(map[fastpath.RemoteKey]fastpath.RemoteValue) error
	// leaseID is the store lease of the node's keys (its pods are published under it);
	// onLease hears when it changes.
	leaseID atomic.Int64
	onLease func()
	// bgp is fabric bgp's speaker; nil under the other fabrics.
	bgp *bgpFabric
}

// Join waits for the cluster configuration, registers the node and takes its lease.
func Join(ctx context.Context, o ClusterOptions) (*Cluster, error) {
	if o.TTL == 0 {
		o.TTL = 20 * time.Second
	}
	c := &Cluster{o: o, mgr: &lease.Manager{Store: o.Store, Node: o.NodeName, TTL: o.TTL}}
	for {
		kv, err := o.Store.Get(ctx, resources.ConfigKey)
		if err == nil {
			if err := json.Unmarshal(kv.Value, &c.cfg); err != nil {
				return nil, fmt.Errorf("cluster config: %w", err)
			}
			break
		}
		if !errors.Is(err, store.ErrNotFound) {
			o.Log.Warn("cannot read the cluster config yet", "err", err)
		} else {
			o.Log.Info("waiting for `weft cluster init`")
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
	dev, err := netlink.LinkByName(o.UnderlayDev)
	if err != nil {
		return nil, fmt.Errorf("underlay device %q: %w", o.UnderlayDev, err)
	}
	addrs, err := netlinkx.Retry(func() ([]netlink.Addr, error) { return netlink.AddrList(dev, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("underlay device %s: %w", o.UnderlayDev, err)
	}
	// The tunnel runs over the first IPv4 address; IPv6 ones let direct routing carry
	// IPv6 pod blocks.
	var underlay []netip.Addr
	for _, fam := range []bool{true, false} {
		for _, a := range addrs {
			ip, _ := netip.AddrFromSlice(a.IP)
			ip = ip.Unmap()
			if ip.Is4() != fam || !ip.IsGlobalUnicast() {
				continue
			}
			if !c.under.IsValid() {
				ones, _ := a.Mask.Size()
				c.under = netip.PrefixFrom(ip, ones)
			}
			underlay = append(underlay, ip)
		}
	}
	if !c.under.IsValid() || !c.under.Addr().Is4() {
		return nil, fmt.Errorf("underlay device %s has no IPv4 address", o.UnderlayDev)
	}
	c.mtu = fabric.PodMTU(c.cfg, dev.Attrs().MTU, false)
	c.node = v1.Node{Name: o.NodeName, Underlay: underlay, VTEPMAC: fabric.VTEPMAC(o.NodeName).String(), RouteReflector: o.RouteReflector}
	if err := c.acquire(ctx); err != nil {
		return nil, err
	}
	c.fabric = reconcile.New(100*time.Millisecond, func() error { return c.syncFabric(context.Background()) }, func(err error) {
		if err != nil {
			o.Log.Warn("fabric sync failed", "err", err)
		}
	})
	return c, nil
}

func (c *Cluster) leaseFile() string { return filepath.Join(c.o.StateDir, "lease.json") }

// acquire takes the lease (preferring the blocks this node had) and registers the node
// under the same store lease, so both vanish together when the node stops renewing.
func (c *Cluster) acquire(ctx context.Context) error {
	var prefer []netip.Prefix
	if b, err := os.ReadFile(c.leaseFile()); err == nil {
		var l v1.Lease
		if json.Unmarshal(b, &l) == nil {
			prefer = l.PodCIDRs
		}
	}
	held, err := c.mgr.Acquire(ctx, c.cfg, prefer)
	if err != nil {
		return fmt.Errorf("acquire pod CIDR: %w", err)
	}
	nb, _ := json.Marshal(c.node)
	if _, err := c.o.Store.Txn(ctx, nil, []store.Op{{Key: resources.NodeKey(c.o.NodeName), Value: nb, Lease: held.StoreID}}); err != nil {
		return fmt.Errorf("register node: %w", err)
	}
	c.held = held
	c.leaseID.Store(held.StoreID)
	if c.onLease != nil {
		c.onLease()
	}
	lb, _ := json.Marshal(held.Lease)
	_ = os.MkdirAll(c.o.StateDir, 0o700)
	return os.WriteFile(c.leaseFile(), lb, 0o600)
}

// PodCIDRs are this node's blocks.
func (c *Cluster) PodCIDRs() []netip.Prefix { return c.held.Lease.PodCIDRs }

// Config is the cluster configuration.
func (c *Cluster) Config() v1.ClusterConfig { return c.cfg }

// tunnel is this node's VXLAN endpoint for the fast path, or nil without VXLAN.
func (c *Cluster) tunnel() *fastpath.Tunnel {
	if c.cfg.Fabric != v1.FabricVXLAN {
		return nil
	}
	vni, port := fabric.TunnelParams(c.cfg)
	return &fastpath.Tunnel{Port: uint16(port), VNI: uint32(vni), VTEPMAC: fabric.VTEPMAC(c.o.NodeName)}
}

// PodMTU is the underlay MTU minus the fabric's encapsulation.
func (c *Cluster) PodMTU() int { return c.mtu }

// Run renews the lease and keeps the fabric converged until ctx ends.
func (c *Cluster) Run(ctx context.Context) error {
	go c.fabric.Run(ctx)
	c.fabric.Trigger()
	go c.watch(ctx)
	renew := time.NewTicker(c.o.TTL / 3)
	defer renew.Stop()
	resync := time.NewTicker(30 * time.Second)
	defer resync.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-resync.C:
			c.fabric.Trigger()
		case <-renew.C:
			err := c.mgr.Renew(ctx, c.held)
			if errors.Is(err, store.ErrLeaseNotFound) {
				c.o.Log.Warn("lease expired; taking it again", "podCIDRs", fmt.Sprint(c.held.Lease.PodCIDRs))
				old := fmt.Sprint(c.held.Lease.PodCIDRs)
				if err := c.acquire(ctx); err != nil {
					c.o.Log.Error("re-acquire failed", "err", err)
				} else if now := fmt.Sprint(c.held.Lease.PodCIDRs); now != old {
					c.o.Log.Error("the node's pod CIDR changed while it was away: restart its pods", "was", old, "now", now)
				}
			} else if err != nil {
				c.o.Log.Warn("lease renewal failed; retrying", "err", err)
			}
		}
	}
}

// watch triggers a fabric sync on every change of nodes or leases; when a watch ends (the
// store restarted, history compacted), it starts again from a fresh list.
func (c *Cluster) watch(ctx context.Context) {
	for ctx.Err() == nil {
		ch, err := c.o.Store.Watch(ctx, resources.Root, 0)
		if err == nil {
			c.fabric.Trigger()
			for e := range ch {
				if strings.HasPrefix(e.KV.Key, resources.NodesPrefix) || strings.HasPrefix(e.KV.Key, lease.Prefix) ||
					strings.HasPrefix(e.KV.Key, resources.BGPPeersPrefix) {
					c.fabric.Trigger()
				}
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (c *Cluster) syncFabric(ctx context.Context) error {
	nodes, _, err := c.o.Store.List(ctx, resources.NodesPrefix)
	if err != nil {
		return err
	}
	leases, err := lease.List(ctx, c.o.Store)
	if err != nil {
		return err
	}
	byNode := map[string]v1.Lease{}
	for _, l := range leases {
		byNode[l.Node] = l
	}
	var peers []fabric.Peer
	var all []v1.Node
	for _, kv := range nodes {
		var n v1.Node
		if json.Unmarshal(kv.Value, &n) != nil {
			continue
		}
		all = append(all, n)
		if l, ok := byNode[n.Name]; ok {
			peers = append(peers, fabric.Peer{Node: n, Lease: l})
		}
	}
	if c.bgp != nil {
		if err := c.bgp.sync(ctx, all); err != nil {
			return fmt.Errorf("bgp: %w", err)
		}
	}
	st, err := fabric.Desired(c.cfg, fabric.Self{Node: c.node, Lease: c.held.Lease, Underlay: c.under}, peers)
	if err != nil {
		return err
	}
	h := &netlink.Handle{}
	if err := overlay.Apply(h, c.o.NodeName, st, overlay.Underlay{Device: c.o.UnderlayDev, Addr: c.under.Addr()}, c.mtu); err != nil {
		return err
	}
	if c.onRemote == nil {
		return nil
	}
	ifindex := map[bool]int{}
	for vxlan, name := range map[bool]string{true: fabric.DeviceName, false: c.o.UnderlayDev} {
		if l, err := h.LinkByName(name); err == nil {
			ifindex[vxlan] = l.Attrs().Index
		}
	}
	remote := map[fastpath.RemoteKey]fastpath.RemoteValue{}
	for _, r := range st.Routes {
		if idx := ifindex[r.VXLAN]; idx != 0 {
			remote[fastpath.RemoteKeyOf(r.Dst)] = fastpath.RemoteValueOf(idx, r.Via)
		}
	}
	return c.onRemote(remote)
}
