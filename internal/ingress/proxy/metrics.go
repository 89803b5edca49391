package proxy

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the proxy's Prometheus series: per route (requests by status class,
// latency) and per upstream (connect errors).
type Metrics struct {
	requests      *prometheus.CounterVec
	latency       *prometheus.HistogramVec
	connectErrs   *prometheus.CounterVec
	rejected      prometheus.Counter
	retries       prometheus.Counter
	upgraded      prometheus.Counter
	tlsErrors     prometheus.Counter
	mu            sync.Mutex
	routes        map[string]*routeMetrics
	upstreamCache sync.Map // addr → prometheus.Counter
}

type routeMetrics struct {
	classes [6]prometheus.Counter // 1xx..5xx, and [0] for failures before a status
	latency prometheus.Observer
}

// NewMetrics registers the series with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "weft_ingress_requests_total",
			Help: "Requests by route and status class."}, []string{"route", "class"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "weft_ingress_request_duration_seconds",
			Help: "Time from the request head to the end of the response, by route.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}, []string{"route"}),
		connectErrs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "weft_ingress_upstream_connect_errors_total",
			Help: "Failed connections to an endpoint."}, []string{"upstream"}),
		rejected:  prometheus.NewCounter(prometheus.CounterOpts{Name: "weft_ingress_rejected_requests_total", Help: "Malformed or over-limit requests answered with 4xx/5xx and closed."}),
		retries:   prometheus.NewCounter(prometheus.CounterOpts{Name: "weft_ingress_retries_total", Help: "Requests retried on another endpoint."}),
		upgraded:  prometheus.NewCounter(prometheus.CounterOpts{Name: "weft_ingress_upgrades_total", Help: "Connections upgraded (WebSocket)."}),
		tlsErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "weft_ingress_tls_handshake_errors_total", Help: "Failed TLS handshakes."}),
		routes:    map[string]*routeMetrics{},
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.latency, m.connectErrs, m.rejected, m.retries, m.upgraded, m.tlsErrors)
	}
	return m
}

func (m *Metrics) route(id string) *routeMetrics {
	m.mu.Lock()
	defer m.mu.Unlock()
	if rm := m.routes[id]; rm != nil {
		return rm
	}
	rm := &routeMetrics{latency: m.latency.WithLabelValues(id)}
	for i, c := range []string{"error", "1xx", "2xx", "3xx", "4xx", "5xx"} {
		rm.classes[i] = m.requests.WithLabelValues(id, c)
	}
	m.routes[id] = rm
	return rm
}

func (m *Metrics) connectErrors(addr string) prometheus.Counter {
	if c, ok := m.upstreamCache.Load(addr); ok {
		return c.(prometheus.Counter)
	}
	c := m.connectErrs.WithLabelValues(addr)
	m.upstreamCache.Store(addr, c)
	return c
}

var noRoute = &routeMetrics{}

// observe counts a finished request and logs it (sampled).
func (p *Proxy) observe(rs *routeState, cc *clientConn, status int, start time.Time, upstream string) {
	now := cc.end // set when the answer went out, if it was read then
	if now.IsZero() {
		now = time.Now()
		cc.end = now
	}
	d := now.Sub(start)
	rm := noRoute
	routeID := ""
	if rs != nil {
		rm, routeID = rs.metrics, rs.ID
	}
	if rm.latency != nil {
		class := status / 100
		if class < 1 || class > 5 {
			class = 0
		}
		rm.classes[class].Inc()
		rm.latency.Observe(d.Seconds())
	}
	if p.log.log != nil && p.log.take() {
		m := &cc.req
		p.log.log.LogAttrs(nil, slog.LevelInfo, "request",
			slog.String("client", cc.client.String()), slog.String("method", string(m.method)),
			slog.String("host", string(m.host)), slog.String("path", cc.view.path),
			slog.Int("status", status), slog.Duration("duration", d),
			slog.String("route", routeID), slog.String("upstream", upstream), slog.String("proto", cc.scheme))
	}
}

// sampler logs every request up to perSecond a second, then one in a hundred.
type sampler struct {
	log       *slog.Logger
	perSecond int64
	second    atomic.Int64
	n         atomic.Int64
}

func (s *sampler) take() bool {
	now := time.Now().Unix()
	if old := s.second.Load(); old != now && s.second.CompareAndSwap(old, now) {
		s.n.Store(0)
	}
	n := s.n.Add(1)
	return n <= s.perSecond || n%100 == 0
}

func statusText(code int) string {
	if t := http.StatusText(code); t != "" {
		return t
	}
	return "Status"
}

// unsafeString views b as a string without copying; b must not change while it is used.
func unsafeString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// proxyV2Signature starts a PROXY protocol v2 header.
const proxyV2Signature = "\r\n\r\n\x00\r\nQUIT\n"

// readProxyHeader reads a PROXY protocol header, v1 ("PROXY TCP4 src dst sport dport\r\n")
// or v2 (binary), and returns the client's address (invalid for v1's UNKNOWN and v2's
// LOCAL: a health check of the load balancer itself).
func readProxyHeader(r *bufio.Reader) (netip.Addr, error) {
	if sig, err := r.Peek(len(proxyV2Signature)); err == nil && string(sig) == proxyV2Signature {
		return readProxyV2(r)
	}
	line, err := readLine(r, 107)
	if err != nil {
		return netip.Addr{}, err
	}
	f := strings.Fields(string(line))
	if len(f) < 2 || f[0] != "PROXY" {
		return netip.Addr{}, errors.New("no PROXY protocol header")
	}
	if f[1] == "UNKNOWN" {
		return netip.Addr{}, nil
	}
	if len(f) != 6 || (f[1] != "TCP4" && f[1] != "TCP6") {
		return netip.Addr{}, errors.New("malformed PROXY protocol header")
	}
	a, err := netip.ParseAddr(f[2])
	if err != nil {
		return netip.Addr{}, err
	}
	return a.Unmap(), nil
}

// readProxyV2 reads the binary header: signature, version and command, family and
// protocol, length, then the addresses (and TLVs, skipped).
func readProxyV2(r *bufio.Reader) (netip.Addr, error) {
	head := make([]byte, 16)
	if _, err := io.ReadFull(r, head); err != nil {
		return netip.Addr{}, err
	}
	verCmd, fam := head[12], head[13]
	n := int(binary.BigEndian.Uint16(head[14:16]))
	if verCmd>>4 != 2 || n > 536 {
		return netip.Addr{}, errors.New("malformed PROXY protocol v2 header")
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return netip.Addr{}, err
	}
	if verCmd&0x0f == 0 { // LOCAL
		return netip.Addr{}, nil
	}
	switch fam >> 4 {
	case 1: // AF_INET
		if n < 12 {
			return netip.Addr{}, errors.New("short PROXY protocol v2 IPv4 addresses")
		}
		return netip.AddrFrom4([4]byte(body[0:4])), nil
	case 2: // AF_INET6
		if n < 36 {
			return netip.Addr{}, errors.New("short PROXY protocol v2 IPv6 addresses")
		}
		return netip.AddrFrom16([16]byte(body[0:16])).Unmap(), nil
	}
	return netip.Addr{}, nil // AF_UNSPEC or AF_UNIX: no client address to take
}
