package agent

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/dataplane/fastpath"
	"github.com/weftnet/weft/internal/ipam"
	"github.com/weftnet/weft/internal/netlinkx"
)

type metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

func newMetrics(a *Agent) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weft_agent_requests_total", Help: "Requests served on the CNI socket, by operation and result.",
		}, []string{"op", "result"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "weft_agent_request_duration_seconds", Help: "Time to serve a CNI socket request.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 14),
		}, []string{"op"}),
	}
	m.reg.MustRegister(m.requests, m.latency, prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	for _, set := range a.NodeSets() {
		r := set[0]
		for _, state := range []string{"allocated", "free"} {
			m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name:        "weft_ipam_addresses",
				Help:        "Addresses of a node pod CIDR, by state.",
				ConstLabels: prometheus.Labels{"pool": r.Subnet.String(), "state": state},
			}, func() float64 {
				var v float64
				_ = a.store.View(func(tx ipam.Tx) error {
					used, free, err := ipam.Usage(tx, r)
					if err != nil {
						return err
					}
					n := used
					if state == "free" {
						n = free
					}
					v, _ = n.Float64()
					return nil
				})
				return v
			}))
		}
	}
	return m
}

// fastpathCollector exposes the eBPF programs' counters.
type fastpathCollector struct {
	fp      *fastpath.Fastpath
	yielded func() int64
}

var fastpathYielded = prometheus.NewDesc("weft_fastpath_yielded_pods",
	"Pods left off the eBPF fast path because another tool (e.g. the bandwidth plugin) controls their traffic with tc.", nil, nil)

var fastpathPackets = prometheus.NewDesc("weft_fastpath_packets_total",
	"Packets that took an eBPF short cut, by path: local (into a pod on this node), remote (straight to another node), decap (from the VXLAN tunnel into a pod).",
	[]string{"path"}, nil)

var fastpathAsksConntrack = prometheus.NewDesc("weft_fastpath_asks_conntrack",
	"1 when the eBPF programs ask conntrack about packets to and from service endpoints' ports (untracked flows take the short cut); 0 when the kernel lacks the kfunc and all such packets take the kernel's path.", nil, nil)

func (c fastpathCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- fastpathPackets
	ch <- fastpathYielded
	ch <- fastpathAsksConntrack
}

func (c fastpathCollector) Collect(ch chan<- prometheus.Metric) {
	n, err := c.fp.Counters()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(fastpathPackets, err)
		return
	}
	ch <- prometheus.MustNewConstMetric(fastpathPackets, prometheus.CounterValue, float64(n.Local), "local")
	ch <- prometheus.MustNewConstMetric(fastpathPackets, prometheus.CounterValue, float64(n.Remote), "remote")
	ch <- prometheus.MustNewConstMetric(fastpathPackets, prometheus.CounterValue, float64(n.Decap), "decap")
	ch <- prometheus.MustNewConstMetric(fastpathYielded, prometheus.GaugeValue, float64(c.yielded()))
	asks := 0.0
	if c.fp.NoConntrack == nil {
		asks = 1
	}
	ch <- prometheus.MustNewConstMetric(fastpathAsksConntrack, prometheus.GaugeValue, asks)
}

func (m *metrics) observe(op, result string, d time.Duration) {
	m.requests.WithLabelValues(op, result).Inc()
	m.latency.WithLabelValues(op).Observe(d.Seconds())
}

func (a *Agent) serveMetrics(ctx context.Context) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		st := a.Status()
		if !st.Ready {
			w.WriteHeader(http.StatusServiceUnavailable)
			for _, p := range st.Problems {
				_, _ = w.Write([]byte(p + "\n"))
			}
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	if a.opts.Pprof {
		// Profiles for finding where memory and CPU go (go tool pprof URL/debug/pprof/heap).
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	ln, err := net.Listen("tcp", a.opts.MetricsAddr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// defaultRouteMTU returns the MTU of the device holding the IPv4 (else IPv6) default route.
func defaultRouteMTU() (int, error) {
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := netlinkx.Retry(func() ([]netlink.Route, error) {
			return netlink.RouteListFiltered(fam, &netlink.Route{Dst: nil}, netlink.RT_FILTER_DST)
		})
		if err != nil {
			continue
		}
		for _, r := range routes {
			if r.Dst != nil && !r.Dst.IP.IsUnspecified() {
				continue
			}
			if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
				return l.Attrs().MTU, nil
			}
		}
	}
	return 0, errors.New("no default route")
}
