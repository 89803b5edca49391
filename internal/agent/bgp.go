package agent

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/bgp"
	"github.com/weftnet/weft/internal/dataplane/routed"
	"github.com/weftnet/weft/internal/endpoints"
	"github.com/weftnet/weft/internal/reconcile"
	"github.com/weftnet/weft/internal/resources"
)

// sweepGrace is how long the speaker's view must have been complete before stale kernel
// routes are deleted.
const sweepGrace = time.Second

// stuckAfter is how long a session may stay short of Established before the node reports
// it (weft status, /healthz, CNI STATUS).
var stuckAfter = 30 * time.Second

// bgpFabric is fabric bgp on this node: the speaker announces the node's pod blocks and
// peers as the cluster says; the routes it learns go into the kernel.
type bgpFabric struct {
	c        *Cluster
	sp       *bgp.Speaker
	kernel   *reconcile.Loop
	announce *reconcile.Loop
	cache    *resources.Cache
	cfg      v1.BGPConfig
	removed  atomic.Bool // the node was removed from the cluster: announce nothing

	kern *routed.Kernel // syncKernel's, opened on first use

	mu        sync.Mutex
	installed int
	// tunnelled are the pod blocks the fabric carries in VXLAN (CrossSubnetVXLAN): BGP's
	// routes for them stay out of the kernel. A change asks for a full sync (resync).
	tunnelled map[netip.Prefix]bool
	resync    atomic.Bool
	swept     atomic.Bool // a kernel sync has run with a complete view (stale routes gone)
	syncedAt  time.Time   // when the speaker first said its view was complete (syncKernel's)
}

func (c *Cluster) bgpMarker() string { return filepath.Join(c.o.StateDir, "bgp.announced") }

// startBGP runs the speaker, its kernel-route loop and its announcement loop under the
// agent's group.
func (a *Agent) startBGP(g *group, c *Cluster, cache *resources.Cache) error {
	cfg := *c.cfg.BGP
	self := c.node
	routerID, ok := firstV4(self.Underlay)
	if !ok {
		return fmt.Errorf("bgp: node %s has no IPv4 underlay address for a router ID", self.Name)
	}
	export := append([]netip.Prefix(nil), c.cfg.ClusterCIDRs...)
	if cfg.AnnounceServices {
		export = append(export, c.cfg.ServiceCIDRs...)
	}
	export = append(export, cfg.LoadBalancerCIDRs...)
	_, err := os.Stat(c.bgpMarker())
	restarting := err == nil
	f := &bgpFabric{c: c, cfg: cfg, cache: cache}
	f.kernel = reconcile.New(0, f.syncKernel, func(err error) {
		a.setProblem("bgp-routes", err)
		if err != nil {
			c.o.Log.Warn("installing BGP routes failed", "err", err)
		}
	})
	sp, err := bgp.Start(context.Background(), bgp.Config{
		ASN: cfg.ASN, RouterID: routerID, ListenAddrs: self.Underlay, Accept: c.cfg.ClusterCIDRs, Export: export,
		Restarting: restarting, Log: c.o.Log,
	}, f.kernel.Trigger)
	if err != nil {
		return err
	}
	if restarting {
		c.o.Log.Info("bgp: restarting gracefully; peers keep this node's routes meanwhile")
	}
	f.sp = sp
	f.announce = reconcile.New(10*time.Millisecond, f.syncAnnouncements, func(err error) {
		a.setProblem("bgp-announce", err)
		if err != nil {
			c.o.Log.Warn("BGP announcements failed", "err", err)
		}
	}).WithBackoff(reconcile.Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second})
	if cfg.AnnouncesServiceAddrs() {
		cache.OnChange(func(k resources.Kind) {
			if k == resources.KindPod || k == resources.KindService {
				f.announce.Trigger()
			}
		})
	}
	c.bgp = f
	g.Loop("bgp-announce", f.announce.Run)
	a.metrics.reg.MustRegister(bgpCollector{f})
	g.Loop("bgp-routes", f.kernel.Run)
	g.Loop("bgp-health", func(ctx context.Context) {
		tick := time.NewTicker(2 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				// No Stop: the sessions end with the process, without a Cease, so peers
				// keep this node's routes through a restart (graceful restart).
				return
			case <-tick.C:
				a.setProblem("bgp", f.stuckPeers(ctx))
				if !f.swept.Load() {
					f.kernel.Trigger() // the sweep waits for a complete view, or the sync deadline
				}
			}
		}
	})
	return nil
}

// setTunnelled says which pod blocks the fabric routes through VXLAN; the kernel's BGP
// routes leave those alone, and take back a block that stops being tunnelled.
func (f *bgpFabric) setTunnelled(blocks map[netip.Prefix]bool) {
	f.mu.Lock()
	changed := !maps.Equal(f.tunnelled, blocks)
	f.tunnelled = blocks
	f.mu.Unlock()
	if changed {
		f.resync.Store(true)
		f.kernel.Trigger()
	}
}

// sync makes the speaker's peers and announcements follow the cluster.
func (f *bgpFabric) sync(ctx context.Context, nodes []v1.Node) error {
	// External peers: the configuration's, and the store's when there is one.
	peers := slices.Clone(f.cfg.Peers)
	if f.c.o.Store != nil {
		stored, err := (resources.Client{Store: f.c.o.Store}).ListBGPPeers(ctx)
		if err != nil {
			return err
		}
		peers = append(peers, stored...)
	}
	self := f.c.node
	if err := f.sp.SetPeers(ctx, bgp.PlanPeers(f.cfg, self, nodes, peers)); err != nil {
		return err
	}
	f.removed.Store(!slices.ContainsFunc(nodes, func(n v1.Node) bool { return n.Name == self.Name }))
	f.announce.Trigger()
	return nil
}

// syncAnnouncements makes the announced prefixes follow the node's blocks and, with
// announceServices, the service ranges plus the address of every service with
// externalTrafficPolicy Local that has a ready endpoint on this node (a host route, so
// routers send its traffic only to such nodes: MetalLB's and kube-router's behaviour);
// with loadBalancerCIDRs, the load balancer addresses in them (under policy Local, again
// only where an endpoint is).
func (f *bgpFabric) syncAnnouncements() error {
	var extra []netip.Prefix
	if f.cfg.AnnounceServices {
		extra = append(extra, f.c.cfg.ServiceCIDRs...)
	}
	if f.cfg.AnnouncesServiceAddrs() {
		if !f.cache.Synced() {
			return nil // an empty cache would withdraw every service address
		}
		extra = append(extra, serviceAddrs(f.c.node.Name, f.cfg, f.cache.Services(), f.cache.Pods())...)
	}
	want := bgp.PlanAnnouncements(f.c.node, f.c.podCIDRs, extra)
	if f.removed.Load() {
		// Removed from the cluster (weft cluster remove-node): withdraw everything, so
		// every router and node forgets this node's blocks now rather than when its
		// sessions time out.
		want = nil
	}
	if err := f.sp.Announce(context.Background(), want); err != nil {
		return err
	}
	return os.WriteFile(f.c.bgpMarker(), []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o644)
}

// serviceAddrs are the host routes (/32, /128) node announces for services beyond the
// service ranges: with announceServices, the addresses of services with
// externalTrafficPolicy Local that have a ready, serving endpoint on node; with
// loadBalancerCIDRs, the load balancer addresses in them, under policy Local likewise
// only where such an endpoint is.
func serviceAddrs(node string, cfg v1.BGPConfig, services []v1.Service, pods []v1.Pod) []netip.Prefix {
	var out []netip.Prefix
	host := func(a netip.Addr) { out = append(out, netip.PrefixFrom(a, a.BitLen())) }
	for i := range services {
		svc := &services[i]
		var lbs []netip.Addr
		for _, a := range svc.LoadBalancerIPs {
			if slices.ContainsFunc(cfg.LoadBalancerCIDRs, func(p netip.Prefix) bool { return p.Contains(a) }) {
				lbs = append(lbs, a)
			}
		}
		local := svc.ExternalTrafficPolicy == v1.TrafficPolicyLocal
		if !local {
			for _, a := range lbs {
				host(a)
			}
			continue
		}
		if len(lbs) == 0 && (!cfg.AnnounceServices || len(svc.ClusterIPs) == 0) {
			continue
		}
		ready := false
		for _, port := range endpoints.For(svc, pods) {
			for _, e := range endpoints.Local(endpoints.Serving(port.Endpoints), node) {
				ready = ready || e.Ready
			}
		}
		if !ready {
			continue
		}
		if cfg.AnnounceServices {
			for _, a := range svc.ClusterIPs {
				host(a)
			}
		}
		for _, a := range lbs {
			host(a)
		}
	}
	return out
}

func (f *bgpFabric) syncKernel() (err error) {
	if f.kern == nil {
		if f.kern, err = routed.Open(""); err != nil {
			return err
		}
	}
	// The sweep waits a little past the speaker's first "complete": the End-of-RIB that
	// makes it complete can be seen before GoBGP has moved the routes it deferred during
	// a graceful restart into its table, and a sweep then would drop routes for a moment.
	synced := f.sp.Synced()
	if synced && f.syncedAt.IsZero() {
		f.syncedAt = time.Now()
	}
	synced = synced && time.Since(f.syncedAt) >= sweepGrace
	// Once swept, the kernel follows the speaker both ways whatever happens to Synced
	// later (a new peer set waits for its End-of-RIBs): a withdrawal must not wait.
	sweep := synced && !f.swept.Load()
	synced = synced || f.swept.Load()

	// Usually only what changed since the last sync goes to the kernel. Every route goes
	// (and the kernel's are compared with them) when the speaker read its table again,
	// when the kernel's record of its routes is to be read again (never read, a failed
	// change, or its age), and for the sweep.
	f.mu.Lock()
	tunnelled := f.tunnelled
	f.mu.Unlock()
	if tunnelled == nil && f.cfg.CrossSubnetVXLAN {
		return nil // wait for the fabric to say which blocks it tunnels (setTunnelled triggers)
	}
	resync := f.resync.Swap(false)
	defer func() {
		if err != nil && resync {
			f.resync.Store(true) // the full sync it asked for is still owed
		}
	}()
	routes, all, err := f.sp.Changes()
	if err != nil {
		return err
	}
	if !all && (f.kern.NeedsSync() || sweep || resync) {
		if routes, err = f.sp.Routes(); err != nil {
			return err
		}
		all = true
	}
	kernel := make([]routed.Route, 0, len(routes))
	for _, r := range routes {
		// Never route this node's own block away, nor one the fabric tunnels.
		if !slices.Contains(f.c.podCIDRs, r.Prefix) && !tunnelled[r.Prefix] {
			kernel = append(kernel, routed.Route{Dst: r.Prefix, NextHops: r.NextHops})
		}
	}
	var res routed.Result
	if all {
		res, err = f.kern.Sync(kernel, synced)
		if synced && err == nil {
			f.swept.Store(true)
		}
	} else {
		res, err = f.kern.Update(kernel)
	}
	f.mu.Lock()
	f.installed = f.kern.Learned()
	f.mu.Unlock()
	if res.Installed+res.Replaced+res.Deleted > 0 {
		f.c.o.Log.Info("bgp routes", "installed", res.Installed, "replaced", res.Replaced, "deleted", res.Deleted, "unresolved", res.Unresolved)
	}
	return err
}

func (f *bgpFabric) stuckPeers(ctx context.Context) error {
	ps, err := f.sp.Peers(ctx)
	if err != nil {
		return err
	}
	var stuck []string
	for _, p := range ps {
		if p.State != "established" && time.Since(p.DownSince) > stuckAfter {
			stuck = append(stuck, fmt.Sprintf("peer %s (%s, AS %d) %s, not established since %s", p.Name, p.Address, p.ASN, p.State, p.DownSince.UTC().Format(time.RFC3339)))
		}
	}
	if len(stuck) > 0 {
		return fmt.Errorf("%s", strings.Join(stuck, "; "))
	}
	return nil
}

// status is `weft bgp peers|routes` for this node.
func (f *bgpFabric) status(ctx context.Context) (*v1.BGPStatus, error) {
	ps, err := f.sp.Peers(ctx)
	if err != nil {
		return nil, err
	}
	rs, err := f.sp.Routes()
	if err != nil {
		return nil, err
	}
	id, _ := firstV4(f.c.node.Underlay)
	out := &v1.BGPStatus{ASN: f.cfg.ASN, RouterID: id.String(), Peers: []v1.BGPPeerStatus{}, Routes: []v1.BGPRoute{}, Announced: []v1.BGPRoute{}}
	for _, p := range ps {
		out.Peers = append(out.Peers, v1.BGPPeerStatus(p))
	}
	for _, r := range rs {
		out.Routes = append(out.Routes, v1.BGPRoute{Prefix: r.Prefix, NextHops: r.NextHops})
	}
	for _, a := range f.sp.Announced() {
		out.Announced = append(out.Announced, v1.BGPRoute{Prefix: a.Prefix, NextHops: []netip.Addr{a.NextHop}})
	}
	return out, nil
}

func firstV4(as []netip.Addr) (netip.Addr, bool) {
	for _, a := range as {
		if a.Is4() {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// bgpCollector reports sessions and routes at scrape time.
type bgpCollector struct{ f *bgpFabric }

var (
	bgpSessionUp = prometheus.NewDesc("weft_bgp_session_up", "1 when the BGP session is Established.", []string{"peer", "address"}, nil)
	bgpReceived  = prometheus.NewDesc("weft_bgp_prefixes_received", "Prefixes received from the peer.", []string{"peer", "address"}, nil)
	bgpAccepted  = prometheus.NewDesc("weft_bgp_prefixes_accepted", "Prefixes received from the peer and accepted by the import filter.", []string{"peer", "address"}, nil)
	bgpSent      = prometheus.NewDesc("weft_bgp_prefixes_advertised", "Prefixes advertised to the peer.", []string{"peer", "address"}, nil)
	bgpInstalled = prometheus.NewDesc("weft_bgp_routes_installed", "BGP-learned routes in the node's kernel.", nil, nil)
)

func (bgpCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{bgpSessionUp, bgpReceived, bgpAccepted, bgpSent, bgpInstalled} {
		ch <- d
	}
}

func (c bgpCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	ps, _ := c.f.sp.Peers(ctx)
	for _, p := range ps {
		up := 0.0
		if p.State == "established" {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(bgpSessionUp, prometheus.GaugeValue, up, p.Name, p.Address)
		ch <- prometheus.MustNewConstMetric(bgpReceived, prometheus.GaugeValue, float64(p.Received), p.Name, p.Address)
		ch <- prometheus.MustNewConstMetric(bgpAccepted, prometheus.GaugeValue, float64(p.Accepted), p.Name, p.Address)
		ch <- prometheus.MustNewConstMetric(bgpSent, prometheus.GaugeValue, float64(p.Advertised), p.Name, p.Address)
	}
	c.f.mu.Lock()
	n := c.f.installed
	c.f.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(bgpInstalled, prometheus.GaugeValue, float64(n))
}
