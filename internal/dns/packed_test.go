package dns

import (
	"bytes"
	"net"
	"net/netip"
	"testing"

	mdns "github.com/miekg/dns"
)

// packedTestServer is a server of the test zone allowing 10/8, a socket for the replies
// of forwarded queries, and an allowed client.
func packedTestServer(tb testing.TB) (*Server, *net.UDPConn, *net.UDPAddr) {
	s := &Server{Allowed: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, MaxForwarding: 1}
	s.SetRecords(zone())
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return s, conn, &net.UDPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 5353}
}

// TestPackedAnswersEqualTheSlowPath: for every kind of plain query (names with records,
// NODATA, NXDOMAIN, PTR, SRV, a headless name; with and without EDNS at several buffer
// sizes, so some answers are truncated; RD and CD set or not), the packed answer a later
// query gets is byte for byte what the slow path packs for it; queries that are not plain
// (mixed case, another class, EDNS options, a second question) never take the fast path,
// and neither does a client outside the allowed networks.
func TestPackedAnswersEqualTheSlowPath(t *testing.T) {
	s, conn, from := packedTestServer(t)
	slow := func(b []byte) []byte {
		t.Helper()
		m, zone := s.answerPacket(b, from, conn)
		if m == nil {
			t.Fatalf("no answer to %x", b)
		}
		w, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		if zone != nil {
			zone.keepPacked(b, w, m.Rcode)
		}
		return w
	}
	names := []struct {
		name  string
		qtype uint16
	}{
		{"web.shop.svc.cluster.local.", mdns.TypeA},
		{"web.shop.svc.cluster.local.", mdns.TypeAAAA},
		{"web.shop.svc.cluster.local.", mdns.TypeTXT},            // NODATA
		{"nothing.shop.svc.cluster.local.", mdns.TypeA},          // NXDOMAIN
		{"_http._tcp.web.shop.svc.cluster.local.", mdns.TypeSRV}, // SRV
		{"20.0.96.10.in-addr.arpa.", mdns.TypePTR},               // PTR
		{"web-headless.shop.svc.cluster.local.", mdns.TypeA},     // headless: several
		{"cluster.local.", mdns.TypeSOA},                         // apex
		{"web.shop.svc.cluster.local.", mdns.TypeANY},
	}
	n := 0
	for _, nm := range names {
		for _, edns := range []int{-1, 100, 512, 1232, 4096} {
			for _, flags := range []struct{ rd, cd bool }{{false, false}, {true, false}, {true, true}} {
				req := query(nm.name, nm.qtype)
				req.RecursionDesired, req.CheckingDisabled = flags.rd, flags.cd
				if edns >= 0 {
					req.SetEdns0(uint16(edns), edns == 4096)
				}
				for i := range 2 { // the first is answered the slow way and kept
					req.Id = uint16(1000*n + i)
					b, err := req.Pack()
					if err != nil {
						t.Fatal(err)
					}
					want := slow(b)
					got, _, ok := s.packedAnswer(b, from, nil)
					if !ok {
						t.Fatalf("%s %s edns %d %+v: no packed answer after the first query", nm.name, mdns.TypeToString[nm.qtype], edns, flags)
					}
					if !bytes.Equal(got, want) {
						var g, w mdns.Msg
						_ = g.Unpack(got)
						_ = w.Unpack(want)
						t.Fatalf("%s %s edns %d %+v: packed answer differs:\n%s\n--- slow path:\n%s", nm.name, mdns.TypeToString[nm.qtype], edns, flags, &g, &w)
					}
				}
				n++
			}
		}
	}
	// Not plain: the slow path answers them, every time.
	notPlain := map[string]func() *mdns.Msg{
		"mixed case": func() *mdns.Msg { return query("Web.shop.svc.cluster.local.", mdns.TypeA) },
		"class CH": func() *mdns.Msg {
			m := query("web.shop.svc.cluster.local.", mdns.TypeA)
			m.Question[0].Qclass = mdns.ClassCHAOS
			return m
		},
		"EDNS option": func() *mdns.Msg {
			m := query("web.shop.svc.cluster.local.", mdns.TypeA)
			m.SetEdns0(1232, false)
			m.IsEdns0().Option = append(m.IsEdns0().Option, &mdns.EDNS0_COOKIE{Code: mdns.EDNS0COOKIE, Cookie: "0123456789abcdef"})
			return m
		},
		"two questions": func() *mdns.Msg {
			m := query("web.shop.svc.cluster.local.", mdns.TypeA)
			m.Question = append(m.Question, m.Question[0])
			return m
		},
		"forwarded name": func() *mdns.Msg { return query("example.com.", mdns.TypeA) },
	}
	for what, mk := range notPlain {
		b, err := mk().Pack()
		if err != nil {
			t.Fatal(err)
		}
		if m, zone := s.answerPacket(b, from, conn); m != nil && zone != nil {
			w, _ := m.Pack()
			zone.keepPacked(b, w, m.Rcode)
		}
		if _, _, ok := s.packedAnswer(b, from, nil); ok {
			t.Errorf("%s: answered from the packed answers", what)
		}
	}
	// A refused client never gets a packed answer (nor is its REFUSED kept).
	b, _ := query("web.shop.svc.cluster.local.", mdns.TypeA).Pack()
	outside := &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 53}
	if _, _, ok := s.packedAnswer(b, outside, nil); ok {
		t.Error("a client outside the allowed networks got a packed answer")
	}
	if m, zone := s.answerPacket(b, outside, conn); m == nil || m.Rcode != mdns.RcodeRefused || zone != nil {
		t.Errorf("outside client: %v, zone %v", m, zone)
	}
	// A new snapshot starts with nothing packed.
	s.SetRecords(zone())
	if _, _, ok := s.packedAnswer(b, from, nil); ok {
		t.Error("a new snapshot answered from the old one's packed answers")
	}
}

// benchQuery is a server, a client and a plain query with EDNS for the benchmarks.
func benchQuery() (*Server, *net.UDPAddr, []byte) {
	s := &Server{Allowed: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
	s.SetRecords(zone())
	req := query("web.shop.svc.cluster.local.", mdns.TypeA)
	req.SetEdns0(1232, false)
	q, _ := req.Pack()
	return s, &net.UDPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 5353}, q
}

// BenchmarkPackedAnswer is one query's answer from the packed answers.
func BenchmarkPackedAnswer(b *testing.B) {
	s, from, q := benchQuery()
	m, zone := s.answerPacket(q, from, nil)
	w, _ := m.Pack()
	zone.keepPacked(q, w, m.Rcode)
	out := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		var ok bool
		if out, _, ok = s.packedAnswer(q, from, out); !ok {
			b.Fatal("not packed")
		}
	}
}

// BenchmarkSlowAnswer is the same query unpacked, answered and packed.
func BenchmarkSlowAnswer(b *testing.B) {
	s, from, q := benchQuery()
	out := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		m, _ := s.answerPacket(q, from, nil)
		out, _ = m.PackBuffer(out)
	}
}

// FuzzPackedAnswer: any datagram either takes the slow path or gets, from the packed
// answers, exactly the bytes the slow path packs for it; nothing panics.
func FuzzPackedAnswer(f *testing.F) {
	for _, q := range []*mdns.Msg{query("web.shop.svc.cluster.local.", mdns.TypeA), query("20.0.96.10.in-addr.arpa.", mdns.TypePTR)} {
		b, _ := q.Pack()
		f.Add(b)
		q.SetEdns0(1232, false)
		b, _ = q.Pack()
		f.Add(b)
	}
	s, conn, from := packedTestServer(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, zone := s.answerPacket(b, from, conn)
		if m == nil {
			if _, _, ok := s.packedAnswer(b, from, nil); ok {
				t.Fatal("a packed answer to a datagram the slow path does not answer")
			}
			return
		}
		want, err := m.Pack()
		if err != nil {
			return
		}
		if zone != nil {
			zone.keepPacked(b, want, m.Rcode)
		}
		if got, _, ok := s.packedAnswer(b, from, nil); ok && !bytes.Equal(got, want) {
			t.Fatalf("packed answer %x, slow path %x", got, want)
		}
	})
}
