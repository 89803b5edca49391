package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/dataplane/fastpath"
	"github.com/weftnet/weft/internal/proxy"
	"github.com/weftnet/weft/internal/proxy/nftproxy"
	"github.com/weftnet/weft/internal/proxy/nodeportlb"
	"github.com/weftnet/weft/internal/proxy/sockproxy"
	"github.com/weftnet/weft/internal/reconcile"
	"github.com/weftnet/weft/internal/resources"
)

// serviceProxy programs the cluster's services on this node: it reads the shared cache,
// computes the desired state (proxy.Compute), tells the fast path which packets are
// service replies, programs nftables, and clears the conntrack flows of endpoints that
// went away. Triggers only mark it dirty; one sync renders everything.
type serviceProxy struct {
	node  string
	cache *resources.Cache
	nft   *nftproxy.Proxy
	fast  *fastpath.Fastpath // nil: no fast path to keep replies off
	loop  *reconcile.Loop

	// sock is the socket-level load balancer in front of nftables (--proxy ebpf); nil:
	// nftables alone. podNetns lists the node's pod namespaces, whose sockets it
	// translates; cookies caches their netns cookies by path.
	sock     *sockproxy.Proxy
	np       *nodeportlb.Balancer // node ports' Maglev choice in tc (with sock)
	podNetns func() ([]string, error)
	cookies  map[string]netnsCookie
	aborted  prometheus.Counter

	syncSeconds prometheus.Histogram
	ports       prometheus.Gauge
	endpoints   prometheus.Gauge
	flushed     prometheus.Counter
	// last is the state last programmed; weft_proxy_service_endpoints is read from it
	// at each scrape (a labelled gauge kept per service would cost memory and work on
	// every sync at thousands of services).
	lastMu sync.Mutex
	last   proxy.State
	// programming: from an endpoint change in the Kubernetes API (its trigger time) to
	// this node's proxy programmed with it; observed marks what was measured, by service.
	programming prometheus.Histogram
	observed    map[string]time.Time
	// local are addresses this node answers itself (its DNS): a Service on one of them
	// (Kubernetes' kube-dns) is not balanced, or its DNAT would take the queries away.
	local []netip.Addr
}

// proxyDelay gathers a burst of changes (a deployment rolling) into one sync; well under
// the one second a change may take to reach every node.
const proxyDelay = 10 * time.Millisecond

func newServiceProxy(node string, cache *resources.Cache, fast *fastpath.Fastpath, reg prometheus.Registerer, report func(error)) *serviceProxy {
	p := &serviceProxy{
		node: node, cache: cache, nft: nftproxy.New(), fast: fast,
		syncSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "weft_proxy_sync_seconds", Help: "Time to program the service proxy (nftables, fast path map, conntrack cleanup) per sync.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		ports:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "weft_proxy_service_ports", Help: "Service ports (per address family) programmed on this node."}),
		endpoints: prometheus.NewGauge(prometheus.GaugeOpts{Name: "weft_proxy_endpoints", Help: "Service endpoints known to this node's proxy."}),
		flushed:   prometheus.NewCounter(prometheus.CounterOpts{Name: "weft_proxy_conntrack_flows_deleted_total", Help: "Conntrack flows to endpoints that went away, deleted so clients move at once."}),
	}
	p.programming = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "weft_network_programming_duration_seconds",
		Help:    "Kubernetes mode: from an endpoint change in the API (the EndpointSlice's last-change-trigger-time) to this node's proxy programmed with it; kube-proxy's network_programming_duration_seconds.",
		Buckets: []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60},
	})
	p.aborted = prometheus.NewCounter(prometheus.CounterOpts{Name: "weft_proxy_sockets_aborted_total", Help: "Pod TCP sockets the socket load balancer pointed at an endpoint that went away, aborted so clients move at once."})
	reg.MustRegister(p.syncSeconds, p.ports, p.endpoints, p.flushed, p.aborted, p.programming, servicePortsCollector{p})
	p.loop = reconcile.New(proxyDelay, p.sync, report).
		WithResync(30 * time.Second).
		WithBackoff(reconcile.Backoff{Min: 100 * time.Millisecond, Max: 10 * time.Second})
	cache.OnChange(func(k resources.Kind) {
		if k == resources.KindPod || k == resources.KindService {
			p.loop.Trigger()
		}
	})
	return p
}

func (p *serviceProxy) run(ctx context.Context) {
	p.loop.Trigger()
	p.loop.Run(ctx)
}

func (p *serviceProxy) sync() error {
	if !p.cache.Synced() {
		return nil // an empty cache would withdraw every service
	}
	if !nftproxy.TableExists() {
		p.nft.Reset() // someone removed it (or this is the first sync): write it whole
	}
	start := time.Now()
	services := slices.DeleteFunc(p.cache.Services(), func(s v1.Service) bool {
		return slices.ContainsFunc(s.ClusterIPs, func(a netip.Addr) bool { return slices.Contains(p.local, a) })
	})
	want := proxy.Compute(proxy.Node{Name: p.node}, services, p.cache.Pods())
	// The fast path learns the new endpoints before any DNAT to them exists.
	if p.fast != nil {
		keys := make(map[fastpath.EndpointKey]uint32, len(want.Endpoints))
		for _, k := range want.Endpoints {
			keys[fastpath.EndpointKeyOf(k.IP, k.Proto, k.Port)] = 1
		}
		if err := p.fast.SyncEndpoints(keys); err != nil {
			return fmt.Errorf("fast path endpoint map: %w", err)
		}
	}
	// The socket load balancer first: pods' new connections see a change as soon as its
	// maps do (it sends them to endpoints directly, needing nothing of nftables).
	if p.sock != nil {
		if err := p.syncSockets(want); err != nil {
			return err
		}
	}
	st, err := p.nft.Sync(want)
	if err != nil {
		return err
	}
	if p.sock != nil {
		if err := p.abortSockets(st.Removed); err != nil {
			return err
		}
	}
	if p.np != nil {
		// After the table: the indices it marks are the table's numbering.
		if err := p.np.Sync(want); err != nil {
			return fmt.Errorf("node port balancer: %w", err)
		}
	}
	if len(st.Removed) > 0 {
		n, err := deleteFlows(st.Removed)
		p.flushed.Add(float64(n))
		if err != nil {
			return fmt.Errorf("conntrack cleanup: %w", err)
		}
	}
	p.lastMu.Lock()
	p.last = want
	p.lastMu.Unlock()
	p.syncSeconds.Observe(time.Since(start).Seconds())
	p.observeProgramming(services, time.Now())
	p.ports.Set(float64(st.Ports))
	p.endpoints.Set(float64(st.Endpoints))
	return nil
}

var servicePortEndpoints = prometheus.NewDesc("weft_proxy_service_endpoints",
	"Backends this node sends new connections of a service port to, by service (namespace/name), port and family.",
	[]string{"service", "port", "family"}, nil)

// servicePortsCollector reports weft_proxy_service_endpoints from the last programmed state.
type servicePortsCollector struct{ p *serviceProxy }

func (c servicePortsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- servicePortEndpoints }

func (c servicePortsCollector) Collect(ch chan<- prometheus.Metric) {
	c.p.lastMu.Lock()
	ports := c.p.last.Ports
	c.p.lastMu.Unlock()
	for _, port := range ports { // (a state is never changed once built)
		if port.LoadBalancer {
			continue // the service port's own line counts its backends
		}
		fam := "IPv4"
		if port.Is6() {
			fam = "IPv6"
		}
		name := port.PortName
		if name == "" {
			name = fmt.Sprint(port.Port)
		}
		ch <- prometheus.MustNewConstMetric(servicePortEndpoints, prometheus.GaugeValue, float64(len(port.Backends)), port.Service, name, fam)
	}
}

// observeProgramming records, once per change, how long each service's latest endpoint
// change took from the API to programmed here.
// The first sync programs what changed before this weftd started: not measured (as
// kube-proxy does), only remembered.
func (p *serviceProxy) observeProgramming(services []v1.Service, now time.Time) {
	first := p.observed == nil
	seen := make(map[string]time.Time, len(p.observed))
	for _, s := range services {
		if s.ChangedAt.IsZero() {
			continue
		}
		key := s.Key()
		if last, ok := p.observed[key]; !first && (!ok || s.ChangedAt.After(last)) {
			p.programming.Observe(max(now.Sub(s.ChangedAt), 0).Seconds())
		}
		seen[key] = s.ChangedAt
	}
	p.observed = seen
}

type netnsCookie struct {
	ino, cookie uint64
}

// syncSockets programs the socket load balancer: the same services, for the sockets of
// the node's pods.
func (p *serviceProxy) syncSockets(want proxy.State) error {
	paths, err := p.podNetns()
	if err != nil {
		return err
	}
	next := make(map[string]netnsCookie, len(paths))
	pods := make(map[uint64]bool, len(paths))
	for _, path := range paths {
		var st syscall.Stat_t
		if err := syscall.Stat(path, &st); err != nil {
			continue // the pod is going away
		}
		c, ok := p.cookies[path]
		if !ok || c.ino != st.Ino {
			cookie, err := sockproxy.NetnsCookie(path)
			if err != nil {
				continue
			}
			c = netnsCookie{ino: st.Ino, cookie: cookie}
		}
		next[path], pods[c.cookie] = c, true
	}
	p.cookies = next
	if err := p.sock.Sync(want, pods); err != nil {
		return fmt.Errorf("socket load balancer: %w", err)
	}
	return nil
}

// abortSockets aborts the pods' TCP sockets the socket load balancer pointed at
// endpoints that went away (conntrack cleanup cannot move them: they were never NATed).
func (p *serviceProxy) abortSockets(removed []proxy.Key) error {
	gone := map[netip.AddrPort]bool{}
	for _, k := range removed {
		if k.Proto == proxy.ProtoTCP {
			gone[netip.AddrPortFrom(k.IP, k.Port)] = true
		}
	}
	if len(gone) == 0 {
		return nil
	}
	var errs []error
	for path := range p.cookies {
		n, err := sockproxy.DestroyConnectionsTo(path, gone)
		p.aborted.Add(float64(n))
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// deleteFlows removes the conntrack entries DNATed to the given endpoints: a UDP client
// then reaches a live endpoint with its next datagram, and a TCP client's next segment is
// answered with a reset by the endpoint it now lands on, instead of waiting out a timeout.
func deleteFlows(gone []proxy.Key) (uint, error) {
	f := flowsTo{keys: map[proxy.Key]bool{}}
	for _, k := range gone {
		f.keys[k] = true
	}
	var total uint
	var errs []error
	for _, fam := range []netlink.InetFamily{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		n, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, fam, f)
		total += n
		if err != nil {
			errs = append(errs, err)
		}
	}
	return total, errors.Join(errs...)
}

// flowsTo matches flows whose reply comes from one of keys after a DNAT.
type flowsTo struct{ keys map[proxy.Key]bool }

func (f flowsTo) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool {
	r := flow.Reverse
	ip, ok := netip.AddrFromSlice(r.SrcIP)
	ip = ip.Unmap()
	if !ok || r.SrcIP.Equal(flow.Forward.DstIP) {
		return false // not DNATed
	}
	return f.keys[proxy.Key{IP: ip, Proto: flow.Forward.Protocol, Port: r.SrcPort}]
}

var _ netlink.CustomConntrackFilter = flowsTo{}
