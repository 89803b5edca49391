package dns

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// upstream runs a resolver on loopback that answers example.com A and counts queries.
func upstream(t *testing.T, delay time.Duration) (string, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := mdns.HandlerFunc(func(w mdns.ResponseWriter, req *mdns.Msg) {
		n.Add(1)
		time.Sleep(delay)
		m := new(mdns.Msg)
		m.SetReply(req)
		if strings.EqualFold(req.Question[0].Name, "example.com.") {
			rr, _ := mdns.NewRR("example.com. 60 IN A 192.0.2.7")
			m.Answer = []mdns.RR{rr}
		} else {
			m.Rcode = mdns.RcodeNameError
			soa, _ := mdns.NewRR("com. 900 IN SOA a. b. 1 2 3 4 30")
			m.Ns = []mdns.RR{soa}
		}
		_ = w.WriteMsg(m)
	})
	srv := &mdns.Server{PacketConn: pc, Handler: h}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().String(), &n
}

func query(name string, t uint16) *mdns.Msg {
	m := new(mdns.Msg)
	m.SetQuestion(name, t)
	return m
}

func TestForwardCacheCoalesce(t *testing.T) {
	addr, n := upstream(t, 50*time.Millisecond)
	s := &Server{Upstreams: []string{addr}}
	s.SetRecords(zone())
	// The zone's own names never go upstream.
	if m, _ := s.Resolve(query("web.shop.svc.cluster.local.", mdns.TypeA)); len(m.Answer) != 1 || n.Load() != 0 {
		t.Fatalf("zone answer %v, upstream queries %d", m, n.Load())
	}
	// Ten identical questions at once: one upstream query.
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if m, _ := s.Resolve(query("Example.COM.", mdns.TypeA)); len(m.Answer) != 1 {
				t.Errorf("forwarded answer %v", m)
			}
		}()
	}
	wg.Wait()
	if n.Load() != 1 {
		t.Errorf("%d upstream queries for 10 concurrent identical ones", n.Load())
	}
	// From the cache, TTL lowered, not asking again.
	m, cached := s.Resolve(query("example.com.", mdns.TypeA))
	if !cached || n.Load() != 1 || m.Answer[0].Header().Ttl > 60 {
		t.Errorf("cache: cached=%v upstream=%d %v", cached, n.Load(), m)
	}
	// Negative answers are cached too (for the SOA's minimum).
	s.Resolve(query("nope.com.", mdns.TypeA))
	if m, cached := s.Resolve(query("nope.com.", mdns.TypeA)); !cached || m.Rcode != mdns.RcodeNameError {
		t.Errorf("negative cache: cached=%v %v", cached, m)
	}
}

func TestUpstreamDown(t *testing.T) {
	pc, _ := net.ListenPacket("udp", "127.0.0.1:0")
	dead := pc.LocalAddr().String()
	pc.Close()
	s := &Server{Upstreams: []string{dead}}
	start := time.Now()
	m, _ := s.Resolve(query("example.org.", mdns.TypeA))
	if m.Rcode != mdns.RcodeServerFailure {
		t.Fatalf("rcode %s, want SERVFAIL", mdns.RcodeToString[m.Rcode])
	}
	// The failure is cached briefly: the next client does not wait again.
	first := time.Since(start)
	start = time.Now()
	if m, cached := s.Resolve(query("example.org.", mdns.TypeA)); !cached || m.Rcode != mdns.RcodeServerFailure || time.Since(start) > first/2+10*time.Millisecond {
		t.Errorf("failure not cached: cached=%v %v", cached, m)
	}
}

// writer records what ServeDNS writes.
type writer struct {
	remote net.Addr
	msg    *mdns.Msg
}

func (w *writer) LocalAddr() net.Addr         { return w.remote }
func (w *writer) RemoteAddr() net.Addr        { return w.remote }
func (w *writer) WriteMsg(m *mdns.Msg) error  { w.msg = m; return nil }
func (w *writer) Write(b []byte) (int, error) { return len(b), nil }
func (w *writer) Close() error                { return nil }
func (w *writer) TsigStatus() error           { return nil }
func (w *writer) TsigTimersOnly(bool)         {}
func (w *writer) Hijack()                     {}

func TestNotAnOpenResolver(t *testing.T) {
	s := &Server{Allowed: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}}
	s.SetRecords(zone())
	var refused []netip.Addr
	s.OnRefused = func(a netip.Addr) { refused = append(refused, a) }
	for addr, want := range map[string]int{"10.244.3.3": mdns.RcodeSuccess, "127.0.0.1": mdns.RcodeSuccess, "192.168.255.254": mdns.RcodeRefused} {
		w := &writer{remote: &net.UDPAddr{IP: net.ParseIP(addr), Port: 5353}}
		s.ServeDNS(w, query("web.shop.svc.cluster.local.", mdns.TypeA))
		if w.msg.Rcode != want {
			t.Errorf("client %s: %s, want %s", addr, mdns.RcodeToString[w.msg.Rcode], mdns.RcodeToString[want])
		}
	}
	if len(refused) != 1 {
		t.Errorf("refused %v", refused)
	}
}

func TestTruncationOverUDP(t *testing.T) {
	s := &Server{}
	r := zone()
	// 100 A records under one name: more than 512 bytes.
	for i := range 100 {
		rr, _ := mdns.NewRR("big.shop.svc.cluster.local. 5 IN A 10.96.1." + strconv.Itoa(i))
		r.add(rr)
	}
	s.SetRecords(r)
	w := &writer{remote: &net.UDPAddr{IP: net.ParseIP("127.0.0.1"), Port: 5353}}
	s.ServeDNS(w, query("big.shop.svc.cluster.local.", mdns.TypeA))
	if !w.msg.Truncated {
		t.Errorf("a 100-record answer over UDP without EDNS was not truncated")
	}
	req := query("big.shop.svc.cluster.local.", mdns.TypeA)
	req.SetEdns0(4096, false)
	s.ServeDNS(w, req)
	if w.msg.Truncated || len(w.msg.Answer) != 100 || w.msg.IsEdns0() == nil {
		t.Errorf("with EDNS0 4096: truncated=%v answers=%d", w.msg.Truncated, len(w.msg.Answer))
	}
	wt := &writer{remote: &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 5353}}
	s.ServeDNS(wt, query("big.shop.svc.cluster.local.", mdns.TypeA))
	if wt.msg.Truncated || len(wt.msg.Answer) != 100 {
		t.Errorf("over TCP: truncated=%v answers=%d", wt.msg.Truncated, len(wt.msg.Answer))
	}
}

func TestListenAndServe(t *testing.T) {
	s := &Server{}
	s.SetRecords(zone())
	ctx, cancel := context.WithCancel(context.Background())
	pc, _ := net.ListenPacket("udp", "127.0.0.1:0")
	addr := pc.LocalAddr().String()
	pc.Close()
	done := make(chan error, 1)
	go func() { done <- s.ListenAndServe(ctx, addr) }()
	var m *mdns.Msg
	var err error
	for range 50 {
		if m, _, err = new(mdns.Client).Exchange(query("web.shop.svc.cluster.local.", mdns.TypeAAAA), addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil || len(m.Answer) != 1 {
		t.Fatalf("UDP query: %v %v", m, err)
	}
	if m, _, err = (&mdns.Client{Net: "tcp"}).Exchange(query("web.shop.svc.cluster.local.", mdns.TypeA), addr); err != nil || len(m.Answer) != 1 {
		t.Fatalf("TCP query: %v %v", m, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestForwardingBounded: past MaxForwarding queries waiting on an upstream, the next one
// gets SERVFAIL at once instead of another goroutine.
func TestForwardingBounded(t *testing.T) {
	silent, err := net.ListenPacket("udp", "127.0.0.1:0") // an upstream that never answers
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	s := &Server{Upstreams: []string{silent.LocalAddr().String()}, MaxForwarding: 2}
	from := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5353}
	for i, want := range []int{-1, -1, mdns.RcodeServerFailure} {
		b, _ := query(fmt.Sprintf("n%d.example.net.", i), mdns.TypeA).Pack()
		m, _ := s.answerPacket(b, from, conn)
		switch {
		case want < 0 && m != nil:
			t.Errorf("query %d answered at once (%s), want it forwarded", i, mdns.RcodeToString[m.Rcode])
		case want >= 0 && (m == nil || m.Rcode != want):
			t.Errorf("query %d: %v, want %s", i, m, mdns.RcodeToString[want])
		}
	}
}
