package proxy

import (
	"bufio"
	"context"
	"hash/fnv"
	"math/rand/v2"
	"net"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/ingress/route"
)

// endpoint is one backend address with its connection pool and health. It outlives
// configuration changes that keep its address, so pools and health carry across them.
type endpoint struct {
	addr  string // ip:port
	ap    netip.AddrPort
	rawIO bool // Config.RawSyscalls

	mu   sync.Mutex
	idle []*upConn // most recently used last

	active   atomic.Int64 // requests in flight (least-request)
	fails    atomic.Int32 // consecutive failures (passive health)
	ejected  atomic.Int64 // unix nanoseconds until which it takes no requests
	ejection atomic.Int32 // times ejected in a row: the next ejection lasts longer
	down     atomic.Bool  // failed its active health check
	removed  atomic.Bool  // no longer an endpoint: its idle connections are closed

	connectErrors atomic.Uint64
}

// upConn is a connection to an endpoint.
type upConn struct {
	net.Conn
	br    *bufio.Reader
	bw    *bufio.Writer
	used  time.Time // when it went idle
	armed time.Time // the deadline set on it (zero: none)
}

// arm gives the connection a deadline of want (or up to slack later, see keptDeadline).
func (c *upConn) arm(want time.Time, slack time.Duration) {
	if d, move := keptDeadline(c.armed, want, slack); move {
		_ = c.SetDeadline(d)
		c.armed = d
	}
}

// disarm clears the connection's deadline.
func (c *upConn) disarm() {
	if !c.armed.IsZero() {
		_ = c.SetDeadline(time.Time{})
		c.armed = time.Time{}
	}
}

// keptDeadline decides a keep-alive connection's deadline when want is asked for: the one
// armed stays (move false) if it lies within [want, want+slack]; otherwise it moves to
// want+slack. Each move is a change to the runtime's timer heap, and a keep-alive
// connection serves requests microseconds apart, so a deadline moves about once per slack
// instead of on every request, and fires up to slack late, never early.
func keptDeadline(armed, want time.Time, slack time.Duration) (d time.Time, move bool) {
	if !armed.Before(want) && armed.Sub(want) <= slack {
		return armed, false
	}
	return want.Add(slack), true
}

// deadlineSlack is how late a kept deadline may fire: a 64th of its timeout (0.94 s of
// a 60 s one).
func deadlineSlack(timeout time.Duration) time.Duration { return timeout / 64 }

const (
	maxIdlePerEndpoint = 256
	idleUpstreamTTL    = 30 * time.Second
	dialTimeout        = 3 * time.Second
)

var dialer = net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}

// get returns an idle connection (reused: true) or dials one by deadline; now is the
// time the request started.
func (e *endpoint) get(now, deadline time.Time) (*upConn, bool, error) {
	e.mu.Lock()
	for n := len(e.idle); n > 0; n = len(e.idle) {
		c := e.idle[n-1]
		e.idle = e.idle[:n-1]
		if now.Sub(c.used) < idleUpstreamTTL {
			e.mu.Unlock()
			return c, true, nil
		}
		c.Close()
	}
	e.mu.Unlock()
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	nc, err := dialer.DialContext(ctx, "tcp", e.addr)
	if err != nil {
		e.connectErrors.Add(1)
		return nil, false, err
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
		if e.rawIO {
			nc = newRawConn(tc)
		}
	}
	return &upConn{Conn: nc, br: bufio.NewReaderSize(nc, 16<<10), bw: bufio.NewWriterSize(nc, 16<<10)}, false, nil
}

// put returns a healthy connection to the pool, idle from now.
func (e *endpoint) put(c *upConn, now time.Time) {
	if e.removed.Load() {
		c.Close()
		return
	}
	c.used = now // its deadline stays: the next user sets its own
	e.mu.Lock()
	if len(e.idle) >= maxIdlePerEndpoint {
		e.mu.Unlock()
		c.Close()
		return
	}
	e.idle = append(e.idle, c)
	e.mu.Unlock()
}

func (e *endpoint) closeIdle() {
	e.mu.Lock()
	idle := e.idle
	e.idle = nil
	e.mu.Unlock()
	for _, c := range idle {
		c.Close()
	}
}

// usable: not ejected by passive health, not down by active health.
func (e *endpoint) usable(now int64) bool {
	return !e.down.Load() && e.ejected.Load() <= now
}

// Passive health: consecutive failures eject an endpoint for a while (1 s, then longer
// while it keeps failing, at most 30 s); a success ends the streak.
const ejectAfter = 3

func (e *endpoint) failed() { e.failedBy(ejectAfter) }

// refused: nothing listens there (connection refused): out at once.
func (e *endpoint) refused() { e.failedBy(1) }

func (e *endpoint) failedBy(threshold int32) {
	if e.fails.Add(1) < threshold {
		return
	}
	e.fails.Store(0)
	n := min(e.ejection.Add(1), 30)
	e.ejected.Store(time.Now().Add(time.Duration(n) * time.Second).UnixNano())
}

func (e *endpoint) succeeded() {
	if e.fails.Load() != 0 {
		e.fails.Store(0)
	}
	if e.ejection.Load() != 0 && e.ejected.Load() <= time.Now().UnixNano() {
		e.ejection.Store(0)
	}
}

// service is the endpoints of one backend key.
type service struct {
	key       string
	endpoints []*endpoint
	ring      []int // consistent-hash ring: indexes into endpoints, by point
	points    []uint32
}

const ringPointsPerEndpoint = 64

func (s *service) buildRing() {
	type pt struct {
		h uint32
		i int
	}
	var pts []pt
	for i, e := range s.endpoints {
		for v := range ringPointsPerEndpoint {
			h := fnv.New32a()
			h.Write([]byte(e.addr))
			h.Write([]byte{byte(v), byte(v >> 8)})
			pts = append(pts, pt{h.Sum32(), i})
		}
	}
	sort.Slice(pts, func(a, b int) bool { return pts[a].h < pts[b].h })
	s.points, s.ring = make([]uint32, len(pts)), make([]int, len(pts))
	for i, p := range pts {
		s.points[i], s.ring[i] = p.h, p.i
	}
}

// routeState is a route with its backends resolved and its balancing state.
type routeState struct {
	*route.Route
	backends []weighted
	total    int
	rr       atomic.Uint64
	policy   string
	hashOn   string // "client", or a header or cookie name
	hashKind byte   // 'c' client, 'h' header, 'k' cookie
	budget   retryBudget
	metrics  *routeMetrics
}

type weighted struct {
	svc    *service
	weight int
	h2c    bool
}

// pick chooses an endpoint for a request: a backend by weight, then an endpoint of it by
// the route's policy, skipping unusable ones (all unusable: any of them, so a route never
// fails only because every endpoint was ejected). hash is the request's hash key (0: none).
func (rs *routeState) pick(now int64, hash uint64, hasHash bool, tried *[maxTries]*endpoint) (*endpoint, bool) {
	if rs.total == 0 {
		return nil, false
	}
	n := rs.rr.Add(1)
	var w weighted
	if hasHash {
		w = rs.byWeight(int(hash % uint64(rs.total)))
	} else {
		w = rs.byWeight(int(n % uint64(rs.total)))
	}
	eps := w.svc.endpoints
	if len(eps) == 0 {
		// This backend has no endpoints: any backend that has some.
		for _, o := range rs.backends {
			if len(o.svc.endpoints) > 0 {
				w, eps = o, o.svc.endpoints
				break
			}
		}
		if len(eps) == 0 {
			return nil, false
		}
	}
	ok := func(e *endpoint) bool { return !wasTried(tried, e) && e.usable(now) }
	switch {
	case hasHash:
		i := sort.Search(len(w.svc.points), func(i int) bool { return w.svc.points[i] >= uint32(hash>>32) })
		for k := range len(w.svc.ring) {
			e := eps[w.svc.ring[(i+k)%len(w.svc.ring)]]
			if ok(e) {
				return e, w.h2c
			}
		}
	case rs.policy == v1.BalanceLeastRequest && len(eps) > 1:
		// Power of two choices: the less loaded of two random usable endpoints.
		var best *endpoint
		for range 2 {
			for tries := 0; tries < 4; tries++ {
				e := eps[rand.IntN(len(eps))]
				if ok(e) {
					if best == nil || e.active.Load() < best.active.Load() {
						best = e
					}
					break
				}
			}
		}
		if best != nil {
			return best, w.h2c
		}
	default:
		start := int(n / uint64(max(rs.total, 1)))
		for k := range len(eps) {
			if e := eps[(start+k)%len(eps)]; ok(e) {
				return e, w.h2c
			}
		}
	}
	for _, e := range eps {
		if !wasTried(tried, e) {
			return e, w.h2c
		}
	}
	return eps[0], w.h2c
}

// maxTries bounds the attempts of one request (the first and at most five retries).
const maxTries = 6

func wasTried(tried *[maxTries]*endpoint, e *endpoint) bool {
	if tried == nil {
		return false
	}
	for _, t := range tried {
		if t == e {
			return true
		}
	}
	return false
}

func (rs *routeState) byWeight(x int) weighted {
	for _, w := range rs.backends {
		if x < w.weight {
			return w
		}
		x -= w.weight
	}
	return rs.backends[len(rs.backends)-1]
}

// retryBudget allows the retries of a second up to a share of the route's requests in
// that second and the one before (at least 3 a second, so a quiet route can still retry).
// Counting the second before too keeps the budget from being near zero in the first
// milliseconds of each second: an endpoint that dies then fails every request it holds
// at once (a CI run saw 4 of them refused a retry that way).
type retryBudget struct {
	percent  int64
	second   atomic.Int64
	requests atomic.Int64
	previous atomic.Int64 // the second before's requests
	retries  atomic.Int64
}

// request counts a request that started at now (unix seconds).
func (b *retryBudget) request(now int64) {
	b.roll(now)
	b.requests.Add(1)
}

func (b *retryBudget) allow() bool {
	b.roll(time.Now().Unix())
	if r := b.retries.Add(1); r <= 3 || r*100 <= b.percent*(b.requests.Load()+b.previous.Load()) {
		return true
	}
	b.retries.Add(-1)
	return false
}

func (b *retryBudget) roll(now int64) {
	if old := b.second.Load(); old != now && b.second.CompareAndSwap(old, now) {
		prev := b.requests.Swap(0)
		if old != now-1 {
			prev = 0 // a quiet second in between
		}
		b.previous.Store(prev)
		b.retries.Store(0)
	}
}

// hashKey is FNV-1a of a string, spread to 64 bits.
func hashKey(b []byte) uint64 {
	var h uint64 = 14695981039346656037
	for _, c := range b {
		h ^= uint64(c)
		h *= 1099511628211
	}
	return h
}

// Health reports every endpoint's health by address: healthy, ejected or down.
func (p *Proxy) Health() map[string]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now().UnixNano()
	out := make(map[string]string, len(p.endpoints))
	for addr, e := range p.endpoints {
		switch {
		case e.down.Load():
			out[addr] = "down"
		case e.ejected.Load() > now:
			out[addr] = "ejected"
		default:
			out[addr] = "healthy"
		}
	}
	return out
}
