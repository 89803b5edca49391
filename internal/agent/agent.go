// Package agent is weftd: it composes the node store, IPAM, the CNI socket, the node
// contract, NAT and metrics, and keeps the node's kernel state converged.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"k8s.io/client-go/kubernetes"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/cniapi"
	"github.com/weftnet/weft/internal/dataplane/fastpath"
	"github.com/weftnet/weft/internal/dataplane/masq"
	"github.com/weftnet/weft/internal/fabric"
	"github.com/weftnet/weft/internal/hostnet"
	"github.com/weftnet/weft/internal/ipam"
	"github.com/weftnet/weft/internal/kube"
	"github.com/weftnet/weft/internal/lease"
	"github.com/weftnet/weft/internal/netcalc"
	"github.com/weftnet/weft/internal/podnet"
	"github.com/weftnet/weft/internal/policy"
	"github.com/weftnet/weft/internal/policy/nftpolicy"
	"github.com/weftnet/weft/internal/proxy/nftproxy"
	"github.com/weftnet/weft/internal/proxy/nodeportlb"
	"github.com/weftnet/weft/internal/proxy/sockproxy"
	"github.com/weftnet/weft/internal/reconcile"
	"github.com/weftnet/weft/internal/resources"
	"github.com/weftnet/weft/internal/store"
	"github.com/weftnet/weft/internal/store/boltstore"
)

// Options configure an agent.
type Options struct {
	NodeName      string
	StateDir      string
	RunDir        string
	PodCIDRs      []netip.Prefix
	ClusterCIDRs  []netip.Prefix // the whole cluster's pod networks: never NATed, not tracked
	MTU           int            // 0: the MTU of the default route's device, else 1500
	MetricsAddr   string
	Pprof         bool // serve /debug/pprof/ beside /metrics
	ManageSysctls bool
	Fastpath      bool   // short-cut same-node pod-to-pod traffic with eBPF when the kernel allows
	AntiSpoof     bool   // pods may send only from their own addresses and MAC
	BPFDir        string // weftd's own bpffs for pinned tcx links; "": RunDir/bpf
	Proxy         string // service proxy in cluster mode: "nftables" (default), "ebpf", "auto" or "none"
	// Kube, when set (weftd --kubeconfig), is the Kubernetes API the cluster's services,
	// endpoints, pods, namespaces and network policies are read from.
	Kube         kubernetes.Interface
	DNSUpstreams []string // where the node's DNS server forwards other names (host:port); none: it does not
	Preflight    bool     // refuse to start when a pod CIDR overlaps the node's addresses or routes
	Cluster      *Cluster // cluster membership (lease, fabric); nil on a single host
	Masquerade   bool
	ResyncEvery  time.Duration
	Log          *slog.Logger
}

// Agent is a running weftd.
type Agent struct {
	opts      Options
	store     *boltstore.Store
	alloc     *ipam.Allocator
	metrics   *metrics
	reaper    *reconcile.Loop      // deletes retired veths (see podnet.Retire)
	fast      *fastpathSync        // nil when the fast path is off or unavailable
	spoof     *antispoofSync       // nil when anti-spoofing is off
	publish   *reconcile.Loop      // this node's pods into the cluster store; nil on a single host
	dnsAddrs  []netip.Addr         // the cluster DNS addresses this node answers on
	proxyMode string               // the service proxy running: nftables, ebpf or none
	sock      *sockproxy.Proxy     // the socket load balancer (--proxy ebpf/auto), nil if off
	np        *nodeportlb.Balancer // the node port balancer (likewise)
	dnsDomain string

	mu       sync.Mutex
	problems map[string]string // component → what is wrong, for STATUS

	// policedPods are the rules of the node's pods a network policy selects, by address
	// (the fast path enforces them too); nil until the policy enforcer's first sync.
	policedPods atomic.Pointer[map[netip.Addr]policy.PodRules]
	// drops are the recent packets dropped by policy or anti-spoofing (weft policy log);
	// nil while neither runs.
	drops *dropLog

	natMu   sync.Mutex // one NAT render at a time
	portsMu sync.Mutex // host-port clash check and allocation happen as one step
}

// New opens the node store and prepares the agent; Run starts it.
func New(opts Options) (*Agent, error) {
	if len(opts.PodCIDRs) == 0 {
		return nil, errors.New("no pod CIDR configured (--pod-cidr)")
	}
	for _, p := range opts.PodCIDRs {
		if p != p.Masked() {
			return nil, fmt.Errorf("pod CIDR %s has host bits set (did you mean %s?)", p, p.Masked())
		}
		if p.Addr().BitLen()-p.Bits() < 2 {
			return nil, fmt.Errorf("pod CIDR %s is too small for a gateway and a pod", p)
		}
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.ResyncEvery == 0 {
		opts.ResyncEvery = 30 * time.Second
	}
	st, err := boltstore.Open(filepath.Join(opts.StateDir, "node.db"))
	if err != nil {
		return nil, err
	}
	a := &Agent{opts: opts, store: st, alloc: ipam.New(st), problems: map[string]string{}}
	a.metrics = newMetrics(a)
	// The delay gathers the veths of a burst of DELs into one deletion, which pays the
	// kernel's RCU grace period once for all of them.
	a.reaper = reconcile.New(reapDelay, podnet.ReapAll, func(err error) {
		if err != nil {
			a.opts.Log.Warn("reaping retired veths failed", "err", err)
		}
	})
	return a, nil
}

// Close releases the node store.
func (a *Agent) Close() error { return a.store.Close() }

// NodeSets are the range sets of the node's pod CIDRs; the first usable address of each is
// the gateway.
func (a *Agent) NodeSets() []ipam.RangeSet {
	var sets []ipam.RangeSet
	for _, p := range a.opts.PodCIDRs {
		first, _ := netcalc.UsableBounds(p)
		sets = append(sets, ipam.RangeSet{{Subnet: p, Gateway: first}})
	}
	return sets
}

// Run starts the agent and blocks until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	log := a.opts.Log
	if a.opts.Preflight {
		if err := a.preflight(); err != nil {
			return err
		}
	}
	if freed, err := a.SweepDeadNamespaces(); err != nil {
		log.Warn("sweep of dead attachments failed", "err", err)
	} else if len(freed) > 0 {
		log.Info("released allocations of vanished pods", "count", len(freed))
	}
	if a.opts.ManageSysctls {
		if err := enableForwarding(); err != nil {
			return fmt.Errorf("enable forwarding: %w", err)
		}
	}
	a.syncDataplane()
	g := newGroup(ctx)
	if a.opts.Fastpath {
		a.startFastpath(g)
	}
	g.Loop("reaper", a.reaper.Run)
	a.reaper.Trigger() // veths retired while weftd was down
	if a.opts.AntiSpoof || a.opts.Cluster != nil {
		a.drops = &dropLog{}
	}
	if a.opts.AntiSpoof {
		a.spoof = a.startAntiSpoof(g)
		a.drops.spoof = a.spoof.chainOwner
	}
	// One link subscription for every component that follows the node's links.
	if a.fast != nil || a.spoof != nil {
		g.Loop("link-events", func(ctx context.Context) {
			followLinks(ctx, func() {
				if a.fast != nil {
					a.fast.Trigger()
				}
				if a.spoof != nil {
					a.spoof.Trigger()
				}
			}, func(err error) { a.opts.Log.Warn("following link events", "err", err) })
		})
	}
	contract := cniapi.NodeContract{
		NodeName: a.opts.NodeName,
		PodCIDRs: a.opts.PodCIDRs,
		MTU:      a.mtu(),
		Fabric:   "none",
		Socket:   a.socketPath(),
	}
	if c := a.opts.Cluster; c != nil {
		contract.Fabric = c.Config().Fabric
		var cache *resources.Cache
		if a.opts.Kube != nil {
			// Kubernetes mode: services, endpoints, pods, namespaces and policies come from
			// the Kubernetes API.
			var feeder *resources.Feeder
			cache, feeder = resources.NewFedCache()
			src := &kube.Source{Client: a.opts.Kube, Log: a.opts.Log}
			if c.o.Store != nil {
				// The nodes and their blocks are weft's (--ipam weft), yet the API is the
				// authority on membership: a Node deleted there is forgotten here.
				src.NodeDeleted = func(name string) { a.forgetNode(c.o.Store, name) }
			}
			g.Go("kubernetes", func(ctx context.Context) error { return src.Run(ctx, feeder) })
		} else {
			cache = resources.NewCache(c.o.Store)
			g.Go("cache", cache.Run)
		}
		if m, ok := c.members.(*storeMembers); ok {
			a.startPodPublisher(g, m)
		}
		if err := a.startServiceProxy(g, cache); err != nil {
			return errors.Join(err, g.Wait())
		}
		contract.Proxy = a.proxyMode
		a.startDNS(g, c, cache)
		a.startPolicy(g, cache) // after DNS: policies govern pods' queries to it
		if len(a.dnsAddrs) > 0 {
			contract.DNSServers, contract.DNSDomain = a.dnsAddrs, a.dnsDomain
		}
		if c.Config().Fabric == v1.FabricBGP {
			if err := a.startBGP(g, c, cache); err != nil {
				return errors.Join(err, g.Wait())
			}
		}
		g.Go("cluster", c.Run)
	}
	for _, s := range a.NodeSets() {
		contract.Gateways = append(contract.Gateways, s[0].Gateway)
	}

	if a.drops != nil {
		g.Loop("drop-log", func(ctx context.Context) { a.drops.run(ctx, a.opts.Log.Warn) })
	}
	g.Go("cni-socket", func(ctx context.Context) error { return cniapi.Serve(ctx, a.socketPath(), a.Handle) })
	if a.opts.MetricsAddr != "" {
		g.Go("metrics", a.serveMetrics)
	}
	// The contract goes out once the socket is accepting, so a pod that sees it can ADD.
	if err := waitForSocket(ctx, a.socketPath()); err != nil {
		return errors.Join(err, g.Wait())
	}
	if err := cniapi.WriteNodeContract(a.opts.RunDir, contract); err != nil {
		return errors.Join(fmt.Errorf("write node contract: %w", err), g.Wait())
	}
	log.Info("weftd ready", "node", a.opts.NodeName, "podCIDRs", fmt.Sprint(a.opts.PodCIDRs), "mtu", contract.MTU, "socket", a.socketPath())

	g.Loop("resync", func(ctx context.Context) {
		tick := time.NewTicker(a.opts.ResyncEvery)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				a.syncDataplane()
				a.reaper.Trigger()
				a.kickFastpath()
			}
		}
	})
	<-g.Done()
	err := g.Wait() // every component has stopped
	if a.fast != nil {
		a.fast.fp.Close() // the attached programs keep running without weftd
	}
	if a.sock != nil {
		a.sock.Close() // likewise: its links are pinned
	}
	if a.np != nil {
		a.np.Close()
	}
	return err
}

// forgetNode removes a node deleted from the Kubernetes API from weft's store
// (registration and leases), so every peer drops its routes.
func (a *Agent) forgetNode(st store.Store, name string) {
	if name == a.opts.NodeName {
		return // the others forget this one
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if n, err := resources.RemoveNode(ctx, st, lease.Prefix, name); err != nil {
		a.opts.Log.Warn("forgetting a node deleted from the Kubernetes API", "node", name, "err", err)
	} else if n > 1 {
		a.opts.Log.Info("forgot a node deleted from the Kubernetes API", "node", name)
	}
}

// syncDataplane renders and applies the node's NAT; failures are reported through STATUS
// and retried at the next resync.
func (a *Agent) syncDataplane() {
	a.natMu.Lock()
	defer a.natMu.Unlock()
	t := masq.Table{PodCIDRs: netcalc.Summarize(append(append([]netip.Prefix(nil), a.opts.PodCIDRs...), a.opts.ClusterCIDRs...))}
	for _, set := range a.NodeSets() {
		t.LocalAddrs = append(t.LocalAddrs, set[0].Gateway, set[0].Subnet.Masked().Addr()) // gateway, VTEP
	}
	if c := a.opts.Cluster; c != nil && c.cfg.Tunnels() {
		t.TunnelPort = c.cfg.Port
		if t.TunnelPort == 0 {
			t.TunnelPort = fabric.DefaultPort
		}
	}
	if a.opts.Masquerade {
		t.Masq = masq.Rules(a.opts.PodCIDRs, a.opts.ClusterCIDRs)
	}
	allocs, err := a.alloc.List()
	if err == nil {
		for _, al := range allocs {
			for _, m := range al.Ports {
				for _, ip := range al.IPs {
					if m.HostIP.IsValid() && m.HostIP.Is4() != ip.Address.Addr().Is4() {
						continue
					}
					t.Ports = append(t.Ports, masq.PortRule{Mapping: m, PodIP: ip.Address.Addr()})
				}
			}
		}
		err = masq.Apply(t)
	}
	a.setProblem("nat", err)
	if err != nil {
		a.opts.Log.Error("NAT sync failed", "err", err)
	}
}

func (a *Agent) startFastpath(g *group) {
	var tun *fastpath.Tunnel
	if a.opts.Cluster != nil {
		tun = a.opts.Cluster.tunnel()
	}
	fp, err := fastpath.Load(tun)
	if err != nil {
		a.opts.Log.Warn("eBPF fast path unavailable; pod-to-pod traffic takes the normal path", "err", err)
		return
	}
	if err := fp.UseTCX(a.bpfDir()); err != nil {
		a.opts.Log.Warn("no bpffs for tcx links; the fast path attaches with clsact filters", "err", err)
	}
	if fp.NoConntrack != nil {
		a.opts.Log.Info("the fast path cannot ask conntrack; connections to service endpoints' ports take the kernel's path", "err", fp.NoConntrack)
	}
	a.fast = newFastpathSync(fp, a.alloc, func(err error) {
		if err != nil {
			a.opts.Log.Warn("fast path sync failed", "err", err)
		}
	})
	a.fast.policed = a.policedRules
	// Until the policy component's first sync, the pods the kernel's table polices are
	// policed on the fast path with no rule, which sends all their traffic to the table
	// (it survived a restart; its pods must not be bypassed).
	if m, err := nftpolicy.Policed(-1); err == nil && len(m) > 0 {
		seed := map[netip.Addr]policy.PodRules{}
		for ip := range m {
			seed[ip] = policy.PodRules{Ingress: &policy.Rules{}, Egress: &policy.Rules{}}
		}
		a.policedPods.Store(&seed)
	}
	// Likewise the service endpoints: until the proxy's first sync (which waits for the
	// cluster's view), replies from the backends the kernel's table still DNATs to must
	// meet conntrack, or a connection made across the restart would see the backend's own
	// address instead of the service's.
	if nftproxy.TableExists() {
		if eps, err := nftproxy.ProgrammedEndpoints(); err == nil {
			keys := make(map[fastpath.EndpointKey]uint32, len(eps))
			for _, k := range eps {
				keys[fastpath.EndpointKeyOf(k.IP, k.Proto, k.Port)] = 1
			}
			if err := fp.SyncEndpoints(keys); err != nil {
				a.opts.Log.Warn("fast path: seeding service endpoints", "err", err)
			}
		}
	}
	a.metrics.reg.MustRegister(fastpathCollector{fp: fp, yielded: a.fast.yieldedPods.Load})
	if c := a.opts.Cluster; c != nil {
		a.fast.uplink, a.fast.tunnel = c.o.UnderlayDev, fabric.DeviceName
		c.onRemote = fp.SyncRemote
	}
	g.Loop("fastpath", a.fast.run)
	a.fast.Trigger()
}

// startServiceProxy runs the shared cache of the cluster's resources and the service
// proxy that reads it.
func (a *Agent) startServiceProxy(g *group, cache *resources.Cache) error {
	a.proxyMode = "none"
	if a.opts.Proxy == "none" {
		if nftproxy.TableExists() {
			_ = nftproxy.Delete()
		}
		return errors.Join(sockproxy.Detach(filepath.Join(a.bpfDir(), "sock")), nodeportlb.Detach(filepath.Join(a.bpfDir(), "nodeport")))
	}
	if a.opts.ManageSysctls {
		if err := nftproxy.PrepareNode(); err != nil {
			// Bridge-mode pods reaching a backend on their own node get no answer then.
			a.setProblem("proxy-sysctls", err)
			a.opts.Log.Error("service proxy: same-node replies in bridge mode will not be translated", "err", err)
		}
	}
	var fp *fastpath.Fastpath
	if a.fast != nil {
		fp = a.fast.fp
	}
	sp := newServiceProxy(a.opts.NodeName, cache, fp, a.metrics.reg, func(err error) {
		a.setProblem("proxy", err)
		if err != nil {
			a.opts.Log.Warn("service proxy sync failed; retrying at the next change or resync", "err", err)
		}
	})
	c := a.opts.Cluster
	if c != nil {
		sp.local = resources.DNSAddrs(c.cfg.ServiceCIDRs) // startDNS answers them
		sp.nft.PodNetworks(c.cfg.ClusterCIDRs)
	} else if len(a.opts.PodCIDRs) > 0 {
		sp.nft.PodNetworks(a.opts.PodCIDRs) // a single host: its own pod networks
	}
	announcesServices := c != nil && c.cfg.Fabric == v1.FabricBGP && c.cfg.BGP.AnnouncesServiceAddrs()
	if announcesServices {
		// Routers send outside clients to service addresses: their replies must come
		// back through the node that translated them.
		sp.nft.MasqueradeExternal(c.cfg.ClusterCIDRs, c.cfg.ServiceCIDRs)
	}
	a.proxyMode = "nftables"
	sockDir, npDir := filepath.Join(a.bpfDir(), "sock"), filepath.Join(a.bpfDir(), "nodeport")
	if a.opts.Proxy == "ebpf" || a.opts.Proxy == "auto" {
		sock, err := loadSocketLB(sockDir)
		switch {
		case err == nil:
			sp.sock, sp.podNetns, a.sock = sock, a.podNetns, sock
			a.proxyMode = "ebpf"
			if np, err := a.loadNodePortLB(npDir); err != nil {
				a.opts.Log.Warn("eBPF node port balancing unavailable; node ports pick backends at random", "err", err)
			} else {
				sp.np, a.np = np, np
				sp.nft.UseMaglevMarks()
				if announcesServices {
					np.BalanceAddresses()
				}
			}
		case a.opts.Proxy == "ebpf":
			return fmt.Errorf("--proxy ebpf: %w", err)
		default:
			a.opts.Log.Warn("eBPF socket load balancing unavailable; the nftables proxy carries all service traffic", "err", err)
		}
	}
	if a.sock == nil {
		// nftables alone: the programs of an earlier --proxy ebpf come off.
		if err := sockproxy.Detach(sockDir); err != nil {
			a.opts.Log.Warn("removing the socket load balancer of an earlier run", "err", err)
		}
	}
	if a.np == nil {
		if err := nodeportlb.Detach(npDir); err != nil {
			a.opts.Log.Warn("removing the node port balancer of an earlier run", "err", err)
		}
	}
	g.Loop("service-proxy", sp.run)
	return nil
}

// loadSocketLB loads the socket load balancer (adopting an earlier weftd's maps) and puts
// it on the host's cgroup v2 root.
func loadSocketLB(dir string) (*sockproxy.Proxy, error) {
	root, err := sockproxy.CgroupRoot()
	if err != nil {
		return nil, err
	}
	sock, err := sockproxy.Load(dir)
	if err != nil {
		return nil, err
	}
	if err := sock.Attach(root); err != nil {
		sock.Close()
		return nil, err
	}
	return sock, nil
}

// loadNodePortLB loads the node port balancer and puts it on the underlay device's
// ingress, where node port traffic from outside arrives.
func (a *Agent) loadNodePortLB(dir string) (*nodeportlb.Balancer, error) {
	c := a.opts.Cluster
	if c == nil || c.o.UnderlayDev == "" {
		return nil, errors.New("no underlay device")
	}
	l, err := netlink.LinkByName(c.o.UnderlayDev)
	if err != nil {
		return nil, fmt.Errorf("underlay device %s: %w", c.o.UnderlayDev, err)
	}
	np, err := nodeportlb.Load(dir)
	if err != nil {
		return nil, err
	}
	if err := np.Attach(l.Attrs().Index); err != nil {
		np.Close()
		return nil, fmt.Errorf("attach to %s: %w", c.o.UnderlayDev, err)
	}
	return np, nil
}

// podNetns lists the network namespaces of the node's pods.
func (a *Agent) podNetns() ([]string, error) {
	allocs, err := a.alloc.List()
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out []string
	for _, al := range allocs {
		if al.Netns != "" && !seen[al.Netns] {
			seen[al.Netns] = true
			out = append(out, al.Netns)
		}
	}
	return out, nil
}

// bpfDir is the bpffs instance where weftd pins its eBPF objects.
func (a *Agent) bpfDir() string {
	if a.opts.BPFDir != "" {
		return a.opts.BPFDir
	}
	return filepath.Join(a.opts.RunDir, "bpf")
}

// kickFastpath says the node's attachments changed: the fast path map and the published
// pods follow.
func (a *Agent) kickFastpath() {
	if a.fast != nil {
		a.fast.Trigger()
	}
	if a.spoof != nil {
		a.spoof.Trigger()
	}
	if a.publish != nil {
		a.publish.Trigger()
	}
}

const reapDelay = 100 * time.Millisecond

// preflight is `weft subnet check --from-host` for the node's pod CIDRs: a pod CIDR that
// overlaps an address or route of the node would make pods unreachable or hijack traffic.
func (a *Agent) preflight() error {
	host, err := hostnet.Prefixes()
	if err != nil {
		return fmt.Errorf("preflight: %w", err)
	}
	conflicts := netcalc.Check(netcalc.CheckRequest{ClusterCIDRs: a.opts.PodCIDRs, Host: host})
	if len(conflicts) == 0 {
		return nil
	}
	var msgs []string
	for _, c := range conflicts {
		msgs = append(msgs, fmt.Sprintf("%s conflicts with %s: %s", c.What, c.With, c.Reason))
	}
	return fmt.Errorf("preflight failed (start with --preflight=false to override): %s", strings.Join(msgs, "; "))
}

// SweepDeadNamespaces frees allocations whose pod namespace no longer exists.
func (a *Agent) SweepDeadNamespaces() ([]ipam.Allocation, error) {
	return a.alloc.ReleaseWhere(func(al ipam.Allocation) bool {
		if al.Netns == "" {
			return false
		}
		_, err := os.Stat(al.Netns)
		return errors.Is(err, os.ErrNotExist)
	})
}

func (a *Agent) setProblem(component string, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err == nil {
		delete(a.problems, component)
	} else {
		a.problems[component] = err.Error()
	}
}

// Status summarises health for CNI STATUS and `weft status`.
func (a *Agent) Status() cniapi.Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := cniapi.Status{Ready: len(a.problems) == 0}
	for c, p := range a.problems {
		st.Problems = append(st.Problems, c+": "+p)
	}
	return st
}

func (a *Agent) socketPath() string { return filepath.Join(a.opts.RunDir, "weft.sock") }

func (a *Agent) mtu() int {
	if a.opts.MTU > 0 {
		return a.opts.MTU
	}
	if m, err := defaultRouteMTU(); err == nil && m > 0 {
		return m
	}
	return 1500
}

// enableForwarding sets the sysctls of weftd's own network namespace: forwarding on, and
// bridged frames kept out of the IP netfilter hooks. With br_netfilter present a new
// namespace starts with bridge-nf-call-iptables=1, which would run every pod-to-pod frame
// on a weft bridge through conntrack; weft filters routed traffic only, in nftables.
func enableForwarding() error {
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
		return err
	}
	// IPv6 may be disabled on the node; that only matters to IPv6 pods.
	_ = os.WriteFile("/proc/sys/net/ipv6/conf/all/forwarding", []byte("1"), 0o644)
	for _, k := range []string{"bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables"} {
		// Absent without br_netfilter, which is what we want anyway. (The service proxy
		// turns the first two back on: see nftproxy.PrepareNode.)
		_ = os.WriteFile("/proc/sys/net/bridge/"+k, []byte("0"), 0o644)
	}
	return nil
}

func waitForSocket(ctx context.Context, path string) error {
	for range 200 {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	return fmt.Errorf("socket %s did not appear", path)
}

// errCode maps allocator errors to CNI codes.
func errCode(err error) *cniapi.Error {
	code := uint(cniapi.CodeInternal)
	switch {
	case errors.Is(err, ipam.ErrExhausted):
		code = cniapi.CodeExhausted
	case errors.Is(err, ipam.ErrAddressInUse):
		code = cniapi.CodeAddressInUse
	case errors.Is(err, ipam.ErrAddressNotInRange):
		code = cniapi.CodeNotInRange
	case errors.Is(err, ipam.ErrInvalidRange):
		code = cniapi.CodeInvalidConfig
	}
	return &cniapi.Error{Code: code, Msg: err.Error()}
}

func joinKeys(keys []ipam.Key) string {
	s := make([]string, len(keys))
	for i, k := range keys {
		s[i] = k.String()
	}
	return strings.Join(s, ",")
}
