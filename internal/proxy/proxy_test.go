package proxy

import (
	"net/netip"
	"testing"
	"time"

	v1 "github.com/weftnet/weft/api/v1"
)

func TestCompute(t *testing.T) {
	web := map[string]string{"app": "web"}
	ip := netip.MustParseAddr
	pods := []v1.Pod{
		{Name: "a", Namespace: "default", Node: "n1", IPs: []netip.Addr{ip("10.0.1.2"), ip("fd00::1:2")}, Labels: web, Ready: true},
		{Name: "b", Namespace: "default", Node: "n2", IPs: []netip.Addr{ip("10.0.2.2"), ip("fd00::2:2")}, Labels: web, Ready: true},
		{Name: "c", Namespace: "default", Node: "n1", IPs: []netip.Addr{ip("10.0.1.3")}, Labels: web, Ready: true, Terminating: true},
	}
	svc := func(name string, edit func(*v1.Service)) v1.Service {
		s := v1.Service{Name: name, Namespace: "default", Selector: web, ClusterIPs: []netip.Addr{ip("10.96.0.5")},
			Ports: []v1.ServicePort{{Name: "http", Protocol: "TCP", Port: 80, TargetPort: 8080}}}
		if edit != nil {
			edit(&s)
		}
		s.Defaults()
		return s
	}
	services := []v1.Service{
		svc("plain", nil),
		svc("dual", func(s *v1.Service) { s.ClusterIPs = []netip.Addr{ip("10.96.0.6"), ip("fd96::6")} }),
		svc("np-local", func(s *v1.Service) {
			s.ClusterIPs = []netip.Addr{ip("10.96.0.7")}
			s.Type, s.ExternalTrafficPolicy = v1.ServiceTypeNodePort, v1.TrafficPolicyLocal
			s.Ports[0].NodePort = 30080
		}),
		svc("internal-local", func(s *v1.Service) {
			s.ClusterIPs = []netip.Addr{ip("10.96.0.8")}
			s.InternalTrafficPolicy = v1.TrafficPolicyLocal
		}),
		svc("sticky", func(s *v1.Service) {
			s.ClusterIPs = []netip.Addr{ip("10.96.0.9")}
			s.SessionAffinity, s.AffinityTimeout = v1.AffinityClientIP, 60
		}),
		svc("headless", func(s *v1.Service) { s.ClusterIP, s.ClusterIPs = v1.ClusterIPNone, nil }),
		svc("empty", func(s *v1.Service) {
			s.ClusterIPs = []netip.Addr{ip("10.96.0.10")}
			s.Selector = map[string]string{"app": "none"}
		}),
		svc("lb", func(s *v1.Service) { // a load balancer address per family; policy Cluster
			s.ClusterIPs = []netip.Addr{ip("10.96.0.11"), ip("fd96::11")}
			s.LoadBalancerIPs = []netip.Addr{ip("203.0.113.1"), ip("2001:db8::1")}
		}),
		svc("lb-local", func(s *v1.Service) { // policy Local: n1 has an endpoint, n2's is elsewhere
			s.ClusterIPs = []netip.Addr{ip("10.96.0.12")}
			s.LoadBalancerIPs = []netip.Addr{ip("203.0.113.2")}
			s.ExternalTrafficPolicy = v1.TrafficPolicyLocal
		}),
	}
	st := Compute(Node{Name: "n1"}, services, pods)
	byVIP := map[netip.Addr]*Port{}
	for _, p := range st.Ports {
		byVIP[p.VIP] = p
	}
	if len(st.Ports) != 13 { // plain, dual ×2, np-local, internal-local, sticky, empty, lb ×4, lb-local ×2; not headless
		t.Fatalf("%d ports: %+v", len(st.Ports), st.Ports)
	}
	// Terminating c gets no new connections; the backends of a family are that family's.
	if p := byVIP[ip("10.96.0.5")]; len(p.Backends) != 2 || p.Backends[0].Port != 8080 || p.Proto != ProtoTCP {
		t.Errorf("plain %+v", p)
	}
	if p := byVIP[ip("fd96::6")]; len(p.Backends) != 2 || !p.Backends[0].IP.Is6() || !p.Is6() {
		t.Errorf("dual v6 %+v", p)
	}
	// externalTrafficPolicy Local: the node port goes to this node's endpoints only, the
	// ClusterIP to all.
	if p := byVIP[ip("10.96.0.7")]; p.NodePort != 30080 || !p.ExternalLocal || len(p.NodePortBackends) != 1 ||
		p.NodePortBackends[0].IP != ip("10.0.1.2") || len(p.Backends) != 2 {
		t.Errorf("np-local %+v", p)
	}
	if p := byVIP[ip("10.96.0.8")]; len(p.Backends) != 1 || p.Backends[0].IP != ip("10.0.1.2") {
		t.Errorf("internal-local %+v", p)
	}
	if p := byVIP[ip("10.96.0.9")]; p.Affinity != 60*time.Second {
		t.Errorf("sticky %+v", p)
	}
	if p := byVIP[ip("10.96.0.10")]; len(p.Backends) != 0 {
		t.Errorf("empty %+v", p)
	}
	// Load balancer addresses: ports of their own with the external policy's backends,
	// masqueraded under Cluster; under Local the node's own, dropping when it has none.
	if p := byVIP[ip("203.0.113.1")]; !p.LoadBalancer || !p.Masquerade || p.DropIfEmpty || len(p.Backends) != 2 || p.Port != 80 {
		t.Errorf("lb %+v", p)
	}
	if p := byVIP[ip("2001:db8::1")]; !p.LoadBalancer || len(p.Backends) != 2 || !p.Backends[0].IP.Is6() || p.ID == byVIP[ip("fd96::11")].ID {
		t.Errorf("lb v6 %+v", p)
	}
	if p := byVIP[ip("203.0.113.2")]; p.Masquerade || !p.DropIfEmpty || len(p.Backends) != 1 || p.Backends[0].IP != ip("10.0.1.2") {
		t.Errorf("lb-local on n1 %+v", p)
	}
	for _, p := range Compute(Node{Name: "n3"}, services, pods).Ports {
		if p.VIP == ip("203.0.113.2") && (len(p.Backends) != 0 || !p.DropIfEmpty || len(p.PodBackends) != 2) {
			t.Errorf("lb-local on a node without endpoints (pods still reach both) %+v", p)
		}
	}
	// Every endpoint, terminating ones included (their replies are DNATed flows), once and
	// in order.
	var want []Key
	for _, a := range []string{"10.0.1.2", "10.0.1.3", "10.0.2.2", "fd00::1:2", "fd00::2:2"} {
		want = append(want, Key{IP: ip(a), Proto: ProtoTCP, Port: 8080})
	}
	if len(st.Endpoints) != len(want) {
		t.Fatalf("endpoints %v", st.Endpoints)
	}
	for i := range want {
		if st.Endpoints[i] != want[i] {
			t.Errorf("endpoint %d: %v, want %v", i, st.Endpoints[i], want[i])
		}
	}
	// IDs are stable and distinct per service, port and family.
	again := Compute(Node{Name: "n1"}, services, pods)
	for id, p := range st.Ports {
		if q, ok := again.Ports[id]; !ok || !q.Equal(p) {
			t.Errorf("port %s not stable", id)
		}
	}
}
