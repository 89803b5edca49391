package dns

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mdns "github.com/miekg/dns"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Server answers the cluster domain from the current Records and forwards every other
// name to the upstream resolvers through a cache. It answers only clients in Allowed
// (the pod networks and the node): never an open resolver.
type Server struct {
	Allowed   []netip.Prefix
	Upstreams []string // host:port
	// OnQuery, if set, hears every answered query (for metrics): type, rcode, cached.
	OnQuery func(qtype uint16, rcode int, cached bool)
	// OnUpstream, if set, hears every upstream exchange: how long it took and whether it failed.
	OnUpstream func(upstream string, took time.Duration, err error)
	// OnRefused, if set, hears a refused client (rate-limited logging is the caller's).
	OnRefused func(client netip.Addr)
	// MaxForwarding bounds the UDP queries waiting on an upstream at once (0: 1024); past
	// it, a query gets SERVFAIL at once, so a flood of unique names cannot pile up goroutines.
	MaxForwarding int

	forwardingOnce sync.Once
	forwarding     chan struct{}

	records atomic.Pointer[Records]
	cache   cache
}

// SetRecords swaps in a new snapshot of the zone.
func (s *Server) SetRecords(r *Records) { s.records.Store(r) }

// Records returns the current snapshot.
func (s *Server) Records() *Records { return s.records.Load() }

// ServeDNS implements mdns.Handler (TCP, and UDP on a wildcard address).
func (s *Server) ServeDNS(w mdns.ResponseWriter, req *mdns.Msg) {
	_, udp := w.RemoteAddr().(*net.UDPAddr)
	_ = w.WriteMsg(s.answer(req, addrOf(w.RemoteAddr()), udp, true))
}

// answer is the reply to req from client: REFUSED outside Allowed, the zone's own names,
// or the forwarded answer, truncated to the client's buffer over UDP. Without mayBlock it
// returns nil rather than wait for an upstream.
func (s *Server) answer(req *mdns.Msg, client netip.Addr, udp, mayBlock bool) *mdns.Msg {
	if !s.allowed(client) {
		if s.OnRefused != nil {
			s.OnRefused(client)
		}
		m := new(mdns.Msg)
		m.SetRcode(req, mdns.RcodeRefused)
		return m
	}
	m, cached := s.resolve(req, mayBlock)
	if m == nil {
		return nil
	}
	if s.OnQuery != nil && len(req.Question) == 1 {
		s.OnQuery(req.Question[0].Qtype, m.Rcode, cached)
	}
	if udp {
		size := mdns.MinMsgSize
		if o := req.IsEdns0(); o != nil {
			size = int(max(o.UDPSize(), mdns.MinMsgSize))
		}
		m.Truncate(size) // the client retries over TCP
	}
	return m
}

// Resolve answers req: the zone's own names authoritatively, anything else through the
// cache and the upstreams. It reports whether the answer came from the cache.
func (s *Server) Resolve(req *mdns.Msg) (*mdns.Msg, bool) { return s.resolve(req, true) }

func (s *Server) resolve(req *mdns.Msg, mayBlock bool) (*mdns.Msg, bool) {
	if len(req.Question) != 1 || req.Opcode != mdns.OpcodeQuery {
		m := new(mdns.Msg)
		m.SetRcode(req, mdns.RcodeFormatError)
		return m, false
	}
	if r := s.records.Load(); r != nil {
		if m, ok := r.Answer(req); ok {
			setEDNS(req, m)
			return m, false
		}
	}
	var m *mdns.Msg
	cached := true
	if mayBlock {
		m, cached = s.cache.get(req, s.forward)
	} else if m = s.cache.peek(req); m == nil {
		return nil, false
	}
	setEDNS(req, m)
	return m, cached
}

func setEDNS(req, m *mdns.Msg) {
	if o := req.IsEdns0(); o != nil && m.IsEdns0() == nil {
		m.SetEdns0(max(o.UDPSize(), mdns.MinMsgSize), false)
	}
}

// forward asks the upstreams in turn; SERVFAIL when none answers.
func (s *Server) forward(q mdns.Question) *mdns.Msg {
	req := new(mdns.Msg)
	req.SetQuestion(q.Name, q.Qtype)
	req.Question[0].Qclass = q.Qclass
	req.RecursionDesired = true
	req.SetEdns0(4096, false)
	for _, up := range s.Upstreams {
		c := &mdns.Client{Net: "udp", Timeout: 2 * time.Second}
		start := time.Now()
		m, _, err := c.Exchange(req, up)
		if err == nil && m.Truncated {
			c.Net = "tcp"
			m, _, err = c.Exchange(req, up)
		}
		if s.OnUpstream != nil {
			s.OnUpstream(up, time.Since(start), err)
		}
		if err == nil && m != nil {
			return m
		}
	}
	m := new(mdns.Msg)
	m.SetRcode(req, mdns.RcodeServerFailure)
	return m
}

func (s *Server) allowed(a netip.Addr) bool {
	if a.IsLoopback() {
		return true
	}
	for _, p := range s.Allowed {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func addrOf(a net.Addr) netip.Addr {
	switch v := a.(type) {
	case *net.UDPAddr:
		ip, _ := netip.AddrFromSlice(v.IP)
		return ip.Unmap()
	case *net.TCPAddr:
		ip, _ := netip.AddrFromSlice(v.IP)
		return ip.Unmap()
	}
	return netip.Addr{}
}

// ListenAndServe serves UDP and TCP on addr until ctx ends. On a specific address, UDP
// is served in batches (see serveUDP); on a wildcard one, replies must leave from the
// address each query came to, which miekg's server handles per packet.
func (s *Server) ListenAndServe(ctx context.Context, addr string) error {
	udpAddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return err
	}
	tcp := &mdns.Server{Addr: addr, Net: "tcp", Handler: s, ReusePort: true}
	servers := []*mdns.Server{tcp}
	var conn *net.UDPConn
	if udpAddr.IP == nil || udpAddr.IP.IsUnspecified() {
		servers = append(servers, &mdns.Server{Addr: addr, Net: "udp", Handler: s, ReusePort: true})
	} else if conn, err = net.ListenUDP("udp", udpAddr); err != nil {
		return err
	}
	errc := make(chan error, len(servers)+1)
	started := make(chan struct{}, len(servers))
	for _, srv := range servers {
		srv.NotifyStartedFunc = func() { started <- struct{}{} }
		go func() { errc <- srv.ListenAndServe() }()
	}
	stop := func() {
		for _, srv := range servers {
			_ = srv.ShutdownContext(context.Background())
		}
		if conn != nil {
			_ = conn.Close()
		}
	}
	for range servers {
		select {
		case <-started:
		case err := <-errc:
			stop()
			return err
		}
	}
	if conn != nil {
		go func() { errc <- s.serveUDP(conn) }()
	}
	select {
	case <-ctx.Done():
		stop()
		return nil
	case err := <-errc:
		stop()
		return err
	}
}

// udpBatch is how many datagrams one recvmmsg/sendmmsg moves. Per-packet syscalls were
// half of the server's CPU under load; batching them is what BIND (libuv) does too.
const udpBatch = 64

// serveUDP answers the datagrams on conn in batches: it reads up to udpBatch queries with
// one syscall, answers those it can from memory (the zone, the cache, refusals) and sends
// the replies with one syscall. A query that needs an upstream leaves the batch and is
// answered on its own when the upstream replies.
func (s *Server) serveUDP(conn *net.UDPConn) error {
	var bc batchConn = ipv4.NewPacketConn(conn)
	if conn.LocalAddr().(*net.UDPAddr).IP.To4() == nil {
		bc = ipv6.NewPacketConn(conn)
	}
	in := make([]ipv4.Message, udpBatch)
	for i := range in {
		in[i].Buffers = [][]byte{make([]byte, 4096)}
	}
	out := make([]ipv4.Message, udpBatch)
	bufs := make([][]byte, udpBatch)
	for {
		n, err := bc.ReadBatch(in, 0)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		k := 0
		for _, msg := range in[:n] {
			addr, ok := msg.Addr.(*net.UDPAddr)
			if !ok {
				continue
			}
			query := msg.Buffers[0][:msg.N]
			if b, a, ok := s.packedAnswer(query, addr, bufs[k]); ok {
				bufs[k] = b
				out[k] = ipv4.Message{Buffers: [][]byte{b}, Addr: addr}
				k++
				if s.OnQuery != nil {
					s.OnQuery(a.qtype, a.rcode, false)
				}
				continue
			}
			m, zone := s.answerPacket(query, addr, conn)
			if m == nil {
				continue
			}
			b, err := m.PackBuffer(bufs[k])
			if err != nil {
				continue
			}
			if zone != nil {
				zone.keepPacked(query, b, m.Rcode)
			}
			bufs[k] = b
			out[k] = ipv4.Message{Buffers: [][]byte{b}, Addr: addr}
			k++
		}
		for sent := 0; sent < k; {
			w, err := bc.WriteBatch(out[sent:k], 0)
			if err != nil {
				break // the client is gone; its query is lost as a datagram would be
			}
			sent += w
		}
	}
}

type batchConn interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

// packedAnswer is the reply to a plain query for the zone from an allowed client, from
// the snapshot's packed answers (packed.go), or false.
func (s *Server) packedAnswer(b []byte, from *net.UDPAddr, out []byte) ([]byte, packedAnswer, bool) {
	r := s.records.Load()
	if r == nil || !s.allowed(addrOf(from)) {
		return nil, packedAnswer{}, false
	}
	return r.packed(b, out)
}

// answerPacket is the reply to one datagram, or nil: none is due (a response, not a
// query) or it is being answered apart because it waits on an upstream. zone is the
// snapshot that answered it, when it did so for an allowed client (its packed form may
// be kept).
func (s *Server) answerPacket(b []byte, from *net.UDPAddr, conn *net.UDPConn) (m *mdns.Msg, zone *Records) {
	req := new(mdns.Msg)
	if err := req.Unpack(b); err != nil {
		if len(b) < 12 || b[2]&0x80 != 0 { // no header, or a response: never answer
			return nil, nil
		}
		m := new(mdns.Msg)
		m.Id, m.Response, m.Rcode = binary.BigEndian.Uint16(b), true, mdns.RcodeFormatError
		return m, nil
	}
	if req.Response {
		return nil, nil
	}
	client := addrOf(from)
	r := s.records.Load()
	if m := s.answer(req, client, true, false); m != nil {
		if r != nil && s.allowed(client) && len(req.Question) == 1 && req.Opcode == mdns.OpcodeQuery &&
			r.Ours(req.Question[0].Name) && s.records.Load() == r {
			zone = r
		}
		return m, zone
	}
	s.forwardingOnce.Do(func() { s.forwarding = make(chan struct{}, cmp.Or(s.MaxForwarding, 1024)) })
	select {
	case s.forwarding <- struct{}{}:
	default:
		m := new(mdns.Msg)
		m.SetRcode(req, mdns.RcodeServerFailure)
		return m, nil
	}
	to := &net.UDPAddr{IP: slices.Clone(from.IP), Port: from.Port, Zone: from.Zone}
	go func() {
		defer func() { <-s.forwarding }()
		if b, err := s.answer(req, client, true, true).Pack(); err == nil {
			_, _ = conn.WriteToUDP(b, to)
		}
	}()
	return nil, nil
}

// cache keeps upstream answers for their TTL (negative ones for the SOA's minimum, and a
// failure for a few seconds), bounded in size, and makes concurrent identical questions
// share one upstream query.
type cache struct {
	mu       sync.Mutex
	entries  map[mdns.Question]cacheEntry
	inflight map[mdns.Question]*call
}

type cacheEntry struct {
	msg     *mdns.Msg
	expires time.Time
}

type call struct {
	done chan struct{}
	msg  *mdns.Msg
}

const (
	cacheMax     = 10000
	failureTTL   = 2 * time.Second
	maxCachedTTL = 300 * time.Second
)

// peek is the cached answer to req, or nil (never waits on an upstream).
func (c *cache) peek(req *mdns.Msg) *mdns.Msg {
	q := req.Question[0]
	q.Name = strings.ToLower(q.Name)
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[q]; ok && now.Before(e.expires) {
		return reply(req, e.msg, e.expires.Sub(now))
	}
	return nil
}

func (c *cache) get(req *mdns.Msg, fetch func(mdns.Question) *mdns.Msg) (*mdns.Msg, bool) {
	q := req.Question[0]
	q.Name = strings.ToLower(q.Name)
	now := time.Now()
	c.mu.Lock()
	if c.entries == nil {
		c.entries, c.inflight = map[mdns.Question]cacheEntry{}, map[mdns.Question]*call{}
	}
	if e, ok := c.entries[q]; ok && now.Before(e.expires) {
		c.mu.Unlock()
		return reply(req, e.msg, e.expires.Sub(now)), true
	}
	if cl, ok := c.inflight[q]; ok { // coalesce identical questions in flight
		c.mu.Unlock()
		<-cl.done
		return reply(req, cl.msg, 0), true
	}
	cl := &call{done: make(chan struct{})}
	c.inflight[q] = cl
	c.mu.Unlock()

	cl.msg = fetch(q)
	close(cl.done)
	ttl := cacheTTL(cl.msg)
	c.mu.Lock()
	delete(c.inflight, q)
	if ttl > 0 {
		if len(c.entries) >= cacheMax {
			c.evict(now)
		}
		c.entries[q] = cacheEntry{msg: cl.msg, expires: now.Add(ttl)}
	}
	c.mu.Unlock()
	return reply(req, cl.msg, 0), false
}

// evict drops the expired entries, then any others, down to 90 % of the bound.
func (c *cache) evict(now time.Time) {
	for k, e := range c.entries {
		if now.After(e.expires) {
			delete(c.entries, k)
		}
	}
	for k := range c.entries {
		if len(c.entries) < cacheMax*9/10 {
			return
		}
		delete(c.entries, k)
	}
}

// cacheTTL is how long an upstream answer may be kept.
func cacheTTL(m *mdns.Msg) time.Duration {
	switch m.Rcode {
	case mdns.RcodeServerFailure:
		return failureTTL
	case mdns.RcodeSuccess, mdns.RcodeNameError:
	default:
		return 0
	}
	ttl := maxCachedTTL
	rrs := m.Answer
	if len(rrs) == 0 { // negative: the SOA's minimum bounds it
		for _, rr := range m.Ns {
			if soa, ok := rr.(*mdns.SOA); ok {
				ttl = min(ttl, time.Duration(min(soa.Minttl, soa.Hdr.Ttl))*time.Second)
			}
		}
		if ttl == maxCachedTTL {
			ttl = 30 * time.Second
		}
	}
	for _, rr := range rrs {
		ttl = min(ttl, time.Duration(rr.Header().Ttl)*time.Second)
	}
	return ttl
}

// reply answers req with a cached message, the TTLs lowered by the time it was kept.
func reply(req, cached *mdns.Msg, left time.Duration) *mdns.Msg {
	m := cached.Copy()
	m.Id = req.Id
	m.Question = req.Question
	m.RecursionDesired = req.RecursionDesired
	if left > 0 {
		secs := uint32(left / time.Second)
		for _, rrs := range [][]mdns.RR{m.Answer, m.Ns, m.Extra} {
			for _, rr := range rrs {
				if h := rr.Header(); h.Rrtype != mdns.TypeOPT && h.Ttl > secs {
					h.Ttl = secs
				}
			}
		}
	}
	return m
}
