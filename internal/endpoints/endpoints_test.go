package endpoints

import (
	"net/netip"
	"strings"
	"testing"

	v1 "github.com/weftnet/weft/api/v1"
)

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

func TestFor(t *testing.T) {
	web := map[string]string{"app": "web"}
	pods := []v1.Pod{
		{Name: "b", Namespace: "default", Node: "node2", IPs: addrs("10.0.1.5", "fd00::1:5"), Labels: web, Ready: true,
			Ports: []v1.NamedPort{{Name: "http", Port: 8081, Protocol: "TCP"}}},
		{Name: "a", Namespace: "default", Node: "node1", IPs: addrs("10.0.0.5"), Labels: web, Ready: true,
			Ports: []v1.NamedPort{{Name: "http", Port: 8080}}},
		{Name: "c", Namespace: "default", Node: "node1", IPs: addrs("10.0.0.6"), Labels: web, Ready: true, Terminating: true},
		{Name: "d", Namespace: "other", Node: "node1", IPs: addrs("10.0.0.7"), Labels: web, Ready: true},
		{Name: "e", Namespace: "default", Node: "node3", IPs: addrs("10.0.2.5"), Labels: map[string]string{"app": "db"}, Ready: true},
		{Name: "f", Namespace: "default", Node: "node3", IPs: addrs("10.0.2.6"), Labels: map[string]string{"app": "web", "tier": "x"}, Ready: false},
	}
	svc := &v1.Service{Name: "web", Namespace: "default", Selector: web, Ports: []v1.ServicePort{
		{Name: "plain", Protocol: "TCP", Port: 80, TargetPort: 9090},
		{Name: "named", Protocol: "TCP", Port: 81, TargetPortName: "http"},
		{Name: "same", Protocol: "UDP", Port: 53},
	}}
	ports := For(svc, pods)
	got := func(i int) []string {
		var out []string
		for _, e := range ports[i].Endpoints {
			out = append(out, e.String())
		}
		return out
	}
	want := [][]string{
		{"10.0.0.5:9090", "10.0.0.6:9090", "10.0.1.5:9090", "10.0.2.6:9090", "[fd00::1:5]:9090"},
		{"10.0.0.5:8080", "10.0.1.5:8081", "[fd00::1:5]:8081"},
		{"10.0.0.5:53", "10.0.0.6:53", "10.0.1.5:53", "10.0.2.6:53", "[fd00::1:5]:53"},
	}
	for i := range want {
		if g := got(i); len(g) != len(want[i]) || func() bool {
			for j := range g {
				if g[j] != want[i][j] {
					return true
				}
			}
			return false
		}() {
			t.Errorf("port %s: %v, want %v", svc.Ports[i].Name, g, want[i])
		}
	}
	serving := Serving(ports[0].Endpoints)
	if len(serving) != 3 { // a, b (two families); not c (terminating) nor f (not ready)
		t.Errorf("serving %v", serving)
	}
	if v4 := Family(serving, true); len(v4) != 2 {
		t.Errorf("IPv4 serving %v", v4)
	}
	if l := Local(serving, "node1"); len(l) != 1 || l[0].Pod != "default/a" {
		t.Errorf("local to node1 %v", l)
	}
	// Explicit endpoints, no selector.
	hostSvc := &v1.Service{Name: "h", Namespace: "default", Ports: []v1.ServicePort{{Protocol: "TCP", Port: 80}},
		Endpoints: []netip.AddrPort{netip.MustParseAddrPort("192.168.255.1:8080")}}
	if p := For(hostSvc, pods); len(p[0].Endpoints) != 1 || p[0].Endpoints[0].String() != "192.168.255.1:8080" || !p[0].Endpoints[0].Ready {
		t.Errorf("explicit endpoints: %+v", p)
	}
	// No selector and no endpoints: nothing (never every pod).
	if p := For(&v1.Service{Name: "n", Namespace: "default", Ports: svc.Ports[:1]}, pods); len(p[0].Endpoints) != 0 {
		t.Errorf("selectorless service got %v", p[0].Endpoints)
	}
}

// TestResolved: endpoints derived elsewhere (EndpointSlices) are the service's own, by
// port name, whatever its selector and the pods say.
func TestResolved(t *testing.T) {
	svc := &v1.Service{Name: "web", Namespace: "default", Selector: map[string]string{"app": "web"}, Ports: []v1.ServicePort{
		{Name: "http", Protocol: "TCP", Port: 80}, {Name: "dns", Protocol: "UDP", Port: 53}}}
	svc.Resolved = map[string][]v1.Endpoint{
		"http": {{IP: netip.MustParseAddr("10.0.1.5"), Port: 8080, Node: "n2", Ready: true}, {IP: netip.MustParseAddr("10.0.0.5"), Port: 8080, Node: "n1", Terminating: true}},
	}
	pods := []v1.Pod{{Name: "a", Namespace: "default", IPs: addrs("10.9.9.9"), Labels: map[string]string{"app": "web"}, Ready: true}}
	ports := For(svc, pods)
	if len(ports[0].Endpoints) != 2 || ports[0].Endpoints[0].String() != "10.0.0.5:8080" || !ports[0].Endpoints[0].Terminating {
		t.Errorf("http: %+v", ports[0].Endpoints)
	}
	if len(ports[1].Endpoints) != 0 {
		t.Errorf("dns has no slice endpoints, got %+v (the pods' selector must not be evaluated)", ports[1].Endpoints)
	}
}

func TestValidate(t *testing.T) {
	ok := func() v1.Service {
		return v1.Service{Name: "web", Ports: []v1.ServicePort{{Port: 80}}, Selector: map[string]string{"app": "web"}}
	}
	cases := []struct {
		name string
		edit func(*v1.Service)
		want string // "" valid
	}{
		{"minimal", func(*v1.Service) {}, ""},
		{"bad name", func(s *v1.Service) { s.Name = "Web_1" }, "name \"Web_1\""},
		{"no ports", func(s *v1.Service) { s.Ports = nil }, "ports: a service needs"},
		{"headless without ports", func(s *v1.Service) { s.Ports = nil; s.ClusterIP = "None" }, ""},
		{"port 0", func(s *v1.Service) { s.Ports[0].Port = 0 }, "ports[0].port 0"},
		{"bad protocol", func(s *v1.Service) { s.Ports[0].Protocol = "ICMP" }, "ports[0].protocol \"ICMP\""},
		{"two unnamed", func(s *v1.Service) { s.Ports = append(s.Ports, v1.ServicePort{Port: 81}) }, "ports[0].name: required"},
		{"dup port", func(s *v1.Service) {
			s.Ports = []v1.ServicePort{{Name: "a", Port: 80}, {Name: "b", Port: 80}}
		}, "port 80 is listed twice"},
		{"same port two protocols", func(s *v1.Service) {
			s.Ports = []v1.ServicePort{{Name: "a", Port: 53}, {Name: "b", Port: 53, Protocol: "UDP"}}
		}, ""},
		{"nodePort on ClusterIP", func(s *v1.Service) { s.Ports[0].NodePort = 30080 }, "only a NodePort service"},
		{"nodePort out of range", func(s *v1.Service) { s.Type = "NodePort"; s.Ports[0].NodePort = 80 }, "outside 30000..32767"},
		{"selector and endpoints", func(s *v1.Service) {
			s.Endpoints = []netip.AddrPort{netip.MustParseAddrPort("10.0.0.1:80")}
		}, "use one or the other"},
		{"affinity", func(s *v1.Service) { s.SessionAffinity = "ClientIP" }, ""},
		{"affinity timeout", func(s *v1.Service) { s.SessionAffinity = "ClientIP"; s.AffinityTimeout = 90000 }, "timeoutSeconds 90000"},
		{"bad affinity", func(s *v1.Service) { s.SessionAffinity = "Cookie" }, "sessionAffinity \"Cookie\""},
		{"etp on ClusterIP", func(s *v1.Service) { s.ExternalTrafficPolicy = "Local" }, "only for NodePort"},
		{"etp local", func(s *v1.Service) { s.Type = "NodePort"; s.ExternalTrafficPolicy = "Local" }, ""},
		{"bad clusterIP", func(s *v1.Service) { s.ClusterIP = "10.0.0.300" }, "clusterIP \"10.0.0.300\""},
		{"headless NodePort", func(s *v1.Service) { s.ClusterIP = "None"; s.Type = "NodePort" }, "headless"},
		{"families", func(s *v1.Service) { s.IPFamilies = []string{"IPv4", "IPv4"} }, "IPv4 twice"},
		{"named target and number", func(s *v1.Service) { s.Ports[0].TargetPort = 80; s.Ports[0].TargetPortName = "http" }, "not both"},
	}
	for _, c := range cases {
		s := ok()
		c.edit(&s)
		s.Defaults()
		err := s.Validate()
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: got %v, want %q", c.name, err, c.want)
		}
	}
}
