package agent

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/bgp"
)

func TestServiceAddrs(t *testing.T) {
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
	cfg := v1.BGPConfig{AnnounceServices: true}
	got := fmt.Sprint(serviceAddrs("n1", cfg, services, pods))
	if want := "[10.96.0.10/32 fd00:96::10/128]"; got != want {
		t.Errorf("n1 announces %s, want %s", got, want)
	}
	if got := fmt.Sprint(serviceAddrs("n2", cfg, services, pods)); got != "[10.96.0.11/32]" {
		t.Errorf("n2 announces %s", got)
	}

	// Load balancer addresses inside loadBalancerCIDRs: under Cluster from every node,
	// under Local only where a ready endpoint is; outside the CIDRs never.
	services[0].LoadBalancerIPs = []netip.Addr{a("203.0.113.10")}                    // web, Local, endpoint on n1
	services[2].LoadBalancerIPs = []netip.Addr{a("203.0.113.12"), a("198.51.100.1")} // api, Cluster; the second outside
	cfg = v1.BGPConfig{LoadBalancerCIDRs: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}}
	if got := fmt.Sprint(serviceAddrs("n1", cfg, services, pods)); got != "[203.0.113.10/32 203.0.113.12/32]" {
		t.Errorf("n1 announces %s", got)
	}
	if got := fmt.Sprint(serviceAddrs("n2", cfg, services, pods)); got != "[203.0.113.12/32]" {
		t.Errorf("n2 announces %s", got)
	}
	cfg.AnnounceServices = true
	if got := fmt.Sprint(serviceAddrs("n1", cfg, services, pods)); got != "[10.96.0.10/32 fd00:96::10/128 203.0.113.10/32 203.0.113.12/32]" {
		t.Errorf("n1 announces %s with announceServices", got)
	}
}

// A session that never comes up is reported, naming the peer and its state, once it has
// been short of Established for stuckAfter; the node is then degraded (STATUS, healthz).
func TestStuckPeerIsReported(t *testing.T) {
	old := stuckAfter
	stuckAfter = 500 * time.Millisecond
	defer func() { stuckAfter = old }()
	self := netip.MustParseAddr("127.0.0.71")
	sp, err := bgp.Start(context.Background(), bgp.Config{ASN: 64512, RouterID: self, ListenAddrs: []netip.Addr{self}, ListenPort: -1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Stop()
	// Nothing listens there: the session stays in Active/Connect.
	if err := sp.SetPeers(context.Background(), []bgp.Peer{{Name: "tor", Address: netip.MustParseAddr("127.0.0.72"), Port: 1, ASN: 65000, LocalAddress: self}}); err != nil {
		t.Fatal(err)
	}
	f := &bgpFabric{sp: sp}
	if err := f.stuckPeers(context.Background()); err != nil {
		t.Fatalf("reported before stuckAfter: %v", err)
	}
	time.Sleep(stuckAfter + 300*time.Millisecond)
	err = f.stuckPeers(context.Background())
	if err == nil || !strings.Contains(err.Error(), "peer tor (127.0.0.72, AS 65000)") {
		t.Fatalf("stuck peer not reported: %v", err)
	}
	a := &Agent{problems: map[string]string{}}
	a.setProblem("bgp", err)
	if st := a.Status(); st.Ready || len(st.Problems) != 1 || !strings.Contains(st.Problems[0], "bgp: peer tor") {
		t.Errorf("status: %+v", st)
	}
}
