package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http2"

	v1 "github.com/weftnet/weft/api/v1"
)

// h2Handler serves HTTP/2 connections (TLS with ALPN h2, or h2c by prior knowledge) on
// Go's HTTP/2 server, which bounds concurrent streams and resists rapid-reset floods
// (CVE-2023-44487), and proxies each request with httputil.ReverseProxy: streamed bodies,
// trailers (gRPC status) and flushes as they come.
type h2Handler struct {
	p   *Proxy
	srv *http2.Server
	h1  *http.Transport  // to HTTP/1.1 endpoints
	h2c *http2.Transport // to endpoints that speak HTTP/2 without TLS (gRPC)
	rp  *httputil.ReverseProxy
}

type ctxKey int

const (
	keyClient ctxKey = iota
	keyScheme
	keyTarget
)

// h2Target is what ServeHTTP decided, for the reverse proxy's hooks.
type h2Target struct {
	rs       *routeState
	e        *endpoint
	h2c      bool
	path     string
	query    string
	client   netip.Addr
	scheme   string
	affinity bool
	hash     uint64 // the request's hash key, for picking a retry's endpoint
	hasHash  bool
}

func newH2Handler(p *Proxy) *h2Handler {
	h := &h2Handler{p: p, srv: &http2.Server{MaxConcurrentStreams: 250, IdleTimeout: p.cfg.IdleTimeout, MaxReadFrameSize: 1 << 20}}
	h.h1 = &http.Transport{
		DialContext: dialer.DialContext,
		// HTTP/2 clients multiplex many requests: keep as many upstream connections idle
		// as are busy at a peak, or each burst dials and closes hundreds.
		MaxIdleConns:        4096,
		MaxIdleConnsPerHost: 1024,
		IdleConnTimeout:     idleUpstreamTTL,
		ForceAttemptHTTP2:   false,
	}
	h.h2c = &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			return dialer.DialContext(ctx, network, addr)
		},
		ReadIdleTimeout: 30 * time.Second,
	}
	h.rp = &httputil.ReverseProxy{
		Rewrite:        h.rewrite,
		Transport:      h,
		FlushInterval:  0, // bodies without a length (gRPC, streams) are flushed as they come anyway
		ModifyResponse: h.modifyResponse,
		ErrorHandler:   h.errorHandler,
	}
	return h
}

func (h *h2Handler) serve(c net.Conn, client netip.Addr, scheme string) {
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := context.WithValue(context.WithValue(r.Context(), keyClient, client), keyScheme, scheme)
		h.ServeHTTP(w, r.WithContext(ctx))
	})
	h.srv.ServeConn(c, &http2.ServeConnOpts{Handler: handler, BaseConfig: &http.Server{
		ReadHeaderTimeout: h.p.cfg.ReadHeaderTimeout, IdleTimeout: h.p.cfg.IdleTimeout, MaxHeaderBytes: h.p.cfg.MaxHeaderBytes,
	}})
}

// RoundTrip picks the transport for the endpoint's protocol.
// For H2C endpoints it retries as the other paths do: an idempotent request without a
// body that could not reach its endpoint, or got a 502/503/504 from it, goes to an
// endpoint not tried yet, within the route's budget.
func (h *h2Handler) RoundTrip(r *http.Request) (*http.Response, error) {
	t, _ := r.Context().Value(keyTarget).(*h2Target)
	if t == nil || !t.h2c {
		return h.h1.RoundTrip(r)
	}
	retries := 0
	if rs := t.rs; rs.Retries != nil && idempotent([]byte(r.Method)) && (r.Body == nil || r.Body == http.NoBody) {
		retries = rs.Retries.Attempts
	}
	var tried [maxTries]*endpoint
	for attempt := 0; ; attempt++ {
		tried[attempt%maxTries] = t.e
		resp, err := h.h2c.RoundTrip(r)
		failed := err != nil || resp.StatusCode == 502 || resp.StatusCode == 503 || resp.StatusCode == 504
		if !failed || attempt >= retries || r.Context().Err() != nil {
			return resp, err
		}
		next, _ := t.rs.pick(time.Now().UnixNano(), t.hash, t.hasHash, &tried)
		if next == nil || !t.rs.budget.allow() {
			return resp, err
		}
		if resp != nil {
			resp.Body.Close()
		}
		t.e.failed() // unreachable, or a 5xx: passive health counts both
		h.p.metrics.retries.Inc()
		t.e = next
		r.URL.Host = next.addr
	}
}

// h2Request presents an *http.Request to the routing table.
type h2Request struct {
	r    *http.Request
	host string
	path string
}

func (v h2Request) Host() string   { return v.host }
func (v h2Request) Path() string   { return v.path }
func (v h2Request) Method() string { return v.r.Method }
func (v h2Request) Header(name string) (string, bool) {
	vals := v.r.Header.Values(name)
	if len(vals) == 0 {
		return "", false
	}
	return vals[0], true
}

// statusWriter records the status for metrics and logs.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = 200
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (h *h2Handler) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	start := time.Now()
	p := h.p
	w := &statusWriter{ResponseWriter: rw}
	client, _ := r.Context().Value(keyClient).(netip.Addr)
	scheme, _ := r.Context().Value(keyScheme).(string)
	cc := &clientConn{p: p, client: client, scheme: scheme}
	cc.req.method, cc.req.host = []byte(r.Method), []byte(r.Host)
	path, query, err := splitTarget([]byte(r.RequestURI))
	cc.view.path = path
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		p.metrics.rejected.Inc()
		return
	}
	st := p.state.Load()
	rt := st.table.Lookup(h2Request{r: r, host: normalizeHost([]byte(r.Host)), path: path})
	if rt == nil {
		http.Error(w, "no route", http.StatusNotFound)
		p.observe(nil, cc, 404, start, "")
		return
	}
	rs := st.routes[rt]
	if rd := rt.Redirect; rd != nil {
		loc, code := redirectTarget(rd, scheme, normalizeHost([]byte(r.Host)), path, query)
		w.Header().Set("Location", loc)
		w.WriteHeader(code)
		p.observe(rs, cc, code, start, "")
		return
	}
	rs.budget.request(start.Unix())
	var hash uint64
	var hasHash bool
	switch rs.hashKind {
	case 'c':
		b := client.As16()
		hash, hasHash = hashKey(b[:]), true
	case 'h':
		if v := r.Header.Get(rs.hashOn); v != "" {
			hash, hasHash = hashKey([]byte(v)), true
		}
	case 'k':
		if c, err := r.Cookie(rs.hashOn); err == nil {
			hash, hasHash = hashKey([]byte(c.Value)), true
		}
	}
	e, h2c := rs.pick(start.UnixNano(), hash, hasHash, nil)
	affinity := false
	if rs.Balance != nil && rs.Balance.AffinityCookie != "" {
		affinity = true
		if c, err := r.Cookie(rs.Balance.AffinityCookie); err == nil {
			now := time.Now().UnixNano()
			for _, b := range rs.backends {
				for _, ep := range b.svc.endpoints {
					if affinityID(ep) == c.Value && ep.usable(now) {
						e, h2c, affinity = ep, b.h2c, false
					}
				}
			}
		}
	}
	if e == nil {
		http.Error(w, "no endpoints", http.StatusServiceUnavailable)
		p.observe(rs, cc, 503, start, "")
		return
	}
	timeout := rs.Timeout.D()
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	ctx := r.Context()
	if rs.Timeout != 0 { // without one, a stream (gRPC) lasts as long as both ends keep it
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	t := &h2Target{rs: rs, e: e, h2c: h2c, path: path, query: query, client: client, scheme: scheme, affinity: affinity, hash: hash, hasHash: hasHash}
	if h2c {
		e.active.Add(1)
		h.rp.ServeHTTP(w, r.WithContext(context.WithValue(ctx, keyTarget, t)))
		e.active.Add(-1)
	} else {
		// HTTP/1.1 endpoints take the HTTP/1.1 path's pools and writer: no transport
		// goroutines or per-request objects (those made this path GC-bound). Retries as on
		// the HTTP/1.1 path: idempotent requests without a body, on endpoints not tried.
		retries := 0
		noBody := r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0
		if rs.Retries != nil && idempotent([]byte(r.Method)) && noBody {
			retries = rs.Retries.Attempts
		}
		var tried [maxTries]*endpoint
		for attempt := 0; ; attempt++ {
			tried[attempt%maxTries] = t.e
			t.e.active.Add(1)
			status := h.viaHTTP1(w, r, t, start.Add(timeout), retries > attempt)
			t.e.active.Add(-1)
			if status == 0 {
				break // answered
			}
			next, _ := rs.pick(time.Now().UnixNano(), hash, hasHash, &tried)
			if attempt >= retries || next == nil || !rs.budget.allow() || time.Now().After(start.Add(timeout)) {
				w.WriteHeader(status)
				break
			}
			h.p.metrics.retries.Inc()
			t.e = next
		}
		e = t.e
	}
	status := w.status
	if status == 0 {
		status = 200
	}
	p.observe(rs, cc, status, start, e.addr)
}

func (h *h2Handler) rewrite(pr *httputil.ProxyRequest) {
	t := pr.In.Context().Value(keyTarget).(*h2Target)
	out := pr.Out
	out.URL.Scheme, out.URL.Host = "http", t.e.addr
	out.URL.Path, out.URL.RawPath = t.rs.RewritePath(t.path), ""
	out.URL.RawQuery = t.query
	out.Host = pr.In.Host
	if rw := t.rs.Rewrite; rw != nil && rw.Host != "" {
		out.Host = rw.Host
	}
	prior := pr.In.Header.Values("X-Forwarded-For")
	xff := t.client.String()
	if len(prior) > 0 {
		xff = strings.Join(prior, ", ") + ", " + xff
	}
	out.Header.Set("X-Forwarded-For", xff)
	out.Header.Set("X-Real-IP", t.client.String())
	out.Header.Set("X-Forwarded-Proto", t.scheme)
	out.Header.Set("X-Forwarded-Host", pr.In.Host)
	applyHeaderChanges(out.Header, t.rs.RequestHeaders)
}

func (h *h2Handler) modifyResponse(resp *http.Response) error {
	t := resp.Request.Context().Value(keyTarget).(*h2Target)
	if resp.StatusCode == 502 || resp.StatusCode == 503 || resp.StatusCode == 504 {
		t.e.failed()
	} else {
		t.e.succeeded()
	}
	applyHeaderChanges(resp.Header, t.rs.ResponseHeaders)
	if t.affinity {
		resp.Header.Add("Set-Cookie", t.rs.Balance.AffinityCookie+"="+affinityID(t.e)+"; Path=/; HttpOnly")
	}
	return nil
}

func (h *h2Handler) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	t := r.Context().Value(keyTarget).(*h2Target)
	status := http.StatusBadGateway
	if errors.Is(err, context.DeadlineExceeded) {
		status = http.StatusGatewayTimeout
	} else if !errors.Is(err, context.Canceled) {
		if op := (*net.OpError)(nil); errors.As(err, &op) && op.Op == "dial" {
			h.p.connectFailed(t.e, err)
		} else {
			t.e.failed()
		}
	}
	w.WriteHeader(status)
}

// applyHeaderChanges removes, sets and adds headers as a route says.
func applyHeaderChanges(h http.Header, hc *v1.HeaderChanges) {
	if hc == nil {
		return
	}
	for _, n := range hc.Remove {
		h.Del(n)
	}
	for _, s := range hc.Set {
		h.Set(s.Name, s.Value)
	}
	for _, a := range hc.Add {
		h.Add(a.Name, a.Value)
	}
}

// viaHTTP1 proxies an HTTP/2 request to an HTTP/1.1 endpoint over the endpoint's pool.
// It returns 0 once it answered; otherwise nothing was written and the status says why
// (502, 504; with retryable, also a 502/503/504 the endpoint answered), for the caller to
// retry elsewhere or to answer.
func (h *h2Handler) viaHTTP1(w http.ResponseWriter, r *http.Request, t *h2Target, deadline time.Time, retryable bool) int {
	e, rs := t.e, t.rs
	hasBody := r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0
	var up *upConn
	var resp message
	for try := 0; ; try++ {
		var reused bool
		var err error
		now := time.Now()
		up, reused, err = e.get(now, deadline)
		if err != nil {
			h.p.connectFailed(e, err)
			return http.StatusBadGateway
		}
		up.arm(deadline, deadlineSlack(deadline.Sub(now)))
		writeH1Head(up.bw, r, t)
		if hasBody {
			err = copyH1Body(up.bw, r)
		}
		if err == nil {
			err = up.bw.Flush()
		}
		var head []byte
		if err == nil {
			head, err = readHead(up.br, 64<<10)
		}
		for err == nil {
			if err = parseResponse(&resp, head, 256); err != nil || resp.status >= 200 || resp.status == 101 {
				break
			}
			head, err = readHead(up.br, 64<<10) // an interim 1xx: the final answer follows
		}
		if err == nil {
			break
		}
		up.Close()
		if reused && try == 0 && !hasBody && !isTimeout(err) {
			continue // a pooled connection the endpoint had closed: once more, fresh
		}
		if isTimeout(err) {
			return http.StatusGatewayTimeout
		}
		e.failed()
		return http.StatusBadGateway
	}
	if rs.Timeout == 0 {
		up.disarm() // as on the HTTP/1.1 path: the body may stream
	}
	if resp.status == 502 || resp.status == 503 || resp.status == 504 {
		e.failed()
		if retryable {
			up.Close()
			return resp.status
		}
	} else {
		e.succeeded()
	}
	hdr := w.Header()
	for _, f := range resp.headers {
		if hopByHop(f.name) || listedInConnection(&resp, f.name) {
			continue
		}
		hdr.Add(string(f.name), string(f.value))
	}
	applyHeaderChanges(hdr, rs.ResponseHeaders)
	if t.affinity {
		hdr.Add("Set-Cookie", rs.Balance.AffinityCookie+"="+affinityID(e)+"; Path=/; HttpOnly")
	}
	noBody := r.Method == http.MethodHead || resp.status == 204 || resp.status == 304
	if resp.contentLength >= 0 && !noBody {
		hdr.Set("Content-Length", strconv.FormatInt(resp.contentLength, 10))
	}
	w.WriteHeader(resp.status)
	var err error
	switch {
	case noBody:
	case resp.chunked:
		_, err = io.Copy(w, httputil.NewChunkedReader(up.br))
		if err == nil {
			_, err = readLine(up.br, 4096) // the trailer section's end (trailers are not relayed)
		}
	case resp.contentLength >= 0:
		_, err = io.CopyN(w, up.br, resp.contentLength)
	default:
		_, _ = io.Copy(w, up.br)
		up.Close()
		return 0
	}
	if err != nil || resp.close {
		up.Close()
		return 0
	}
	e.put(up, time.Now())
	return 0
}

// writeH1Head writes an HTTP/2 request's head for an HTTP/1.1 endpoint, as the HTTP/1.1
// path does (hop-by-hop headers dropped, X-Forwarded-* set, the route's changes applied).
func writeH1Head(bw *bufio.Writer, r *http.Request, t *h2Target) {
	rs := t.rs
	bw.WriteString(r.Method)
	bw.WriteByte(' ')
	bw.WriteString(rs.RewritePath(t.path))
	if t.query != "" {
		bw.WriteByte('?')
		bw.WriteString(t.query)
	}
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	if rw := rs.Rewrite; rw != nil && rw.Host != "" {
		bw.WriteString(rw.Host)
	} else {
		bw.WriteString(r.Host)
	}
	bw.WriteString("\r\n")
	xff := ""
	for name, vals := range r.Header {
		switch strings.ToLower(name) {
		case "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
			"proxy-authorization", "content-length", "host", "x-forwarded-proto", "x-forwarded-host", "x-real-ip":
			continue
		case "x-forwarded-for":
			xff = strings.Join(vals, ", ") + ", "
			continue
		}
		if rs.RequestHeaders != nil && changedHeader(rs.RequestHeaders, []byte(name)) {
			continue
		}
		for _, v := range vals {
			bw.WriteString(name)
			bw.WriteString(": ")
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
	client := t.client.String()
	bw.WriteString("X-Forwarded-For: " + xff + client + "\r\nX-Real-IP: " + client +
		"\r\nX-Forwarded-Proto: " + t.scheme + "\r\nX-Forwarded-Host: " + r.Host + "\r\n")
	if rs.RequestHeaders != nil {
		writeHeaderChanges(bw, rs.RequestHeaders)
	}
	switch {
	case r.ContentLength > 0:
		bw.WriteString("Content-Length: " + strconv.FormatInt(r.ContentLength, 10) + "\r\n")
	case r.ContentLength < 0 && r.Body != nil && r.Body != http.NoBody:
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	bw.WriteString("\r\n")
}

// copyH1Body sends an HTTP/2 request's body: as is with a length, chunked without one.
func copyH1Body(bw *bufio.Writer, r *http.Request) error {
	if r.ContentLength > 0 {
		_, err := io.CopyN(bw, r.Body, r.ContentLength)
		return err
	}
	cw := httputil.NewChunkedWriter(bw)
	if _, err := io.Copy(cw, r.Body); err != nil {
		return err
	}
	if err := cw.Close(); err != nil {
		return err
	}
	_, err := bw.WriteString("\r\n")
	return err
}
