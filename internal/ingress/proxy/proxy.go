// Package proxy is weft's ingress data path: an HTTP reverse proxy from outside clients to
// the endpoints of services, routed by package route.
//
// HTTP/1.1 (plain and over TLS) runs on this package's own strict parser and writer
// (h1.go): keep-alive, pipelined requests answered in order, chunked bodies, WebSocket
// and other upgrades, and no allocation per request on the common path. HTTP/2 (TLS with
// ALPN h2, and h2c by prior knowledge) and gRPC run on Go's HTTP/2 server and
// httputil.ReverseProxy (h2.go). Both share the routes, balancing, health and metrics.
//
// Configuration and endpoints are swapped atomically (Update): a request uses the state
// it started with, upgraded connections keep their endpoint, and connection pools and
// health carry over for every endpoint that stays.
package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http/httputil"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/ingress/route"
)

// Config limits what a client may send and how long it may take.
type Config struct {
	MaxHeaderBytes    int           // the request head; default 16 KiB
	MaxHeaders        int           // header fields; default 100
	MaxBodyBytes      int64         // request body; default 64 MiB
	ReadHeaderTimeout time.Duration // to receive a request head once it started (slowloris); default 10 s
	IdleTimeout       time.Duration // between requests on a connection; default 60 s
	ProxyProtocol     bool          // connections start with a PROXY protocol header (v1 or v2)
	AccessLog         *slog.Logger  // nil: no access log
	LogPerSecond      int           // log every request up to this many a second, then 1 in 100; default 100
	// RawSyscalls reads and writes plain TCP connections (client and upstream) with raw
	// system calls (rawConn): right for a process with one P, wrong with several (a long
	// write then holds up its P's queue; see rawconn.go).
	RawSyscalls bool
}

func (c *Config) defaults() {
	if c.MaxHeaderBytes == 0 {
		c.MaxHeaderBytes = 16 << 10
	}
	if c.MaxHeaders == 0 {
		c.MaxHeaders = 100
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = 64 << 20
	}
	if c.ReadHeaderTimeout == 0 {
		c.ReadHeaderTimeout = 10 * time.Second
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 60 * time.Second
	}
	if c.LogPerSecond == 0 {
		c.LogPerSecond = 100
	}
}

// Proxy serves listeners with the current routes.
type Proxy struct {
	cfg     Config
	state   atomic.Pointer[state]
	certs   atomic.Pointer[certStore]
	tls     *tls.Config // every TLS listener's: one set of session ticket keys
	metrics *Metrics
	log     sampler

	mu        sync.Mutex
	endpoints map[string]*endpoint // by address: outlive configuration changes
	checks    map[string]*healthCheck

	conns   sync.WaitGroup
	h2      *h2Handler
	readers sync.Pool // *bufio.Reader of MaxHeaderBytes+512
}

// state is one configuration: the table with every route resolved.
type state struct {
	table  *route.Table
	routes map[*route.Route]*routeState
}

// New returns a proxy with no routes (every request: 404).
func New(cfg Config, m *Metrics) *Proxy {
	cfg.defaults()
	if m == nil {
		m = NewMetrics(nil)
	}
	p := &Proxy{cfg: cfg, metrics: m, endpoints: map[string]*endpoint{}, checks: map[string]*healthCheck{}}
	p.log = sampler{perSecond: int64(cfg.LogPerSecond), log: cfg.AccessLog}
	p.readers.New = func() any { return bufio.NewReaderSize(nil, cfg.MaxHeaderBytes+512) }
	p.state.Store(&state{table: route.Compile(nil), routes: map[*route.Route]*routeState{}})
	p.certs.Store(&certStore{byName: map[string]*tls.Certificate{}})
	p.tls = p.tlsConfig()
	p.h2 = newH2Handler(p)
	return p
}

// Update swaps in a table and the endpoints of its backends (backend key → addresses).
// Requests in flight finish on the state they started with.
func (p *Proxy) Update(t *route.Table, endpoints map[string][]netip.AddrPort) {
	p.mu.Lock()
	defer p.mu.Unlock()
	keep := map[string]bool{}
	services := map[string]*service{}
	for _, b := range t.Services() {
		s := &service{key: b.Key}
		for _, ap := range endpoints[b.Key] {
			addr := ap.String()
			keep[addr] = true
			e := p.endpoints[addr]
			if e == nil {
				e = &endpoint{addr: addr, ap: ap, rawIO: p.cfg.RawSyscalls}
				p.endpoints[addr] = e
			}
			s.endpoints = append(s.endpoints, e)
		}
		s.buildRing()
		services[b.Key] = s
	}
	st := &state{table: t, routes: map[*route.Route]*routeState{}}
	wantChecks := map[string]*v1.HealthCheck{}
	for _, r := range t.Routes {
		rs := &routeState{Route: r, metrics: p.metrics.route(r.ID)}
		if r.Balance != nil {
			rs.policy = r.Balance.Policy
			switch on := r.Balance.HashOn; {
			case on == "client":
				rs.hashKind = 'c'
			case strings.HasPrefix(on, "header:"):
				rs.hashKind, rs.hashOn = 'h', strings.ToLower(strings.TrimPrefix(on, "header:"))
			case strings.HasPrefix(on, "cookie:"):
				rs.hashKind, rs.hashOn = 'k', strings.TrimPrefix(on, "cookie:")
			}
		}
		rs.budget.percent = 20
		if r.Retries != nil && r.Retries.BudgetPercent > 0 {
			rs.budget.percent = int64(r.Retries.BudgetPercent)
		}
		for _, b := range r.Backends {
			rs.backends = append(rs.backends, weighted{svc: services[b.Key], weight: b.Weight, h2c: b.H2C})
			rs.total += b.Weight
			if r.HealthCheck != nil {
				for _, e := range services[b.Key].endpoints {
					wantChecks[e.addr] = r.HealthCheck
				}
			}
		}
		st.routes[r] = rs
	}
	p.state.Store(st)
	for addr, e := range p.endpoints {
		if !keep[addr] {
			e.removed.Store(true)
			e.closeIdle()
			delete(p.endpoints, addr)
		}
	}
	p.syncHealthChecks(wantChecks)
}

// Serve accepts connections on ln until it is closed; tlsOn serves them over TLS with the
// stored certificates.
func (p *Proxy) Serve(ln net.Listener, tlsOn bool) error {
	var tcfg *tls.Config
	if tlsOn {
		tcfg = p.tls
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return err
		}
		p.conns.Add(1)
		go func() {
			defer p.conns.Done()
			p.serveConn(c, tcfg)
		}()
	}
}

// clientConn is one client connection's buffers and per-request scratch space.
type clientConn struct {
	p      *Proxy
	c      net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	client netip.Addr
	scheme string // http or https
	req    message
	resp   message
	view   reqView
	line   []byte    // scratch for writing
	readDL time.Time // the read deadline set on c (zero: none)
	end    time.Time // when the request just served ended (observe), zero if none
}

// armRead gives the client a read deadline of now+d, kept as keptDeadline says: an idle
// timeout may last up to a 64th longer than configured, never shorter.
func (cc *clientConn) armRead(now time.Time, d time.Duration) {
	if t, move := keptDeadline(cc.readDL, now.Add(d), deadlineSlack(d)); move {
		cc.setReadDeadline(t)
	}
}

func (cc *clientConn) setReadDeadline(t time.Time) {
	_ = cc.c.SetReadDeadline(t)
	cc.readDL = t
}

// headBuffered: the buffer holds a whole request head, so reading it cannot wait.
func headBuffered(br *bufio.Reader) bool {
	b, _ := br.Peek(br.Buffered())
	return bytes.Contains(b, crlfcrlf)
}

func (p *Proxy) serveConn(c net.Conn, tcfg *tls.Config) {
	defer c.Close()
	// (An accepted *net.TCPConn has TCP_NODELAY already: Go sets it.)
	if tc, ok := c.(*net.TCPConn); ok && p.cfg.RawSyscalls {
		c = newRawConn(tc)
	}
	cc := &clientConn{p: p, c: c, scheme: "http"}
	if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		cc.client = ap.Addr().Unmap()
	}
	// Buffers come from pools: a connection per request (no keep-alive) must not cost
	// two fresh 16 KiB buffers and the garbage they make.
	raw := p.getReader(c)
	defer p.putReader(raw)
	cc.br = raw
	if p.cfg.ProxyProtocol {
		_ = c.SetReadDeadline(time.Now().Add(p.cfg.ReadHeaderTimeout))
		client, err := readProxyHeader(cc.br)
		if err != nil {
			return
		}
		if client.IsValid() {
			cc.client = client
		}
	}
	if tcfg != nil {
		_ = c.SetDeadline(time.Now().Add(p.cfg.ReadHeaderTimeout))
		tc := tls.Server(&prefixConn{Conn: c, r: cc.br}, tcfg)
		if err := tc.Handshake(); err != nil {
			p.metrics.tlsErrors.Inc()
			return
		}
		_ = c.SetDeadline(time.Time{})
		if tc.ConnectionState().NegotiatedProtocol == "h2" {
			p.h2.serve(tc, cc.client, "https")
			return
		}
		// The raw reader stays with the TLS connection (it may hold records already read);
		// the plaintext gets a reader of its own.
		cc.c, cc.scheme = tc, "https"
		plain := p.getReader(tc)
		defer p.putReader(plain)
		cc.br = plain
	} else {
		// h2c by prior knowledge: the HTTP/2 connection preface.
		_ = c.SetReadDeadline(time.Now().Add(p.cfg.IdleTimeout))
		if startsWithPreface(cc.br) {
			_ = c.SetReadDeadline(time.Time{})
			p.h2.serve(&prefixConn{Conn: c, r: cc.br}, cc.client, "http")
			return
		}
	}
	cc.bw = writerPool.Get().(*bufio.Writer)
	cc.bw.Reset(cc.c)
	cc.serve()
	cc.bw.Reset(nil)
	writerPool.Put(cc.bw)
}

var writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 16<<10) }}

// getReader takes a read buffer of the configured size from the pool.
func (p *Proxy) getReader(r io.Reader) *bufio.Reader {
	br := p.readers.Get().(*bufio.Reader)
	br.Reset(r)
	return br
}

func (p *Proxy) putReader(br *bufio.Reader) {
	if br != nil {
		br.Reset(nil)
		p.readers.Put(br)
	}
}

const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// startsWithPreface reads only as far as the bytes match the HTTP/2 preface, so a short
// HTTP/1 request is never waited on.
func startsWithPreface(r *bufio.Reader) bool {
	for n := 1; n <= len(h2Preface); n++ {
		b, err := r.Peek(n)
		if err != nil || b[n-1] != h2Preface[n-1] {
			return false
		}
	}
	return true
}

// prefixConn reads first what a bufio.Reader already took from the connection.
type prefixConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *prefixConn) Read(b []byte) (int, error) {
	if c.r != nil {
		if c.r.Buffered() > 0 {
			return c.r.Read(b)
		}
		c.r = nil
	}
	return c.Conn.Read(b)
}

func (cc *clientConn) serve() {
	p := cc.p
	for {
		// Between requests the idle timeout applies; once a request starts, its head must
		// arrive within ReadHeaderTimeout (slowloris), a deadline needed only when the
		// head is not all here yet.
		now := cc.end // the request just served ended a moment ago
		if now.IsZero() {
			now = time.Now()
		}
		cc.end = time.Time{}
		cc.armRead(now, p.cfg.IdleTimeout)
		if _, err := cc.br.Peek(1); err != nil {
			return
		}
		if !headBuffered(cc.br) {
			cc.setReadDeadline(time.Now().Add(p.cfg.ReadHeaderTimeout))
		}
		head, err := readHead(cc.br, p.cfg.MaxHeaderBytes)
		if err == nil {
			err = parseRequest(&cc.req, head, p.cfg.MaxHeaders)
		}
		if err != nil {
			cc.fail(err)
			return
		}
		// The idle or header deadline stays while the request is proxied: nothing is read
		// from the client meanwhile (a body is read under its own deadline), and the next
		// request sets the idle one.
		if !cc.handle() {
			return
		}
	}
}

// fail answers a request that cannot be served and ends the connection.
func (cc *clientConn) fail(err error) {
	var he *httpError
	if !errors.As(err, &he) {
		return // the client went away or timed out: nothing to answer
	}
	cc.p.metrics.rejected.Inc()
	_ = cc.c.SetWriteDeadline(time.Now().Add(time.Second))
	cc.writeSimple(he.status, he.msg, true)
}

func (cc *clientConn) writeSimple(status int, body string, closing bool) {
	bw := cc.bw
	if bw == nil {
		bw = bufio.NewWriter(cc.c)
	}
	bw.WriteString("HTTP/1.1 ")
	bw.WriteString(strconv.Itoa(status))
	bw.WriteByte(' ')
	bw.WriteString(statusText(status))
	bw.WriteString("\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ")
	bw.WriteString(strconv.Itoa(len(body) + 1))
	if closing {
		bw.WriteString("\r\nConnection: close")
	}
	bw.WriteString("\r\n\r\n")
	bw.WriteString(body)
	bw.WriteByte('\n')
	_ = bw.Flush()
}

// reqView presents the parsed request to the routing table.
type reqView struct {
	m    *message
	host string
	path string
}

func (v *reqView) Host() string   { return v.host }
func (v *reqView) Path() string   { return v.path }
func (v *reqView) Method() string { return unsafeString(v.m.method) }
func (v *reqView) Header(name string) (string, bool) {
	for _, h := range v.m.headers {
		if len(h.name) == len(name) && strings.EqualFold(unsafeString(h.name), name) {
			return unsafeString(h.value), true
		}
	}
	return "", false
}

// handle serves one parsed request; false ends the connection.
func (cc *clientConn) handle() bool {
	p, m := cc.p, &cc.req
	start := time.Now()
	path, query, err := splitTarget(m.target)
	if err != nil {
		cc.drainAndFail(err)
		return false
	}
	cc.view = reqView{m: m, host: normalizeHost(m.host), path: path}
	st := p.state.Load()
	rt := st.table.Lookup(&cc.view)
	if rt == nil {
		return cc.answer(404, "no route", start, nil)
	}
	rs := st.routes[rt]
	if rt.Redirect != nil {
		return cc.redirect(rs, path, query, start)
	}
	if m.contentLength > p.cfg.MaxBodyBytes {
		cc.fail(&httpError{413, "request body too large"})
		return false
	}
	if len(m.upgrade) > 0 && connectionHas(m, "upgrade") {
		cc.upgrade(rs, path, query, start)
		return false
	}
	return cc.forward(rs, path, query, start)
}

// drainAndFail answers a malformed request; the connection ends, so no body is read.
func (cc *clientConn) drainAndFail(err error) { cc.fail(err) }

func (cc *clientConn) answer(status int, body string, start time.Time, rs *routeState) bool {
	closing := cc.req.close || cc.req.contentLength > 0 || cc.req.chunked // an unread body ends the connection
	cc.writeSimple(status, body, closing)
	cc.p.observe(rs, cc, status, start, "")
	return !closing
}

func (cc *clientConn) redirect(rs *routeState, path, query string, start time.Time) bool {
	loc, code := redirectTarget(rs.Redirect, cc.scheme, cc.view.host, path, query)
	closing := cc.req.close || cc.req.contentLength > 0 || cc.req.chunked
	bw := cc.bw
	bw.WriteString("HTTP/1.1 ")
	bw.WriteString(strconv.Itoa(code))
	bw.WriteByte(' ')
	bw.WriteString(statusText(code))
	bw.WriteString("\r\nLocation: ")
	bw.WriteString(loc)
	bw.WriteString("\r\nContent-Length: 0\r\n")
	if closing {
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("\r\n")
	_ = bw.Flush()
	cc.p.observe(rs, cc, code, start, "")
	return !closing
}

// redirectTarget is where a redirect route sends a request (scheme, host and path as
// the request had them unless the route sets them; the default port of the scheme left
// out), and with which status.
func redirectTarget(rd *v1.Redirect, scheme, host, path, query string) (string, int) {
	if rd.Scheme != "" {
		scheme = rd.Scheme
	}
	if rd.Host != "" {
		host = rd.Host
	}
	if rd.Port != 0 && !(scheme == "http" && rd.Port == 80) && !(scheme == "https" && rd.Port == 443) {
		host += ":" + strconv.Itoa(rd.Port)
	}
	if rd.Path != "" {
		path = rd.Path
	}
	loc := scheme + "://" + host + path
	if query != "" {
		loc += "?" + query
	}
	code := rd.StatusCode
	if code == 0 {
		code = 301
	}
	return loc, code
}

// splitTarget takes an origin-form target apart (absolute-form: its path), refusing what
// would route differently here than at the backend: dot segments, encoded slashes,
// backslashes and NULs.
func splitTarget(t []byte) (path, query string, err error) {
	s := unsafeString(t)
	if strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://") {
		rest := s[strings.Index(s, "//")+2:]
		i := strings.IndexByte(rest, '/')
		if i < 0 {
			s = "/"
		} else {
			s = rest[i:]
		}
	}
	if s == "*" || !strings.HasPrefix(s, "/") {
		return "", "", bad("the request target must be a path")
	}
	path, query, _ = strings.Cut(s, "?")
	if i := strings.IndexByte(path, '#'); i >= 0 {
		return "", "", bad("fragment in the request target")
	}
	for i := 0; i < len(path); i++ {
		switch path[i] {
		case '\\':
			return "", "", bad("backslash in the path")
		case '%':
			if i+2 >= len(path) || !isHex(path[i+1]) || !isHex(path[i+2]) {
				return "", "", bad("malformed percent-encoding")
			}
			if d := unhex(path[i+1])<<4 | unhex(path[i+2]); d == '/' || d == '\\' || d == 0 || d == '.' {
				return "", "", bad("encoded '/', '\\', '.' or NUL in the path")
			}
		case '.':
			// "/." or "/.." as a whole segment
			if path[i-1] == '/' && (i+1 == len(path) || path[i+1] == '/' ||
				(path[i+1] == '.' && (i+2 == len(path) || path[i+2] == '/'))) {
				return "", "", bad("dot segment in the path")
			}
		}
	}
	return path, query, nil
}

func isHex(c byte) bool {
	return ('0' <= c && c <= '9') || ('a' <= c && c <= 'f') || ('A' <= c && c <= 'F')
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	}
	return c - 'a' + 10
}

// normalizeHost lowers a Host header and drops its port.
func normalizeHost(h []byte) string {
	s := unsafeString(h)
	if strings.HasPrefix(s, "[") {
		if i := strings.IndexByte(s, ']'); i > 0 {
			return strings.ToLower(s[1:i])
		}
	}
	if i := strings.LastIndexByte(s, ':'); i >= 0 {
		s = s[:i]
	}
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			return strings.ToLower(s)
		}
	}
	return s
}

func connectionHas(m *message, token string) bool {
	found := false
	for _, h := range m.headers {
		if equalFold(h.name, "connection") {
			forEachToken(h.value, func(t []byte) {
				if equalFold(t, token) {
					found = true
				}
			})
		}
	}
	return found
}

// idempotent methods may be retried (RFC 9110 9.2.2).
func idempotent(method []byte) bool {
	switch string(method) {
	case "GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE":
		return true
	}
	return false
}

// requestHash is the route's hash key for this request.
func (cc *clientConn) requestHash(rs *routeState) (uint64, bool) {
	switch rs.hashKind {
	case 'c':
		b := cc.client.As16()
		return hashKey(b[:]), true
	case 'h':
		if v, ok := cc.req.get(rs.hashOn); ok {
			return hashKey(v), true
		}
	case 'k':
		if v, ok := cookieValue(&cc.req, rs.hashOn); ok {
			return hashKey(v), true
		}
	}
	return 0, false
}

func cookieValue(m *message, name string) ([]byte, bool) {
	for _, h := range m.headers {
		if !equalFold(h.name, "cookie") {
			continue
		}
		for _, part := range bytes.Split(h.value, []byte(";")) {
			part = trimOWS(part)
			if k, v, ok := bytes.Cut(part, []byte("=")); ok && string(k) == name {
				return v, true
			}
		}
	}
	return nil, false
}

// affinityEndpoint is the endpoint an affinity cookie pins, if it is usable.
func (cc *clientConn) affinityEndpoint(rs *routeState) (*endpoint, bool) {
	if rs.Balance == nil || rs.Balance.AffinityCookie == "" {
		return nil, false
	}
	v, ok := cookieValue(&cc.req, rs.Balance.AffinityCookie)
	if !ok {
		return nil, false
	}
	now := time.Now().UnixNano()
	for _, w := range rs.backends {
		for _, e := range w.svc.endpoints {
			if affinityID(e) == string(v) && e.usable(now) {
				return e, w.h2c
			}
		}
	}
	return nil, false
}

// affinityID names an endpoint in a cookie without showing its address.
func affinityID(e *endpoint) string {
	return strconv.FormatUint(hashKey([]byte(e.addr))&0xffffffffff, 36)
}

// forward proxies one request to an endpoint and its response back; false ends the
// client connection.
func (cc *clientConn) forward(rs *routeState, path, query string, start time.Time) bool {
	p, m := cc.p, &cc.req
	rs.budget.request(start.Unix())
	hasBody := m.contentLength > 0 || m.chunked
	retries := 0
	if rs.Retries != nil && idempotent(m.method) && !hasBody {
		retries = rs.Retries.Attempts
	}
	timeout := rs.Timeout.D()
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	deadline := start.Add(timeout)
	hash, hasHash := cc.requestHash(rs)
	e, _ := cc.affinityEndpoint(rs)
	var tried [maxTries]*endpoint // a retry goes to an endpoint not tried yet (if any)
	for attempt := 0; ; attempt++ {
		if e == nil || attempt > 0 {
			now := start // a retry may come a timeout later: ejections are judged now
			if attempt > 0 {
				now = time.Now()
			}
			e, _ = rs.pick(now.UnixNano(), hash, hasHash, &tried)
		}
		if e == nil {
			return cc.answer(503, "no endpoints", start, rs)
		}
		tried[attempt%maxTries] = e
		status, done, keep := cc.exchange(rs, e, path, query, start, deadline, attempt == 0 && rs.Balance != nil && rs.Balance.AffinityCookie != "")
		if done {
			p.observe(rs, cc, status, start, e.addr)
			return keep
		}
		// Nothing reached the client yet: retry elsewhere, or answer.
		if attempt < retries && rs.budget.allow() && time.Now().Before(deadline) {
			p.metrics.retries.Inc()
			continue
		}
		if status == 0 {
			status = 502
		}
		if hasBody {
			cc.writeSimple(status, statusText(status), true)
			p.observe(rs, cc, status, start, e.addr)
			return false
		}
		return cc.answer(status, statusText(status), start, rs)
	}
}

// exchange sends the request to e and relays the response. done: the client got an
// answer (status is what it got); !done: nothing was written to the client, status says
// why (0: could not connect or the endpoint failed before answering).
func (cc *clientConn) exchange(rs *routeState, e *endpoint, path, query string, start, deadline time.Time, setAffinity bool) (status int, done, keep bool) {
	p, m := cc.p, &cc.req
	e.active.Add(1)
	defer e.active.Add(-1)
	hasBody := m.contentLength > 0 || m.chunked
	var up *upConn
	var reused bool
	var err error
	for try := 0; ; try++ {
		up, reused, err = e.get(start, deadline)
		if err != nil {
			p.connectFailed(e, err)
			return 0, false, false
		}
		up.arm(deadline, deadlineSlack(deadline.Sub(start)))
		cc.writeUpstreamHead(rs, up.bw, path, query, nil)
		if !hasBody {
			if rc, ok := up.Conn.(*rawConn); ok && up.br.Buffered() == 0 {
				rc.holdNextWrite() // sent by the Peek's read
			}
			err = up.bw.Flush()
			if err == nil {
				_, err = up.br.Peek(1) // the response starts (a stale pooled connection fails here)
			}
			if err != nil && reused && try == 0 && !isTimeout(err) {
				up.Close()
				continue // a pooled connection the endpoint had closed: once more, fresh
			}
		}
		break
	}
	if hasBody && err == nil {
		err = cc.copyBody(up.bw)
		if err == nil {
			err = up.bw.Flush()
		}
		var he *httpError
		if errors.As(err, &he) {
			up.Close()
			cc.fail(err)
			return he.status, true, false
		}
	}
	if err != nil {
		up.Close()
		if isTimeout(err) {
			return 504, hasBody, false
		}
		e.failed()
		if hasBody {
			// The body is gone: no retry, the client hears of it.
			cc.writeSimple(502, "upstream failed", true)
			return 502, true, false
		}
		return 0, false, false
	}
	// The response head (after any 1xx interim responses, which are relayed).
	for {
		head, err := readHead(up.br, 64<<10)
		if err == nil {
			err = parseResponse(&cc.resp, head, 256)
		}
		if err != nil {
			up.Close()
			if isTimeout(err) {
				return 504, false, false
			}
			e.failed()
			return 502, false, false
		}
		if cc.resp.status >= 100 && cc.resp.status < 200 && cc.resp.status != 101 {
			cc.writeResponseHead(rs, &cc.resp, e, false, false)
			_ = cc.bw.Flush()
			continue
		}
		break
	}
	r := &cc.resp
	noBody := equalFold(m.method, "head") || r.status == 204 || r.status == 304
	if rs.Timeout == 0 && !noBody && !(r.contentLength >= 0 && int64(up.br.Buffered()) >= r.contentLength) {
		// Without a route timeout only the answer's head has a deadline (60 s): a body may
		// stream as long as it lasts (downloads, server-sent events). A body already all
		// read keeps it: the connection goes back to the pool armed (upConn.arm).
		up.disarm()
	}
	if r.status == 502 || r.status == 503 || r.status == 504 {
		e.failed()
		if idempotent(m.method) && !hasBody && rs.Retries != nil {
			// Retryable: drop this answer (and the connection) and let forward retry.
			up.Close()
			return r.status, false, false
		}
	} else {
		e.succeeded()
	}
	untilClose := !noBody && !r.chunked && r.contentLength < 0
	// The client connection stays open if both sides allow it and the body is framed
	// for this client.
	// An HTTP/1.0 client knows no chunked coding: a body without a length ends with the
	// connection.
	clientClose := m.close || ((untilClose || (r.chunked && !noBody)) && m.http10)
	cc.writeResponseHead(rs, r, e, setAffinity, clientClose)
	switch {
	case noBody:
	case r.chunked && m.http10:
		_, err = io.Copy(cc.bw, httputil.NewChunkedReader(up.br))
		if err == nil {
			_, err = readLine(up.br, 4096) // the end of the (empty) trailer section
		}
	case r.chunked:
		_, err = copyChunked(cc.bw, up.br, -1, 4096)
	case r.contentLength >= 0:
		err = copyN(cc.bw, up.br, r.contentLength)
	default:
		err = copyUntilClose(cc.bw, up.br, !m.http10)
	}
	if ferr := cc.bw.Flush(); err == nil {
		err = ferr
	}
	if err != nil || r.close || untilClose {
		up.Close()
		return r.status, true, false
	}
	cc.end = time.Now() // the answer is out: observe reads the same clock
	e.put(up, cc.end)
	return r.status, true, !clientClose
}

// connectFailed counts a failed connection to e for its passive health (a refusal, which
// means nothing listens there, ejects it at once) and in the metrics.
func (p *Proxy) connectFailed(e *endpoint, err error) {
	if errors.Is(err, syscall.ECONNREFUSED) {
		e.refused()
	} else {
		e.failed()
	}
	p.metrics.connectErrors(e.addr).Inc()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded)
}

// copyBody sends the request body: exactly Content-Length bytes, or the chunks re-chunked.
func (cc *clientConn) copyBody(w *bufio.Writer) error {
	m := &cc.req
	// A slow client gets the idle timeout plus a second for each 64 KiB of the body (of
	// the largest allowed one, when chunked): a trickle cannot hold the connection for
	// ever, a large upload on a slow link still gets through.
	size := m.contentLength
	if m.chunked {
		size = cc.p.cfg.MaxBodyBytes
	}
	cc.setReadDeadline(time.Now().Add(cc.p.cfg.IdleTimeout + time.Duration(size>>16)*time.Second))
	defer cc.setReadDeadline(time.Time{})
	if v, ok := m.get("expect"); ok && equalFold(v, "100-continue") && cc.br.Buffered() == 0 {
		// The client waits for this before it sends the body; the proxy answers it
		// itself (the endpoint's own 100, if any, is not relayed).
		cc.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
		if err := cc.bw.Flush(); err != nil {
			return err
		}
	}
	if m.chunked {
		_, err := copyChunked(w, cc.br, cc.p.cfg.MaxBodyBytes, 4096)
		return err
	}
	return copyN(w, cc.br, m.contentLength)
}

// copyN copies n bytes between the two buffers without allocating.
func copyN(w *bufio.Writer, r *bufio.Reader, n int64) error {
	for n > 0 {
		if r.Buffered() == 0 {
			if _, err := r.Peek(1); err != nil {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return err
			}
		}
		b, _ := r.Peek(int(min(int64(r.Buffered()), n)))
		if _, err := w.Write(b); err != nil {
			return err
		}
		_, _ = r.Discard(len(b))
		n -= int64(len(b))
	}
	return nil
}

// copyUntilClose relays a body that ends when the endpoint closes, chunked for an
// HTTP/1.1 client.
func copyUntilClose(w *bufio.Writer, r *bufio.Reader, chunk bool) error {
	if !chunk {
		_, err := io.Copy(w, r)
		return err
	}
	buf := make([]byte, 16<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			w.WriteString(strconv.FormatInt(int64(n), 16))
			w.WriteString("\r\n")
			w.Write(buf[:n])
			w.WriteString("\r\n")
		}
		if err == io.EOF {
			_, err = w.WriteString("0\r\n\r\n")
			return err
		}
		if err != nil {
			return err
		}
	}
}

// writeUpstreamHead writes the request head for the endpoint: hop-by-hop headers dropped,
// X-Forwarded-* set, the route's rewrites and header changes applied.
func (cc *clientConn) writeUpstreamHead(rs *routeState, w *bufio.Writer, path, query string, upgrade []byte) {
	m := &cc.req
	w.Write(m.method)
	w.WriteByte(' ')
	w.WriteString(rs.RewritePath(path))
	if query != "" {
		w.WriteByte('?')
		w.WriteString(query)
	}
	w.WriteString(" HTTP/1.1\r\nHost: ")
	if rs.Rewrite != nil && rs.Rewrite.Host != "" {
		w.WriteString(rs.Rewrite.Host)
	} else {
		w.Write(m.host)
	}
	w.WriteString("\r\n")
	rh := rs.RequestHeaders
	var xff []byte
	for _, h := range m.headers {
		switch {
		case hopByHop(h.name) || equalFold(h.name, "host") || equalFold(h.name, "x-forwarded-proto") ||
			equalFold(h.name, "x-forwarded-host") || equalFold(h.name, "x-real-ip") || equalFold(h.name, "expect"):
			continue
		case equalFold(h.name, "x-forwarded-for"):
			xff = h.value
			continue
		case rh != nil && changedHeader(rh, h.name):
			continue
		case listedInConnection(m, h.name):
			continue
		}
		w.Write(h.name)
		w.WriteString(": ")
		w.Write(h.value)
		w.WriteString("\r\n")
	}
	w.WriteString("X-Forwarded-For: ")
	if len(xff) > 0 {
		w.Write(xff)
		w.WriteString(", ")
	}
	cc.line = cc.client.AppendTo(cc.line[:0])
	w.Write(cc.line)
	w.WriteString("\r\nX-Real-IP: ")
	w.Write(cc.line)
	w.WriteString("\r\nX-Forwarded-Proto: ")
	w.WriteString(cc.scheme)
	w.WriteString("\r\nX-Forwarded-Host: ")
	w.Write(m.host)
	w.WriteString("\r\n")
	if rh != nil {
		writeHeaderChanges(w, rh)
	}
	if upgrade != nil {
		w.WriteString("Connection: Upgrade\r\nUpgrade: ")
		w.Write(upgrade)
		w.WriteString("\r\n")
	}
	switch {
	case m.chunked:
		w.WriteString("Transfer-Encoding: chunked\r\n")
	case m.contentLength >= 0:
		w.WriteString("Content-Length: ")
		cc.line = strconv.AppendInt(cc.line[:0], m.contentLength, 10)
		w.Write(cc.line)
		w.WriteString("\r\n")
	}
	w.WriteString("\r\n")
}

// changedHeader: the route sets or removes this header, so the client's is not passed.
func changedHeader(hc *v1.HeaderChanges, name []byte) bool {
	for _, s := range hc.Set {
		if len(s.Name) == len(name) && strings.EqualFold(s.Name, unsafeString(name)) {
			return true
		}
	}
	for _, r := range hc.Remove {
		if len(r) == len(name) && strings.EqualFold(r, unsafeString(name)) {
			return true
		}
	}
	return false
}

func writeHeaderChanges(w *bufio.Writer, hc *v1.HeaderChanges) {
	for _, hs := range [][]v1.HeaderMatch{hc.Set, hc.Add} {
		for _, h := range hs {
			w.WriteString(h.Name)
			w.WriteString(": ")
			w.WriteString(h.Value)
			w.WriteString("\r\n")
		}
	}
}

// writeResponseHead writes the endpoint's response head to the client.
func (cc *clientConn) writeResponseHead(rs *routeState, r *message, e *endpoint, setAffinity, closing bool) {
	w := cc.bw
	w.WriteString("HTTP/1.1 ")
	cc.line = strconv.AppendInt(cc.line[:0], int64(r.status), 10)
	w.Write(cc.line)
	w.WriteByte(' ')
	if len(r.reason) > 0 {
		w.Write(r.reason)
	} else {
		w.WriteString(statusText(r.status))
	}
	w.WriteString("\r\n")
	rh := rs.ResponseHeaders
	for _, h := range r.headers {
		if hopByHop(h.name) || listedInConnection(r, h.name) || (rh != nil && changedHeader(rh, h.name)) {
			continue
		}
		w.Write(h.name)
		w.WriteString(": ")
		w.Write(h.value)
		w.WriteString("\r\n")
	}
	if rh != nil {
		writeHeaderChanges(w, rh)
	}
	if setAffinity {
		w.WriteString("Set-Cookie: ")
		w.WriteString(rs.Balance.AffinityCookie)
		w.WriteString("=")
		w.WriteString(affinityID(e))
		w.WriteString("; Path=/; HttpOnly\r\n")
	}
	if r.status >= 200 {
		noBody := equalFold(cc.req.method, "head") || r.status == 204 || r.status == 304
		switch {
		case r.contentLength >= 0 && !r.chunked:
			w.WriteString("Content-Length: ")
			cc.line = strconv.AppendInt(cc.line[:0], r.contentLength, 10)
			w.Write(cc.line)
			w.WriteString("\r\n")
		case noBody:
		case !cc.req.http10:
			w.WriteString("Transfer-Encoding: chunked\r\n")
		}
		if closing {
			w.WriteString("Connection: close\r\n")
		}
	}
	w.WriteString("\r\n")
}

// upgrade proxies a WebSocket (or other) upgrade: on 101 the two connections are joined
// until either ends.
func (cc *clientConn) upgrade(rs *routeState, path, query string, start time.Time) {
	p, m := cc.p, &cc.req
	hash, hasHash := cc.requestHash(rs)
	e, _ := rs.pick(start.UnixNano(), hash, hasHash, nil)
	if e == nil {
		cc.answer(503, "no endpoints", start, rs)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	nc, err := dialer.DialContext(ctx, "tcp", e.addr)
	cancel()
	if err != nil {
		p.connectFailed(e, err)
		cc.writeSimple(502, "upstream failed", true)
		p.observe(rs, cc, 502, start, e.addr)
		return
	}
	defer nc.Close()
	up := &upConn{Conn: nc, br: bufio.NewReader(nc), bw: bufio.NewWriter(nc)}
	cc.writeUpstreamHead(rs, up.bw, path, query, m.upgrade)
	_ = up.bw.Flush()
	head, err := readHead(up.br, 64<<10)
	if err == nil {
		err = parseResponse(&cc.resp, head, 256)
	}
	if err != nil {
		cc.writeSimple(502, "upstream failed", true)
		p.observe(rs, cc, 502, start, e.addr)
		return
	}
	cc.writeResponseHeadRaw(&cc.resp)
	_ = cc.bw.Flush()
	p.observe(rs, cc, cc.resp.status, start, e.addr)
	if cc.resp.status != 101 {
		return
	}
	p.metrics.upgraded.Inc()
	// The request's header deadline must not end the joined connection: it lasts as long
	// as either side keeps it.
	_ = cc.c.SetDeadline(time.Time{})
	done := make(chan struct{}, 2)
	go func() {
		_, _ = io.Copy(nc, cc.br) // client → endpoint, buffered bytes first
		if tc, ok := nc.(interface{ CloseWrite() error }); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}()
	go func() {
		_, _ = io.Copy(cc.c, up.br)
		if tc, ok := cc.c.(interface{ CloseWrite() error }); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}()
	<-done
	<-done
}

// writeResponseHeadRaw relays an upgrade response as the endpoint wrote it (its
// Connection and Upgrade headers are the handshake).
func (cc *clientConn) writeResponseHeadRaw(r *message) {
	w := cc.bw
	w.WriteString("HTTP/1.1 ")
	w.WriteString(strconv.Itoa(r.status))
	w.WriteByte(' ')
	w.Write(r.reason)
	w.WriteString("\r\n")
	for _, h := range r.headers {
		w.Write(h.name)
		w.WriteString(": ")
		w.Write(h.value)
		w.WriteString("\r\n")
	}
	w.WriteString("\r\n")
}

// Wait waits for every connection to end (after the listeners closed).
func (p *Proxy) Wait() { p.conns.Wait() }
