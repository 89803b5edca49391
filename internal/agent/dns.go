package agent

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/dns"
	"github.com/weftnet/weft/internal/reconcile"
	"github.com/weftnet/weft/internal/resources"
)

// startDNS runs the node's DNS server on the cluster DNS addresses, bound to this node's
// loopback: every node answers them itself, so a pod's query is delivered locally, never
// DNATed, and parallel A and AAAA queries from one socket cannot race in conntrack's NAT
// (kubernetes#56903). Records are rebuilt from the shared cache on every change.
func (a *Agent) startDNS(g *group, c *Cluster, cache *resources.Cache) {
	cfg := c.Config()
	addrs := resources.DNSAddrs(cfg.ServiceCIDRs)
	if len(addrs) == 0 {
		return // no service CIDR: no cluster DNS
	}
	domain := cfg.Domain
	if domain == "" {
		domain = "cluster.local"
	}
	srv := &dns.Server{
		Allowed:   append(append([]netip.Prefix(nil), cfg.ClusterCIDRs...), a.opts.PodCIDRs...),
		Upstreams: a.opts.DNSUpstreams,
	}
	for _, ad := range addrs {
		srv.Allowed = append(srv.Allowed, netip.PrefixFrom(ad, ad.BitLen()))
	}
	queries := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "weft_dns_queries_total",
		Help: "DNS queries answered by this node, by type, rcode and whether the cache answered."}, []string{"type", "rcode", "cached"})
	refused := prometheus.NewCounter(prometheus.CounterOpts{Name: "weft_dns_refused_total", Help: "Queries refused: the client is outside the pod networks and the node."})
	upstream := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "weft_dns_upstream_duration_seconds",
		Help: "Time to an answer from an upstream resolver, by upstream and result.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}, []string{"upstream", "result"})
	a.metrics.reg.MustRegister(queries, refused, upstream)
	srv.OnUpstream = func(up string, took time.Duration, err error) {
		result := "ok"
		if err != nil {
			result = "error"
		}
		upstream.WithLabelValues(up, result).Observe(took.Seconds())
	}
	srv.OnQuery = func(t uint16, rcode int, cached bool) {
		queries.WithLabelValues(mdns.TypeToString[t], mdns.RcodeToString[rcode], fmt.Sprint(cached)).Inc()
	}
	var lastLog atomic.Int64 // unix nanoseconds; queries are served concurrently
	srv.OnRefused = func(client netip.Addr) {
		refused.Inc()
		now := time.Now().UnixNano()
		if last := lastLog.Load(); now-last > int64(10*time.Second) && lastLog.CompareAndSwap(last, now) { // rate-limited
			a.opts.Log.Warn("DNS query refused: client outside the pod networks", "client", client.String())
		}
	}
	rebuild := reconcile.New(10*time.Millisecond, func() error {
		if !cache.Synced() {
			return nil
		}
		srv.SetRecords(dns.Build(dns.ConfigFor(cfg), cache.Services(), cache.Pods()))
		return nil
	}, func(error) {}).WithResync(30 * time.Second)
	cache.OnChange(func(k resources.Kind) {
		if k == resources.KindService || k == resources.KindPod {
			rebuild.Trigger()
		}
	})
	g.Loop("dns-records", rebuild.Run)
	rebuild.Trigger()
	if err := bindLoopback(addrs); err != nil {
		a.setProblem("dns", err)
		a.opts.Log.Error("DNS addresses not bound", "err", err)
		return
	}
	for _, ad := range addrs {
		listen := net.JoinHostPort(ad.String(), "53")
		g.Go("dns "+listen, func(ctx context.Context) error {
			err := srv.ListenAndServe(ctx, listen)
			a.setProblem("dns", err)
			return nil // a DNS failure is reported, it does not stop weftd
		})
	}
	a.dnsAddrs, a.dnsDomain = addrs, domain
}

// bindLoopback puts the DNS addresses on this namespace's loopback (weft's: labelled
// lo:weftdns for IPv4).
func bindLoopback(addrs []netip.Addr) error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return err
	}
	for _, ad := range addrs {
		a := &netlink.Addr{IPNet: &net.IPNet{IP: ad.AsSlice(), Mask: net.CIDRMask(ad.BitLen(), ad.BitLen())}}
		if ad.Is4() {
			a.Label = "lo:weftdns"
		}
		if err := netlink.AddrReplace(lo, a); err != nil {
			return fmt.Errorf("bind %s to lo: %w", ad, err)
		}
	}
	return nil
}
