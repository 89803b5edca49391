package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/dataplane/fastpath"
	"github.com/weftnet/weft/internal/dataplane/overlay"
	"github.com/weftnet/weft/internal/fabric"
	"github.com/weftnet/weft/internal/kube"
	"github.com/weftnet/weft/internal/lease"
	"github.com/weftnet/weft/internal/netlinkx"
	"github.com/weftnet/weft/internal/reconcile"
	"github.com/weftnet/weft/internal/resources"
	"github.com/weftnet/weft/internal/store"
)

// ClusterOptions configure cluster membership.
type ClusterOptions struct {
	// Store is weft's cluster store: the configuration, and membership through leases
	// (`--ipam weft`). Nil under Members.
	Store store.Store
	// Members, if set, is where the node's blocks and peers come from instead of the
	// store (the Kubernetes API's Node objects); Config then comes with it.
	Members     Membership
	Config      *v1.ClusterConfig
	NodeName    string
	UnderlayDev string
	StateDir    string
	TTL         time.Duration
	// RouteReflector marks the node a route reflector under fabric bgp.
	RouteReflector bool
	Log            *slog.Logger
}

// Membership is where a node gets its pod blocks and learns its peers: weft's store
// (leases and node keys) or the Kubernetes API (Node objects).
type Membership interface {
	// Join registers self and returns its pod blocks.
	Join(ctx context.Context, self v1.Node) ([]netip.Prefix, error)
	// Run keeps the membership (renewing, following the other nodes) until ctx ends,
	// calling changed whenever the peers may have changed.
	Run(ctx context.Context, changed func()) error
	// Peers are every node and the blocks of those that have them.
	Peers(ctx context.Context) ([]v1.Node, []v1.Lease, error)
}

// Cluster is this node's membership: its config, blocks and fabric.
type Cluster struct {
	o        ClusterOptions
	cfg      v1.ClusterConfig
	node     v1.Node
	podCIDRs []netip.Prefix
	under    netip.Prefix
	mtu      int
	members  Membership
	fabric   *reconcile.Loop
	// onRemote receives, after each fabric sync, where every other node's pod block goes,
	// for the eBPF fast path to send there directly.
	onRemote func(map[fastpath.RemoteKey]fastpath.RemoteValue) error
	// bgp is fabric bgp's speaker; nil under the other fabrics.
	bgp *bgpFabric
	// warnedBlocks: the node's blocks changed under it, said once.
	warnedBlocks atomic.Bool
}

// Join reads (or waits for) the cluster configuration, registers the node and takes its
// blocks.
func Join(ctx context.Context, o ClusterOptions) (*Cluster, error) {
	if o.TTL == 0 {
		o.TTL = 20 * time.Second
	}
	c := &Cluster{o: o, members: o.Members}
	if o.Config != nil {
		c.cfg = *o.Config
	} else if err := c.readConfig(ctx); err != nil {
		return nil, err
	}
	if c.members == nil {
		c.members = &storeMembers{st: o.Store, cfg: c.cfg, mgr: &lease.Manager{Store: o.Store, Node: o.NodeName, TTL: o.TTL}, leaseFile: filepath.Join(o.StateDir, "lease.json"), log: o.Log}
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
	if c.podCIDRs, err = c.members.Join(ctx, c.node); err != nil {
		return nil, err
	}
	if err := c.checkBlocks(); err != nil {
		return nil, err
	}
	c.fabric = reconcile.New(100*time.Millisecond, func() error { return c.syncFabric(context.Background()) }, func(err error) {
		if err != nil {
			o.Log.Warn("fabric sync failed", "err", err)
		}
	})
	return c, nil
}

// readConfig waits for `weft cluster init` to have written the configuration.
func (c *Cluster) readConfig(ctx context.Context) error {
	for {
		kv, err := c.o.Store.Get(ctx, resources.ConfigKey)
		if err == nil {
			if err := json.Unmarshal(kv.Value, &c.cfg); err != nil {
				return fmt.Errorf("cluster config: %w", err)
			}
			return nil
		}
		if !errors.Is(err, store.ErrNotFound) {
			c.o.Log.Warn("cannot read the cluster config yet", "err", err)
		} else {
			c.o.Log.Info("waiting for `weft cluster init`")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// checkBlocks refuses pod blocks outside the cluster's CIDRs (a node IPAM configured
// with other networks than weft's): their traffic would be NATed and unrouted.
func (c *Cluster) checkBlocks() error {
	if len(c.podCIDRs) == 0 {
		return errors.New("the node has no pod CIDR")
	}
	for _, b := range c.podCIDRs {
		if !slices.ContainsFunc(c.cfg.ClusterCIDRs, func(p netip.Prefix) bool { return p.Bits() <= b.Bits() && p.Contains(b.Addr()) }) {
			return fmt.Errorf("the node's pod CIDR %s is outside the cluster CIDRs %v", b, c.cfg.ClusterCIDRs)
		}
	}
	return nil
}

// PodCIDRs are this node's blocks.
func (c *Cluster) PodCIDRs() []netip.Prefix { return c.podCIDRs }

// Config is the cluster configuration.
func (c *Cluster) Config() v1.ClusterConfig { return c.cfg }

// tunnel is this node's VXLAN endpoint for the fast path, or nil without VXLAN.
func (c *Cluster) tunnel() *fastpath.Tunnel {
	if !c.cfg.Tunnels() {
		return nil
	}
	vni, port := fabric.TunnelParams(c.cfg)
	return &fastpath.Tunnel{Port: uint16(port), VNI: uint32(vni), VTEPMAC: fabric.VTEPMAC(c.o.NodeName)}
}

// PodMTU is the underlay MTU minus the fabric's encapsulation.
func (c *Cluster) PodMTU() int { return c.mtu }

// Run keeps the membership and the fabric converged until ctx ends.
func (c *Cluster) Run(ctx context.Context) error {
	go c.fabric.Run(ctx)
	c.fabric.Trigger()
	go func() {
		resync := time.NewTicker(30 * time.Second)
		defer resync.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-resync.C:
				c.fabric.Trigger()
			}
		}
	}()
	return c.members.Run(ctx, c.fabric.Trigger)
}

func (c *Cluster) syncFabric(ctx context.Context) error {
	nodes, leases, err := c.members.Peers(ctx)
	if errors.Is(err, kube.ErrNotSynced) {
		return nil // Run says when the view is complete
	}
	if err != nil {
		return err
	}
	byNode := map[string]v1.Lease{}
	for _, l := range leases {
		byNode[l.Node] = l
	}
	if own, ok := byNode[c.node.Name]; ok && !slices.Equal(own.PodCIDRs, c.podCIDRs) && c.warnedBlocks.CompareAndSwap(false, true) {
		// (A Node object deleted and made again gets new blocks from the node IPAM.)
		c.o.Log.Error("the node's pod CIDRs changed while weftd ran: restart weftd and the node's pods", "serving", fmt.Sprint(c.podCIDRs), "now", fmt.Sprint(own.PodCIDRs))
	}
	var peers []fabric.Peer
	var all []v1.Node
	for _, n := range nodes {
		if n.VTEPMAC == "" {
			n.VTEPMAC = fabric.VTEPMAC(n.Name).String() // derived from the name, as the node itself does
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
	self := v1.Lease{Node: c.node.Name, PodCIDRs: c.podCIDRs}
	st, err := fabric.Desired(c.cfg, fabric.Self{Node: c.node, Lease: self, Underlay: c.under}, peers)
	if err != nil {
		return err
	}
	if c.bgp != nil {
		c.bgp.setTunnelled(st.Tunnelled()) // before the VXLAN routes replace BGP's
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
