package dns

import (
	"net/netip"
	"strings"
	"testing"

	mdns "github.com/miekg/dns"

	v1 "github.com/weftnet/weft/api/v1"
)

func zone() *Records {
	ip := netip.MustParseAddr
	web := map[string]string{"app": "web"}
	pods := []v1.Pod{
		{Name: "web-1", Namespace: "shop", IPs: []netip.Addr{ip("10.244.1.5"), ip("fd00:244::1:5")}, Labels: web, Ready: true,
			Ports: []v1.NamedPort{{Name: "http", Port: 8080, Protocol: "TCP"}}},
		{Name: "web-2", Namespace: "shop", IPs: []netip.Addr{ip("10.244.2.5")}, Labels: web, Ready: true,
			Ports: []v1.NamedPort{{Name: "http", Port: 8080, Protocol: "TCP"}}},
		{Name: "web-3", Namespace: "shop", IPs: []netip.Addr{ip("10.244.3.5")}, Labels: web, Ready: true, Terminating: true},
		{Name: "db-0", Namespace: "shop", IPs: []netip.Addr{ip("10.244.1.9")}, Labels: map[string]string{"app": "db"}, Ready: false},
	}
	svcs := []v1.Service{
		{Name: "web", Namespace: "shop", ClusterIPs: []netip.Addr{ip("10.96.0.20"), ip("fd00:96::20")}, Selector: web,
			Ports: []v1.ServicePort{{Name: "http", Protocol: "TCP", Port: 80, TargetPortName: "http"}, {Name: "dns", Protocol: "UDP", Port: 53}}},
		{Name: "web-headless", Namespace: "shop", ClusterIP: v1.ClusterIPNone, Selector: web,
			Ports: []v1.ServicePort{{Name: "http", Protocol: "TCP", Port: 80, TargetPortName: "http"}}},
		{Name: "db", Namespace: "shop", ClusterIP: v1.ClusterIPNone, Selector: map[string]string{"app": "db"}},
	}
	return Build(Config{Domain: "cluster.local", Reverse: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16"), netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:96::/112")}}, svcs, pods)
}

func ask(t *testing.T, r *Records, name string, qtype uint16) *mdns.Msg {
	t.Helper()
	req := new(mdns.Msg)
	req.SetQuestion(name, qtype)
	m, ok := r.Answer(req)
	if !ok {
		t.Fatalf("%s %s: not ours", name, mdns.TypeToString[qtype])
	}
	if _, err := m.Pack(); err != nil {
		t.Fatalf("%s: answer does not pack: %v", name, err)
	}
	return m
}

func answers(m *mdns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		f := strings.Fields(rr.String())
		out = append(out, f[len(f)-1])
	}
	return out
}

func TestRecords(t *testing.T) {
	r := zone()
	cases := []struct {
		name  string
		qtype uint16
		rcode int
		want  []string // the last field of each answer, in order
	}{
		{"web.shop.svc.cluster.local.", mdns.TypeA, mdns.RcodeSuccess, []string{"10.96.0.20"}},
		{"WEB.Shop.SVC.cluster.LOCAL.", mdns.TypeA, mdns.RcodeSuccess, []string{"10.96.0.20"}},
		{"web.shop.svc.cluster.local.", mdns.TypeAAAA, mdns.RcodeSuccess, []string{"fd00:96::20"}},
		{"_http._tcp.web.shop.svc.cluster.local.", mdns.TypeSRV, mdns.RcodeSuccess, []string{"web.shop.svc.cluster.local."}},
		{"_dns._udp.web.shop.svc.cluster.local.", mdns.TypeSRV, mdns.RcodeSuccess, []string{"web.shop.svc.cluster.local."}},
		// Headless: exactly the ready endpoints (not the terminating one), and each by name.
		{"web-headless.shop.svc.cluster.local.", mdns.TypeA, mdns.RcodeSuccess, []string{"10.244.1.5", "10.244.2.5"}},
		{"web-1.web-headless.shop.svc.cluster.local.", mdns.TypeA, mdns.RcodeSuccess, []string{"10.244.1.5"}},
		{"_http._tcp.web-headless.shop.svc.cluster.local.", mdns.TypeSRV, mdns.RcodeSuccess,
			[]string{"web-1.web-headless.shop.svc.cluster.local.", "web-2.web-headless.shop.svc.cluster.local."}}, // one per host and port
		// A headless service with no ready endpoint exists, with no address: NODATA.
		{"db.shop.svc.cluster.local.", mdns.TypeA, mdns.RcodeSuccess, nil},
		// NODATA for a name with other types, and for empty non-terminals.
		{"web.shop.svc.cluster.local.", mdns.TypeMX, mdns.RcodeSuccess, nil},
		{"shop.svc.cluster.local.", mdns.TypeA, mdns.RcodeSuccess, nil},
		{"svc.cluster.local.", mdns.TypeA, mdns.RcodeSuccess, nil},
		// NXDOMAIN.
		{"nope.shop.svc.cluster.local.", mdns.TypeA, mdns.RcodeNameError, nil},
		{"web.other.svc.cluster.local.", mdns.TypeA, mdns.RcodeNameError, nil},
		{"_http._udp.web.shop.svc.cluster.local.", mdns.TypeSRV, mdns.RcodeNameError, nil},
		// Pods, forward and reverse.
		{"10-244-1-5.shop.pod.cluster.local.", mdns.TypeA, mdns.RcodeSuccess, []string{"10.244.1.5"}},
		{"fd00-0244-0000-0000-0000-0000-0001-0005.shop.pod.cluster.local.", mdns.TypeAAAA, mdns.RcodeSuccess, []string{"fd00:244::1:5"}},
		{"10-244-1-9.shop.pod.cluster.local.", mdns.TypeA, mdns.RcodeNameError, nil}, // not ready
		{"20.0.96.10.in-addr.arpa.", mdns.TypePTR, mdns.RcodeSuccess, []string{"web.shop.svc.cluster.local."}},
		{"5.2.244.10.in-addr.arpa.", mdns.TypePTR, mdns.RcodeSuccess, []string{"web-2.web-headless.shop.svc.cluster.local.", "10-244-2-5.shop.pod.cluster.local."}},
		{"0.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.0.d.f.ip6.arpa.", mdns.TypePTR, mdns.RcodeSuccess, []string{"web.shop.svc.cluster.local."}},
		{"99.0.96.10.in-addr.arpa.", mdns.TypePTR, mdns.RcodeNameError, nil},
		// The apex.
		{"cluster.local.", mdns.TypeNS, mdns.RcodeSuccess, []string{"ns.dns.cluster.local."}},
		{"cluster.local.", mdns.TypeSOA, mdns.RcodeSuccess, []string{"5"}},
	}
	for _, c := range cases {
		m := ask(t, r, c.name, c.qtype)
		got := answers(m)
		if m.Rcode != c.rcode || strings.Join(got, " ") != strings.Join(c.want, " ") {
			t.Errorf("%s %s: rcode %s answers %v, want %s %v", c.name, mdns.TypeToString[c.qtype],
				mdns.RcodeToString[m.Rcode], got, mdns.RcodeToString[c.rcode], c.want)
		}
		if !m.Authoritative {
			t.Errorf("%s: not authoritative", c.name)
		}
		// Negative answers carry the SOA, with the negative-caching TTL.
		if len(c.want) == 0 && (len(m.Ns) != 1 || m.Ns[0].Header().Rrtype != mdns.TypeSOA || m.Ns[0].Header().Ttl != 5) {
			t.Errorf("%s %s: negative answer authority %v, want the SOA", c.name, mdns.TypeToString[c.qtype], m.Ns)
		}
		// The answer keeps the question's spelling.
		for _, rr := range m.Answer {
			if rr.Header().Name != c.name {
				t.Errorf("%s: answer owner %s", c.name, rr.Header().Name)
			}
		}
	}
}

func TestNotOurs(t *testing.T) {
	r := zone()
	for _, name := range []string{"example.com.", "cluster.local.example.com.", "1.1.168.192.in-addr.arpa.", "local.", "10.in-addr.arpa."} {
		req := new(mdns.Msg)
		req.SetQuestion(name, mdns.TypeA)
		if _, ok := r.Answer(req); ok {
			t.Errorf("%s answered as ours", name)
		}
	}
}

func TestLongNames(t *testing.T) {
	long := strings.Repeat("a", 63)
	ip := netip.MustParseAddr
	r := Build(Config{}, []v1.Service{{Name: long, Namespace: long, ClusterIPs: []netip.Addr{ip("10.96.0.1")},
		Ports: []v1.ServicePort{{Name: strings.Repeat("p", 15), Protocol: "TCP", Port: 80}}}}, nil)
	m := ask(t, r, long+"."+long+".svc.cluster.local.", mdns.TypeA)
	if len(m.Answer) != 1 {
		t.Errorf("63-byte labels: %v", m.Answer)
	}
}

func FuzzAnswer(f *testing.F) {
	r := zone()
	for _, q := range []string{"web.shop.svc.cluster.local.", "20.0.96.10.in-addr.arpa.", "x.cluster.local."} {
		m := new(mdns.Msg)
		m.SetQuestion(q, mdns.TypeA)
		b, _ := m.Pack()
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req := new(mdns.Msg)
		if err := req.Unpack(b); err != nil {
			return
		}
		m, ok := r.Answer(req)
		if !ok {
			return
		}
		if m.Id != req.Id || !m.Response {
			t.Fatalf("reply does not match its question")
		}
		if _, err := m.Pack(); err != nil {
			t.Fatalf("reply does not pack: %v", err)
		}
	})
}

// TestTTLFromTheClusterConfig: the records' TTL is the cluster's dnsTTL (default 5 s),
// and negative answers may be cached as long.
func TestTTLFromTheClusterConfig(t *testing.T) {
	svc := v1.Service{Name: "web", Namespace: "shop", ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.20")}}
	for _, c := range []struct {
		ttl  int
		want uint32
	}{{0, 5}, {30, 30}} {
		r := Build(ConfigFor(v1.ClusterConfig{DNSTTL: c.ttl, ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")}}), []v1.Service{svc}, nil)
		if m := ask(t, r, "web.shop.svc.cluster.local.", mdns.TypeA); len(m.Answer) != 1 || m.Answer[0].Header().Ttl != c.want {
			t.Errorf("dnsTTL %d: answer %v, want TTL %d", c.ttl, m.Answer, c.want)
		}
		if m := ask(t, r, "none.shop.svc.cluster.local.", mdns.TypeA); len(m.Ns) != 1 || m.Ns[0].Header().Ttl != c.want {
			t.Errorf("dnsTTL %d: negative answer %v, want its SOA at TTL %d", c.ttl, m.Ns, c.want)
		}
	}
}
