package agent

import (
	"fmt"
	"net/netip"
	"testing"

	v1 "github.com/weftnet/weft/api/v1"
)

func TestLocalServiceAddrs(t *testing.T) {
	a := netip.MustParseAddr
	svc := func(name, policy string, ips ...string) v1.Service {
		s := v1.Service{Name: name, Namespace: "default", Type: v1.ServiceTypeNodePort, ExternalTrafficPolicy: policy,
			Selector: map[string]string{"app": name}, Ports: []v1.ServicePort{{Protocol: v1.ProtocolTCP, Port: 80}}}
		for _, ip := range ips {
			s.ClusterIPs = append(s.ClusterIPs, a(ip))
		}
		return s
	}
	pod := func(app, node, ip string, ready, terminating bool) v1.Pod {
		return v1.Pod{Name: app + "-" + node, Namespace: "default", Node: node, IPs: []netip.Addr{a(ip)},
			Labels: map[string]string{"app": app}, Ready: ready, Terminating: terminating}
	}
	services := []v1.Service{
		svc("web", v1.TrafficPolicyLocal, "10.96.0.10", "fd00:96::10"), // endpoint here: announced, both families
		svc("db", v1.TrafficPolicyLocal, "10.96.0.11"),                 // endpoint elsewhere only
		svc("api", v1.TrafficPolicyCluster, "10.96.0.12"),              // Cluster: the range covers it
		svc("old", v1.TrafficPolicyLocal, "10.96.0.13"),                // local endpoint terminating
		svc("wip", v1.TrafficPolicyLocal, "10.96.0.14"),                // local endpoint not ready
	}
	pods := []v1.Pod{
		pod("web", "n1", "10.244.1.2", true, false),
		pod("db", "n2", "10.244.2.2", true, false),
		pod("api", "n1", "10.244.1.3", true, false),
		pod("old", "n1", "10.244.1.4", true, true),
		pod("wip", "n1", "10.244.1.5", false, false),
	}
	got := fmt.Sprint(localServiceAddrs("n1", services, pods))
	if want := "[10.96.0.10/32 fd00:96::10/128]"; got != want {
		t.Errorf("n1 announces %s, want %s", got, want)
	}
	if got := fmt.Sprint(localServiceAddrs("n2", services, pods)); got != "[10.96.0.11/32]" {
		t.Errorf("n2 announces %s", got)
	}
}
