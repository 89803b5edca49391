package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/ingress/route"
)

// backend is an HTTP server on loopback that says who it is and what it saw.
type backend struct {
	name string
	ln   net.Listener
	srv  *http.Server
	hits atomic.Int64
}

func newBackend(t *testing.T, name string, h2c bool) *backend {
	t.Helper()
	return newBackendIdle(t, name, h2c, 0)
}

// newBackendIdle is newBackend closing connections idle for idle (0: never).
func newBackendIdle(t *testing.T, name string, h2c bool, idle time.Duration) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{name: name, ln: ln}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		b.hits.Add(1)
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Backend", name)
		w.Header().Set("X-Seen-Host", r.Host)
		w.Header().Set("X-Seen-Path", r.URL.RequestURI())
		w.Header().Set("X-Seen-XFF", r.Header.Get("X-Forwarded-For"))
		w.Header().Set("X-Seen-From", r.Header.Get("X-From"))
		w.Header().Set("X-Seen-Debug", r.Header.Get("X-Debug"))
		w.Header().Set("X-Seen-Proto", r.Proto)
		fmt.Fprintf(w, "%s %s %d", name, r.Method, len(body))
	})
	mux.HandleFunc("/chunked", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ab"))
		w.(http.Flusher).Flush() // no length: chunked
		w.Write([]byte("cd"))
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(time.Second)
		fmt.Fprint(w, "slow")
	})
	mux.HandleFunc("/status/", func(w http.ResponseWriter, r *http.Request) {
		var code int
		fmt.Sscanf(strings.TrimPrefix(r.URL.Path, "/status/"), "%d", &code)
		w.WriteHeader(code)
	})
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" {
			http.Error(w, "no upgrade", 400)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		_, _ = io.Copy(c, brw) // echo
	})
	var h http.Handler = mux
	b.srv = &http.Server{Handler: h, IdleTimeout: idle}
	if h2c {
		b.srv.Protocols = new(http.Protocols)
		b.srv.Protocols.SetHTTP1(true)
		b.srv.Protocols.SetUnencryptedHTTP2(true)
	}
	go b.srv.Serve(ln)
	t.Cleanup(func() { b.srv.Close() })
	return b
}

func (b *backend) addr() netip.AddrPort { return netip.MustParseAddrPort(b.ln.Addr().String()) }

// proxyUnder starts a proxy on loopback serving ingresses with the given endpoints per
// backend key.
func proxyUnder(t *testing.T, cfg Config) (*Proxy, string) {
	t.Helper()
	cfg.RawSyscalls = cfg.RawSyscalls || rawSyscalls
	p := New(cfg, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go p.Serve(ln, false)
	t.Cleanup(func() { ln.Close() })
	return p, ln.Addr().String()
}

func update(p *Proxy, ins []v1.Ingress, eps map[string][]*backend) {
	m := map[string][]netip.AddrPort{}
	for k, bs := range eps {
		for _, b := range bs {
			m[k] = append(m[k], b.addr())
		}
	}
	p.Update(route.Compile(ins), m)
}

func ing(routes ...v1.Route) []v1.Ingress {
	return []v1.Ingress{{Name: "i", Namespace: "ns", Hosts: []v1.IngressHost{{Host: "app.example", Routes: routes}}}}
}

func to(svc string) []v1.Backend { return []v1.Backend{{Service: svc, Port: 80}} }

// raw sends raw bytes on a new connection and returns everything read until the server
// closes or the timeout.
func raw(t *testing.T, addr, req string, timeout time.Duration) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	_, _ = c.Write([]byte(req))
	out, _ := io.ReadAll(c)
	return string(out)
}

func get(t *testing.T, client *http.Client, url, host string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	req.Host = host
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp
}

func TestHTTP1(t *testing.T) {
	a := newBackend(t, "a", false)
	p, addr := proxyUnder(t, Config{})
	update(p, ing(
		v1.Route{Path: "/old", Redirect: &v1.Redirect{Scheme: "https", StatusCode: 308}},
		v1.Route{Path: "/api", Rewrite: &v1.Rewrite{PathPrefix: "/v2"}, Backends: to("a"),
			RequestHeaders:  &v1.HeaderChanges{Set: []v1.HeaderMatch{{Name: "X-From", Value: "weft"}}, Remove: []string{"X-Debug"}},
			ResponseHeaders: &v1.HeaderChanges{Add: []v1.HeaderMatch{{Name: "X-Route", Value: "api"}}}},
		v1.Route{Path: "/", Backends: to("a")},
	), map[string][]*backend{"ns/a:80": {a}})
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

	resp := get(t, client, "http://"+addr+"/api/x?q=1", "App.Example:8080")
	if resp.StatusCode != 200 || resp.Header.Get("X-Seen-Path") != "/v2/x?q=1" || resp.Header.Get("X-Seen-Host") != "App.Example:8080" ||
		resp.Header.Get("X-Seen-XFF") != "127.0.0.1" || resp.Header.Get("X-Seen-From") != "weft" || resp.Header.Get("X-Route") != "api" {
		t.Errorf("rewritten request: %d %v", resp.StatusCode, resp.Header)
	}
	req, _ := http.NewRequest("GET", "http://"+addr+"/api", nil)
	req.Host = "app.example"
	req.Header.Set("X-Debug", "1")
	req.Header.Set("X-Forwarded-For", "203.0.113.9")
	r2, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r2.Body.Close()
	if r2.Header.Get("X-Seen-Debug") != "" || r2.Header.Get("X-Seen-XFF") != "203.0.113.9, 127.0.0.1" {
		t.Errorf("header changes: %v", r2.Header)
	}
	if resp := get(t, client, "http://"+addr+"/old/x?y=2", "app.example"); resp.StatusCode != 308 || resp.Header.Get("Location") != "https://app.example/old/x?y=2" {
		t.Errorf("redirect: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	if resp := get(t, client, "http://"+addr+"/", "other.example"); resp.StatusCode != 404 {
		t.Errorf("unrouted host: %d", resp.StatusCode)
	}
	// Bodies: Content-Length and chunked.
	for _, body := range []io.Reader{strings.NewReader("hello"), io.MultiReader(strings.NewReader("hel"), strings.NewReader("lo"))} {
		req, _ := http.NewRequest("POST", "http://"+addr+"/", body)
		req.Host = "app.example"
		if _, ok := body.(*strings.Reader); !ok {
			req.ContentLength = -1 // chunked
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "a POST 5" {
			t.Errorf("POST body: %q", b)
		}
	}
	// Pipelining: three requests in one write, three answers in order on one connection.
	out := raw(t, addr, "GET /1 HTTP/1.1\r\nHost: app.example\r\n\r\nHEAD /2 HTTP/1.1\r\nHost: app.example\r\n\r\nGET /3 HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n", 2*time.Second)
	if strings.Count(out, "HTTP/1.1 200") != 3 || strings.Count(out, "a GET 0") != 2 || strings.Index(out, "/1") > strings.Index(out, "/3") {
		t.Errorf("pipelined: %q", out)
	}
	// A chunked answer: re-chunked for an HTTP/1.1 client, plain (and closed) for HTTP/1.0.
	if out := raw(t, addr, "GET /chunked HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n", 2*time.Second); !strings.Contains(out, "Transfer-Encoding: chunked") || !strings.HasSuffix(out, "\r\n0\r\n\r\n") {
		t.Errorf("chunked to HTTP/1.1: %q", out)
	}
	if out := raw(t, addr, "GET /chunked HTTP/1.0\r\nHost: app.example\r\n\r\n", 2*time.Second); strings.Contains(out, "Transfer-Encoding") || !strings.HasSuffix(out, "\r\n\r\nabcd") {
		t.Errorf("chunked to HTTP/1.0: %q", out)
	}
	// Expect: 100-continue: the proxy says continue, then relays the body.
	ec, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ec.Close()
	_ = ec.SetDeadline(time.Now().Add(3 * time.Second))
	ec.Write([]byte("POST / HTTP/1.1\r\nHost: app.example\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"))
	ebr := bufio.NewReader(ec)
	if line, err := ebr.ReadString('\n'); err != nil || line != "HTTP/1.1 100 Continue\r\n" {
		t.Fatalf("expect 100-continue: %q %v", line, err)
	}
	ebr.ReadString('\n')
	ec.Write([]byte("hello"))
	if resp, err := http.ReadResponse(ebr, nil); err != nil || resp.StatusCode != 200 {
		t.Errorf("after 100 Continue: %v %v", resp, err)
	} else if b, _ := io.ReadAll(resp.Body); string(b) != "a POST 5" {
		t.Errorf("after 100 Continue: body %q", b)
	}
	// Keep-alive: one connection, many requests.
	tr := &http.Transport{MaxConnsPerHost: 1}
	kc := &http.Client{Transport: tr}
	for range 20 {
		get(t, kc, "http://"+addr+"/", "app.example")
	}
	tr.CloseIdleConnections()
}

func TestHostileRequests(t *testing.T) {
	a := newBackend(t, "a", false)
	p, addr := proxyUnder(t, Config{ReadHeaderTimeout: 300 * time.Millisecond})
	update(p, ing(v1.Route{Path: "/", Backends: to("a")}), map[string][]*backend{"ns/a:80": {a}})
	h := "Host: app.example\r\n"
	for _, c := range []struct{ name, req, want string }{
		{"CL and TE", "POST / HTTP/1.1\r\n" + h + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n" + h + "\r\n", "HTTP/1.1 400"},
		{"two CLs", "POST / HTTP/1.1\r\n" + h + "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", "HTTP/1.1 400"},
		{"same CL twice", "POST / HTTP/1.1\r\n" + h + "Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", "HTTP/1.1 400"},
		{"TE not chunked", "POST / HTTP/1.1\r\n" + h + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", "HTTP/1.1 501"},
		{"TE with space before colon", "POST / HTTP/1.1\r\n" + h + "Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", "HTTP/1.1 400"},
		{"obs-fold", "GET / HTTP/1.1\r\n" + h + "X-A: 1\r\n  folded\r\n\r\n", "HTTP/1.1 400"},
		{"bare LF", "GET / HTTP/1.1\n" + h + "\r\n\r\n", "HTTP/1.1 400"},
		{"bare LF in a header", "GET / HTTP/1.1\r\nX-A: 1\nHost: app.example\r\n\r\n", "HTTP/1.1 400"},
		{"NUL in a value", "GET / HTTP/1.1\r\n" + h + "X-A: a\x00b\r\n\r\n", "HTTP/1.1 400"},
		{"no Host", "GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 400"},
		{"two Hosts", "GET / HTTP/1.1\r\n" + h + h + "\r\n", "HTTP/1.1 400"},
		{"oversized header", "GET / HTTP/1.1\r\n" + h + "X-Big: " + strings.Repeat("a", 20<<10) + "\r\n\r\n", "HTTP/1.1 431"},
		{"too many headers", "GET / HTTP/1.1\r\n" + h + strings.Repeat("X-A: 1\r\n", 200) + "\r\n", "HTTP/1.1 431"},
		{"dot segments", "GET /a/../admin HTTP/1.1\r\n" + h + "\r\n", "HTTP/1.1 400"},
		{"encoded slash", "GET /a%2F..%2Fadmin HTTP/1.1\r\n" + h + "\r\n", "HTTP/1.1 400"},
		{"encoded dot", "GET /%2e%2e/admin HTTP/1.1\r\n" + h + "\r\n", "HTTP/1.1 400"},
		{"backslash", "GET /a\\..\\admin HTTP/1.1\r\n" + h + "\r\n", "HTTP/1.1 400"},
		{"bad chunk size", "POST / HTTP/1.1\r\n" + h + "Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", "HTTP/1.1 400"},
		{"HTTP/2.0 in an HTTP/1 line", "GET / HTTP/2.0\r\n" + h + "\r\n", "HTTP/1.1 505"},
		{"body over the limit", "POST / HTTP/1.1\r\n" + h + "Content-Length: 99999999999\r\n\r\n", "HTTP/1.1 413"},
	} {
		out := raw(t, addr, c.req, 2*time.Second)
		if !strings.HasPrefix(out, c.want) || strings.Count(out, "HTTP/1.1") != 1 {
			t.Errorf("%s: got %q, want %s and a closed connection", c.name, trunc(out), c.want)
		}
	}
	if n := a.hits.Load(); n != 0 {
		t.Errorf("%d hostile requests reached the backend", n)
	}
	// A 10 MB header flood is cut off at the limit, not buffered.
	c, _ := net.Dial("tcp", addr)
	c.Write([]byte("GET / HTTP/1.1\r\n" + h))
	flood := bytes.Repeat([]byte("X-Flood: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n"), 16<<10)
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	go c.Write(flood)
	got, _ := io.ReadAll(c)
	c.Close()
	if !strings.HasPrefix(string(got), "HTTP/1.1 431") {
		t.Errorf("header flood: %q", trunc(string(got)))
	}
	// Slowloris: a head that never ends is cut off after ReadHeaderTimeout.
	start := time.Now()
	c, _ = net.Dial("tcp", addr)
	c.Write([]byte("GET / HTTP/1.1\r\n" + h))
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	go func() {
		for i := 0; i < 20; i++ {
			time.Sleep(100 * time.Millisecond)
			if _, err := c.Write([]byte("X-Slow: 1\r\n")); err != nil {
				return
			}
		}
	}()
	_, _ = io.ReadAll(c)
	c.Close()
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Errorf("slowloris connection held %v", d)
	}
	// Other connections are unaffected.
	if resp := get(t, http.DefaultClient, "http://"+addr+"/", "app.example"); resp.StatusCode != 200 {
		t.Errorf("after the hostile requests: %d", resp.StatusCode)
	}
}

// TestStalePooledConnection: an endpoint that closed a pooled connection while it was
// idle costs the client nothing: the request goes again on a fresh connection.
func TestStalePooledConnection(t *testing.T) {
	a := newBackendIdle(t, "a", false, 50*time.Millisecond)
	p, addr := proxyUnder(t, Config{})
	update(p, ing(v1.Route{Path: "/", Backends: to("a")}), map[string][]*backend{"ns/a:80": {a}})
	for i := range 4 {
		if resp := get(t, http.DefaultClient, "http://"+addr+"/", "app.example"); resp.StatusCode != 200 {
			t.Fatalf("request %d: %d", i, resp.StatusCode)
		}
		time.Sleep(150 * time.Millisecond) // the endpoint closes the idle connection
	}
}

// rawSyscalls runs the proxies of TestRawSyscalls with raw system calls, as weft-ingress's
// workers do.
var rawSyscalls bool

// TestRawSyscalls runs the HTTP/1.1 tests again on the data path of weft-ingress's
// workers (Config.RawSyscalls: raw reads and writes, a request to an endpoint sent from
// inside the wait for its answer).
func TestRawSyscalls(t *testing.T) {
	rawSyscalls = true
	defer func() { rawSyscalls = false }()
	for name, test := range map[string]func(*testing.T){
		"HTTP1": TestHTTP1, "HostileRequests": TestHostileRequests, "KeepAliveDeadlines": TestKeepAliveDeadlines,
		"Balancing": TestBalancing, "EndpointFailure": TestEndpointFailure, "ReloadKeepsWebSocket": TestReloadKeepsWebSocket,
		"TLSAndHTTP2": TestTLSAndHTTP2, "ProxyProtocol": TestProxyProtocol, "StalePooledConnection": TestStalePooledConnection,
	} {
		t.Run(name, test)
	}
}

// TestKeepAliveDeadlines: the deadlines a keep-alive connection keeps armed between
// requests (not moved on every request) still end an idle client on time, cut off a
// slow head that follows served requests, and hold a route's timeout on a pooled
// upstream connection.
func TestKeepAliveDeadlines(t *testing.T) {
	a := newBackend(t, "a", false)
	p, addr := proxyUnder(t, Config{IdleTimeout: time.Second, ReadHeaderTimeout: 300 * time.Millisecond})
	update(p, ing(v1.Route{Path: "/", Backends: to("a"), Timeout: v1.Duration(200 * time.Millisecond)}),
		map[string][]*backend{"ns/a:80": {a}})
	req := "GET / HTTP/1.1\r\nHost: app.example\r\n\r\n"
	// serve sends n requests on c and reads their answers.
	serve := func(c net.Conn, br *bufio.Reader, n int) {
		t.Helper()
		for range n {
			if _, err := c.Write([]byte(req)); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
	}
	dial := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		return c, bufio.NewReader(c)
	}

	// Idle: closed a second after the last answer, at most a 64th later (and scheduling).
	c, br := dial()
	serve(c, br, 50)
	idleFrom := time.Now()
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("idle connection: %v, want EOF", err)
	}
	if d := time.Since(idleFrom); d < 990*time.Millisecond || d > 1500*time.Millisecond {
		t.Errorf("idle connection closed after %v, want 1 s", d)
	}

	// A head that trickles in after served requests is cut off after ReadHeaderTimeout.
	c, br = dial()
	serve(c, br, 50)
	slowFrom := time.Now()
	_, _ = c.Write([]byte("GET / HTTP/1.1\r\n"))
	go func(c net.Conn) {
		for range 30 {
			time.Sleep(50 * time.Millisecond)
			if _, err := c.Write([]byte("X-Slow: 1\r\n")); err != nil {
				return
			}
		}
	}(c)
	_, _ = io.ReadAll(br)
	if d := time.Since(slowFrom); d < 290*time.Millisecond || d > 800*time.Millisecond {
		t.Errorf("slow head after keep-alive requests cut off after %v, want 300 ms", d)
	}

	// The route's 200 ms timeout holds on an upstream connection that served requests.
	c, br = dial()
	serve(c, br, 50)
	slowFrom = time.Now()
	_, _ = c.Write([]byte("GET /slow HTTP/1.1\r\nHost: app.example\r\n\r\n"))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if d := time.Since(slowFrom); resp.StatusCode != 504 || d < 190*time.Millisecond || d > 600*time.Millisecond {
		t.Errorf("slow endpoint: %d after %v, want 504 after 200 ms", resp.StatusCode, d)
	}
}

func trunc(s string) string {
	if len(s) > 120 {
		return s[:120] + "…"
	}
	return s
}

func TestBalancing(t *testing.T) {
	a, b, c := newBackend(t, "a", false), newBackend(t, "b", false), newBackend(t, "c", false)
	p, addr := proxyUnder(t, Config{})
	update(p, ing(
		v1.Route{Path: "/weights", Backends: []v1.Backend{{Service: "ab", Port: 80, Weight: 3}, {Service: "c", Port: 80}}},
		v1.Route{Path: "/hash", Backends: to("ab"), Balance: &v1.Balance{Policy: v1.BalanceHash, HashOn: "header:X-User"}},
		v1.Route{Path: "/sticky", Backends: to("ab"), Balance: &v1.Balance{AffinityCookie: "weft"}},
		v1.Route{Path: "/lr", Backends: to("ab"), Balance: &v1.Balance{Policy: v1.BalanceLeastRequest}},
	), map[string][]*backend{"ns/ab:80": {a, b}, "ns/c:80": {c}})
	count := func(path string, n int, hdr map[string]string, client *http.Client) map[string]int {
		got := map[string]int{}
		for range n {
			req, _ := http.NewRequest("GET", "http://"+addr+path, nil)
			req.Host = "app.example"
			for k, v := range hdr {
				req.Header.Set(k, v)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			got[resp.Header.Get("X-Backend")]++
		}
		return got
	}
	if w := count("/weights", 400, nil, http.DefaultClient); w["c"] < 70 || w["c"] > 130 || w["a"]+w["b"] < 270 {
		t.Errorf("weights 3:1 gave %v", w)
	}
	for _, user := range []string{"alice", "bob", "carol"} {
		if h := count("/hash", 10, map[string]string{"X-User": user}, http.DefaultClient); len(h) != 1 {
			t.Errorf("hash on X-User=%s spread over %v", user, h)
		}
	}
	jar := &cookieJar{}
	if s := count("/sticky", 10, nil, &http.Client{Jar: jar}); len(s) != 1 {
		t.Errorf("affinity cookie: %v", s)
	}
	if l := count("/lr", 40, nil, http.DefaultClient); l["a"] == 0 || l["b"] == 0 {
		t.Errorf("least request: %v", l)
	}
}

type cookieJar struct {
	mu sync.Mutex
	c  []*http.Cookie
}

func (j *cookieJar) SetCookies(_ *url.URL, cs []*http.Cookie) {
	j.mu.Lock()
	j.c = append(j.c, cs...)
	j.mu.Unlock()
}
func (j *cookieJar) Cookies(*url.URL) []*http.Cookie { j.mu.Lock(); defer j.mu.Unlock(); return j.c }

// TestEndpointFailure: a killed endpoint costs no failed request (retries), and is
// ejected after a few failures.
func TestEndpointFailure(t *testing.T) {
	// Two of three endpoints die (a pod's IPv4 and IPv6 addresses, say): two retries find
	// the live one, because a retry never goes back to an endpoint the request tried.
	a, b, c := newBackend(t, "a", false), newBackend(t, "b", false), newBackend(t, "c", false)
	p, addr := proxyUnder(t, Config{})
	update(p, ing(v1.Route{Path: "/", Backends: to("abc"), Retries: &v1.RetryPolicy{Attempts: 2, BudgetPercent: 100}}), map[string][]*backend{"ns/abc:80": {a, b, c}})
	b.srv.Close()
	c.srv.Close()
	for i := range 50 {
		if resp := get(t, http.DefaultClient, "http://"+addr+"/", "app.example"); resp.StatusCode != 200 {
			t.Fatalf("request %d after an endpoint died: %d", i, resp.StatusCode)
		}
	}
	var ejected bool
	for _, e := range p.endpoints {
		if e.addr == b.addr().String() {
			ejected = !e.usable(time.Now().UnixNano())
		}
	}
	if !ejected {
		t.Error("the dead endpoint was not ejected")
	}
	if n := a.hits.Load(); n != 50 {
		t.Errorf("the live endpoint served %d of 50", n)
	}
	// The same over HTTP/2 (h2c): retries there too.
	h2c := &http.Client{Transport: &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, n, _ string, _ *tls.Config) (net.Conn, error) {
		return net.Dial("tcp", addr)
	}}}
	for i := range 20 {
		for _, e := range p.endpoints {
			e.ejected.Store(0) // back in play: the retries, not the ejection, must save these
		}
		// And a fresh budget: with two of three endpoints dead a request needs one retry
		// on average, the most a 100 % budget allows, so the budget (tested on its own)
		// would refuse some at random.
		for _, rs := range p.state.Load().routes {
			rs.budget.requests.Store(0)
			rs.budget.previous.Store(0)
			rs.budget.retries.Store(0)
		}
		resp, err := h2c.Get("http://app.example/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Proto != "HTTP/2.0" {
			t.Fatalf("h2 request %d after endpoints died: %d %s", i, resp.StatusCode, resp.Proto)
		}
	}
}

// TestReloadKeepsWebSocket: an upgraded connection survives configuration and endpoint
// changes.
func TestReloadKeepsWebSocket(t *testing.T) {
	a, b := newBackend(t, "a", false), newBackend(t, "b", false)
	// A short header timeout: the upgraded connection outlives it.
	p, addr := proxyUnder(t, Config{ReadHeaderTimeout: 200 * time.Millisecond})
	update(p, ing(v1.Route{Path: "/", Backends: to("a")}), map[string][]*backend{"ns/a:80": {a}})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("GET /ws HTTP/1.1\r\nHost: app.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", err, resp)
	}
	for i := range 5 {
		msg := fmt.Sprintf("ping %d\n", i)
		c.Write([]byte(msg))
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		line, err := br.ReadString('\n')
		if err != nil || line != msg {
			t.Fatalf("echo %d: %q %v", i, line, err)
		}
		// A reload between messages: a new route, then the endpoint gone.
		if i == 1 {
			update(p, ing(v1.Route{Path: "/", Backends: to("b")}), map[string][]*backend{"ns/b:80": {b}})
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestTLSAndHTTP2(t *testing.T) {
	a := newBackend(t, "a", false)
	g := newBackend(t, "g", true)
	p := New(Config{RawSyscalls: rawSyscalls}, nil) // TestRawSyscalls runs it on the raw path too
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go p.Serve(ln, true)
	plain, _ := net.Listen("tcp", "127.0.0.1:0")
	defer plain.Close()
	go p.Serve(plain, false)
	ins := []v1.Ingress{{Name: "i", Namespace: "ns",
		Hosts: []v1.IngressHost{
			{Host: "one.example", Routes: []v1.Route{{Path: "/", Backends: to("a")}}},
			{Host: "two.example", Routes: []v1.Route{{Path: "/", Backends: []v1.Backend{{Service: "g", Port: 80, Protocol: "H2C"}}}}},
		}}}
	update(p, ins, map[string][]*backend{"ns/a:80": {a}, "ns/g:80": {g}})
	pool := x509.NewCertPool()
	certs := map[string][2]string{}
	for _, host := range []string{"one.example", "two.example"} {
		cp, kp, der := selfSigned(t, host)
		certs[host] = [2]string{cp, kp}
		c, _ := x509.ParseCertificate(der)
		pool.AddCert(c)
	}
	if err := p.SetCertificates(certs); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		host, proto, backend string
		h2                   bool
	}{
		{"one.example", "HTTP/1.1", "a", false},
		{"two.example", "HTTP/2.0", "g", true}, // h2 to the proxy, h2c to the backend
		{"one.example", "HTTP/1.1", "a", true}, // h2 to the proxy, HTTP/1.1 to the backend
	} {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: c.host}, ForceAttemptHTTP2: c.h2,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return net.Dial("tcp", ln.Addr().String()) }}
		resp, err := (&http.Client{Transport: tr}).Get("https://" + c.host + "/x")
		if err != nil {
			t.Fatalf("%s: %v", c.host, err)
		}
		resp.Body.Close()
		wantProto := "HTTP/1.1"
		if c.h2 {
			wantProto = "HTTP/2.0"
		}
		if resp.StatusCode != 200 || resp.Proto != wantProto || resp.Header.Get("X-Backend") != c.backend || resp.Header.Get("X-Seen-Proto") != c.proto ||
			resp.TLS.PeerCertificates[0].Subject.CommonName != c.host {
			t.Errorf("%s over %s: %d %s backend %s saw %s cert %s", c.host, resp.Proto, resp.StatusCode, resp.Proto, resp.Header.Get("X-Backend"), resp.Header.Get("X-Seen-Proto"), resp.TLS.PeerCertificates[0].Subject.CommonName)
		}
	}
	// Request bodies over HTTP/2 to an HTTP/1.1 endpoint: with a length, and streamed.
	h2 := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "one.example"}, ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return net.Dial("tcp", ln.Addr().String()) }}}
	for _, body := range []io.Reader{strings.NewReader("hello"), io.MultiReader(strings.NewReader("hel"), strings.NewReader("lo"))} {
		req, _ := http.NewRequest("POST", "https://one.example/post", body)
		if _, ok := body.(*strings.Reader); !ok {
			req.ContentLength = -1
		}
		resp, err := h2.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.Proto != "HTTP/2.0" || string(b) != "a POST 5" {
			t.Errorf("POST over h2 (length %d): %s %q", req.ContentLength, resp.Proto, b)
		}
	}
	// h2c by prior knowledge on the plain listener.
	h2c := &http.Client{Transport: &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, n, _ string, _ *tls.Config) (net.Conn, error) {
		return net.Dial("tcp", plain.Addr().String())
	}}}
	req, _ := http.NewRequest("GET", "http://one.example/", nil)
	resp, err := h2c.Do(req)
	if err != nil || resp.Proto != "HTTP/2.0" || resp.Header.Get("X-Backend") != "a" {
		t.Fatalf("h2c: %v %v", err, resp)
	}
	resp.Body.Close()
}

// TestRapidReset: a burst of HTTP/2 streams opened and reset at once (CVE-2023-44487)
// neither takes the proxy down nor holds up other clients.
func TestRapidReset(t *testing.T) {
	a := newBackend(t, "a", false)
	p, addr := proxyUnder(t, Config{})
	update(p, ing(v1.Route{Path: "/", Backends: to("a")}), map[string][]*backend{"ns/a:80": {a}})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte(h2Preface))
	fr := http2.NewFramer(c, c)
	fr.WriteSettings()
	go func() { // drain whatever the server sends
		for {
			if _, err := fr.ReadFrame(); err != nil {
				return
			}
		}
	}()
	var hbuf bytes.Buffer
	enc := hpackEncoder(&hbuf)
	for id := uint32(1); id < 20000; id += 2 {
		hbuf.Reset()
		enc(":method", "GET", ":scheme", "http", ":authority", "app.example", ":path", "/")
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hbuf.Bytes(), EndHeaders: true, EndStream: true}); err != nil {
			break // the server closed the connection: fine
		}
		if err := fr.WriteRSTStream(id, http2.ErrCodeCancel); err != nil {
			break
		}
	}
	start := time.Now()
	if resp := get(t, http.DefaultClient, "http://"+addr+"/", "app.example"); resp.StatusCode != 200 {
		t.Errorf("after a rapid-reset burst: %d", resp.StatusCode)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("another client waited %v", d)
	}
}

func selfSigned(t *testing.T, host string) (certPEM, keyPEM string, der []byte) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: host}, DNSNames: []string{host},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})), der
}

func FuzzParseRequest(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
	f.Add([]byte("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"))
	f.Add([]byte("GET /a/%2e%2e/b HTTP/1.0\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(data), 4096)
		var m message
		for range 4 {
			head, err := readHead(br, 4096)
			if err != nil {
				return
			}
			if err := parseRequest(&m, head, 100); err != nil {
				return
			}
			if m.chunked && m.contentLength >= 0 {
				t.Fatal("accepted both Content-Length and chunked")
			}
			if !m.http10 && len(m.host) == 0 && bytes.Count(head, []byte("\nHost:")) == 0 {
				// an accepted HTTP/1.1 request always has its Host
				if _, ok := m.get("host"); !ok {
					t.Fatal("accepted an HTTP/1.1 request without Host")
				}
			}
			if path, _, err := splitTarget(m.target); err == nil {
				if strings.Contains(path, "/../") || strings.HasSuffix(path, "/..") || strings.Contains(strings.ToLower(path), "%2f") {
					t.Fatalf("accepted path %q", path)
				}
			}
		}
	})
}

// hpackEncoder returns a function that HPACK-encodes name/value pairs into buf.
func hpackEncoder(buf *bytes.Buffer) func(kv ...string) {
	enc := hpack.NewEncoder(buf)
	return func(kv ...string) {
		for i := 0; i+1 < len(kv); i += 2 {
			_ = enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
		}
	}
}

// BenchmarkKeepAlive measures one keep-alive request through the proxy to a raw HTTP/1.1
// backend on loopback; allocs/op is the figure to watch (the data path allocates nothing).
func BenchmarkKeepAlive(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	resp := []byte("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + strings.Repeat("x", 100))
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					if _, err := readHead(br, 1<<16); err != nil {
						return
					}
					if _, err := c.Write(resp); err != nil {
						return
					}
				}
			}()
		}
	}()
	p := New(Config{}, nil)
	pl, _ := net.Listen("tcp", "127.0.0.1:0")
	defer pl.Close()
	go p.Serve(pl, false)
	p.Update(route.Compile(ing(v1.Route{Path: "/", Backends: to("a")})), map[string][]netip.AddrPort{"ns/a:80": {netip.MustParseAddrPort(ln.Addr().String())}})
	c, err := net.Dial("tcp", pl.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	req := []byte("GET / HTTP/1.1\r\nHost: app.example\r\n\r\n")
	body := make([]byte, 100)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		if _, err := readHead(br, 1<<16); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(br, body); err != nil {
			b.Fatal(err)
		}
	}
}

// TestRetryBudget: retries stop at the budget's share of the requests of this second and
// the one before (at least three a second).
func TestRetryBudget(t *testing.T) {
	var b retryBudget
	b.percent = 20
	for range 100 {
		b.request(time.Now().Unix())
	}
	allowed := 0
	for range 50 {
		if b.allow() {
			allowed++
		}
	}
	if allowed != 20 && b.second.Load() == time.Now().Unix() {
		t.Errorf("%d retries allowed for 100 requests at 20 %%, want 20", allowed)
	}
	// Early in a new second, the second before still counts: 100 requests then, none yet
	// now, and 20 retries are allowed.
	var early retryBudget
	early.percent = 20
	early.second.Store(time.Now().Unix() - 1)
	early.requests.Store(100)
	allowed = 0
	for range 50 {
		if early.allow() {
			allowed++
		}
	}
	if allowed != 20 && early.second.Load() == time.Now().Unix() {
		t.Errorf("early in a second: %d retries allowed after 100 requests the second before, want 20", allowed)
	}
	var quiet retryBudget
	quiet.percent = 20
	quiet.request(time.Now().Unix())
	if !quiet.allow() || !quiet.allow() || !quiet.allow() || quiet.allow() {
		t.Error("a quiet route gets exactly three retries a second")
	}
}

// TestProxyProtocol: behind a load balancer the client's address comes from the PROXY
// header (v1 and v2) and reaches the endpoint in X-Forwarded-For.
func TestProxyProtocol(t *testing.T) {
	a := newBackend(t, "a", false)
	p, addr := proxyUnder(t, Config{ProxyProtocol: true})
	update(p, ing(v1.Route{Path: "/", Backends: to("a")}), map[string][]*backend{"ns/a:80": {a}})
	v2 := func(src [4]byte) string {
		b := []byte(proxyV2Signature)
		b = append(b, 0x21, 0x11, 0, 12)
		b = append(b, src[:]...)
		b = append(b, 127, 0, 0, 1, 0x30, 0x39, 0, 80)
		return string(b)
	}
	for _, c := range []struct{ name, header, want string }{
		{"v1", "PROXY TCP4 203.0.113.7 127.0.0.1 40000 80\r\n", "203.0.113.7"},
		{"v2", v2([4]byte{198, 51, 100, 9}), "198.51.100.9"},
	} {
		out := raw(t, addr, c.header+"GET / HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n", 2*time.Second)
		if !strings.Contains(out, "X-Seen-Xff: "+c.want) {
			t.Errorf("%s: the endpoint did not see %s: %q", c.name, c.want, trunc(out))
		}
	}
	if out := raw(t, addr, "GET / HTTP/1.1\r\nHost: app.example\r\n\r\n", time.Second); strings.Contains(out, "200 OK") {
		t.Error("a connection without a PROXY header was served")
	}
}

// TestH2CRetries: requests to H2C (gRPC) endpoints retry on another endpoint too.
func TestH2CRetries(t *testing.T) {
	g1, g2 := newBackend(t, "g1", true), newBackend(t, "g2", true)
	p, addr := proxyUnder(t, Config{})
	update(p, ing(v1.Route{Path: "/", Backends: []v1.Backend{{Service: "g", Port: 80, Protocol: "H2C"}},
		Retries: &v1.RetryPolicy{Attempts: 2, BudgetPercent: 100}}), map[string][]*backend{"ns/g:80": {g1, g2}})
	g2.srv.Close()
	h2c := &http.Client{Transport: &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, n, _ string, _ *tls.Config) (net.Conn, error) {
		return net.Dial("tcp", addr)
	}}}
	for i := range 20 {
		for _, e := range p.endpoints {
			e.ejected.Store(0)
		}
		resp, err := h2c.Get("http://app.example/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("X-Backend") != "g1" {
			t.Fatalf("request %d with an H2C endpoint dead: %d from %q", i, resp.StatusCode, resp.Header.Get("X-Backend"))
		}
	}
}
