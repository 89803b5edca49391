package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/weftnet/weft/internal/probe"
	"github.com/weftnet/weft/internal/testutil"
	"github.com/weftnet/weft/internal/testutil/kubetest"
)

// TestKubernetesInLab is Kubernetes mode end to end: `weft lab up --kubernetes` runs
// kube-apiserver and kube-controller-manager; the lab's pods become Pod objects; a Service
// created through the API gets its EndpointSlices from the real controller, and every
// weftd programs it: pods on all three nodes reach it by ClusterIP and by DNS name; the
// weftds keep no store (blocks are the Node objects' spec.podCIDRs); a weftd
// killed and restarted loses no connection and lists again; a NetworkPolicy from the API
// is enforced; when a pod goes, the proxy follows the slice; a Node deleted from the API
// loses its routes on the other node.
func ptrInt(v int32) *intstr.IntOrString { p := intstr.FromInt32(v); return &p }

// kubeClientFrom is a client of the lab's API through the kubeconfig lab status names for
// the host (a loopback port relayed into the lab), as kubectl on the host would use it.
func kubeClientFrom(t *testing.T, kubeconfig string) kubernetes.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return client
}

func TestKubernetesInLab(t *testing.T) {
	testutil.RequireRoot(t)
	t.Setenv("WEFT_KUBE_DIR", kubetest.Binaries(t, "kube-apiserver", "kube-controller-manager"))
	l := labFor(t, "k")
	l.must("up", "-d", "--nodes", "3", "--kubernetes")
	for i := 1; i <= 2; i++ {
		l.must("pod", "add", fmt.Sprintf("p%d", i), "--node", fmt.Sprint(i), "--serve", "tcp:8080", "--labels", "app=web")
	}
	l.must("pod", "add", "c1", "--node", "3", "--labels", "role=client")
	st := l.status()
	var withKube struct{ Kubeconfig string }
	if err := json.Unmarshal([]byte(l.must("status", "-o", "json")), &withKube); err != nil || withKube.Kubeconfig == "" {
		t.Errorf("lab status -o json gives no kubeconfig: %v", err)
	} else if _, err := os.Stat(withKube.Kubeconfig); err != nil {
		t.Error(err)
	}
	pods := map[string]testutil.NS{}
	podIP := map[string]netip.Addr{}
	for _, p := range st.Pods {
		pods[p.Name], podIP[p.Name] = testutil.NS{Path: p.Netns}, p.IPs[0]
		// Who answers: each pod says its name on 9090.
		ln, err := probe.ListenTCP(p.Netns, "[::]:9090")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go probe.Whoami(ln, p.Name)
	}
	client := kubeClientFrom(t, withKube.Kubeconfig)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// No store: each weftd runs without one, its blocks are what the controller manager's
	// node IPAM put in its Node object, and it annotated the Node for its peers.
	for _, n := range st.Nodes {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", n.PID))
		if strings.Contains(string(cmdline), "--store") {
			t.Errorf("%s's weftd runs with a store: %q", n.Name, cmdline)
		}
		obj, err := client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := fmt.Sprint(obj.Spec.PodCIDRs), fmt.Sprint(n.PodCIDRs); got != want {
			t.Errorf("%s: weftd serves %s, its Node object says %s", n.Name, want, got)
		}
		if a := obj.Annotations["weft.dev/underlay"]; !strings.HasPrefix(a, n.Underlay.String()) {
			t.Errorf("%s: annotation weft.dev/underlay is %q, want %s first", n.Name, a, n.Underlay)
		}
	}
	// weft's CLI reads the same membership from the API.
	out, err := exec.Command(l.bin, "cluster", "status", "--kubeconfig", withKube.Kubeconfig,
		"--config-file", filepath.Join("/run/weft-lab", l.name, "cluster.json"), "-o", "json").CombinedOutput()
	var cs struct {
		Config struct{ Fabric string }
		Leases []struct {
			Node     string
			PodCIDRs []netip.Prefix
		}
	}
	if err != nil || json.Unmarshal(out, &cs) != nil || cs.Config.Fabric != "vxlan" || len(cs.Leases) != len(st.Nodes) {
		t.Errorf("weft cluster status --kubeconfig: %v\n%s", err, out)
	}
	for i, l := range cs.Leases {
		if i < len(st.Nodes) && (l.Node != st.Nodes[i].Name || fmt.Sprint(l.PodCIDRs) != fmt.Sprint(st.Nodes[i].PodCIDRs)) {
			t.Errorf("weft cluster status --kubeconfig: %s %v, the lab says %s %v", l.Node, l.PodCIDRs, st.Nodes[i].Name, st.Nodes[i].PodCIDRs)
		}
	}
	svc, err := client.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"},
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(9090)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vip := netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIP), 80)

	// The controller derives the slice from the Pod objects; every node programs it.
	reached := func(from string, tries int) map[string]bool {
		seen := map[string]bool{}
		for range tries {
			if got, err := probe.AskTCP(pods[from].Path, vip, 300*time.Millisecond); err == nil {
				seen[probe.Name(got)] = true
			}
		}
		return seen
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if len(reached("p1", 20)) == 2 && len(reached("p2", 20)) == 2 && len(reached("c1", 20)) == 2 {
			break
		}
		if time.Now().After(deadline) {
			slices, _ := client.DiscoveryV1().EndpointSlices("default").List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=web"})
			podList, _ := client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
			nodes, _ := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
			t.Fatalf("the service %s does not reach both pods from every node: p1 sees %v, p2 %v, c1 %v\nslices: %+v\npods: %+v\nnodes: %d", vip, reached("p1", 20), reached("p2", 20), reached("c1", 20), slices.Items, podList.Items, len(nodes.Items))
		}
	}
	// weft's CLI reads the same state, and sends writes to kubectl.
	var listed []struct {
		Name       string
		ClusterIPs []netip.Addr
	}
	if err := json.Unmarshal([]byte(l.must("service", "ls", "-o", "json")), &listed); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, s := range listed {
		found = found || (s.Name == "web" && len(s.ClusterIPs) == 1 && s.ClusterIPs[0] == vip.Addr())
	}
	if !found {
		t.Errorf("weft lab service ls does not show the API's service web at %s: %+v", vip.Addr(), listed)
	}
	if eps := l.must("service", "endpoints", "web"); !strings.Contains(eps, podIP["p1"].String()) || !strings.Contains(eps, podIP["p2"].String()) {
		t.Errorf("weft lab service endpoints web:\n%s", eps)
	}
	if out, err := l.run("service", "add", "other", "--port", "80"); err == nil || !strings.Contains(out, "kubectl") {
		t.Errorf("a write in Kubernetes mode: %v\n%s", err, out)
	}

	// By name, from the node's DNS (fed by the same API), which answers at the kube-dns
	// Service's address: such a Service (as kubeadm makes it, here with no DNS pods
	// behind it) must not take the queries away through the proxy.
	if _, err := client.CoreV1().Services("kube-system").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-dns"},
		Spec: corev1.ServiceSpec{ClusterIP: dnsAddr.Addr().String(), Selector: map[string]string{"k8s-app": "kube-dns"},
			Ports: []corev1.ServicePort{{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53}, {Name: "dns-tcp", Protocol: corev1.ProtocolTCP, Port: 53}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // every node has seen it
	name := "web.default.svc.cluster.local."
	for _, from := range []string{"p1", "p2", "c1"} { // one pod on each node
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			m, err := dnsQuery(pods[from].Path, dnsAddr, name, mdns.TypeA)
			if err == nil && len(m.Answer) == 1 && lastFields(m) == vip.Addr().String() {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s from %s: %v %v", name, from, m, err)
			}
		}
	}

	// kill -9 of node1's weftd under a connection loop from p1: no connection fails, and
	// the restarted weftd's informers list again (a service made meanwhile works).
	var okCount, failed atomic.Int64
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := probe.AskTCP(pods["p1"].Path, vip, 2*time.Second); err != nil {
				failed.Add(1)
			} else {
				okCount.Add(1)
			}
		}
	}()
	time.Sleep(300 * time.Millisecond)
	l.must("node", "restart", "node1", "--kill")
	svc2, err := client.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web2"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"},
			Ports: []corev1.ServicePort{{Protocol: corev1.ProtocolTCP, Port: 81, TargetPort: intstr.FromInt32(9090)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	<-done
	if failed.Load() > 0 || okCount.Load() < 10 {
		t.Errorf("across a weftd kill -9 and restart: %d connections failed, %d succeeded", failed.Load(), okCount.Load())
	}
	vip2 := netip.AddrPortFrom(netip.MustParseAddr(svc2.Spec.ClusterIP), 81)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := probe.AskTCP(pods["p1"].Path, vip2, time.Second); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a service created while node1's weftd restarted is not reachable from p1 after 5 s")
		}
	}

	// A NetworkPolicy from the API: only role=client pods may reach app=web pods on 9090.
	if _, err := client.NetworkingV1().NetworkPolicies("default").Create(ctx, &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "web-from-clients"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "client"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Port: ptrInt(9090)}},
			}},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	target := netip.AddrPortFrom(podIP["p1"], 9090)
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		_, fromClient := probe.AskTCP(pods["c1"].Path, target, time.Second)
		_, fromWeb := probe.AskTCP(pods["p2"].Path, target, 300*time.Millisecond)
		if fromClient == nil && fromWeb != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("policy from the API: client→p1 %v (want allowed), p2→p1 %v (want denied)", fromClient, fromWeb)
		}
	}

	// Scaling up: a third app=web pod (on node3) gets its Pod object, the controller adds
	// it to the slice, and the proxy follows.
	// (From c1: the policy above keeps app=web pods from reaching each other.)
	l.must("pod", "add", "p3", "--node", "3", "--labels", "app=web")
	added := time.Now()
	for _, p := range l.status().Pods {
		if p.Name == "p3" {
			ln, err := probe.ListenTCP(p.Netns, "[::]:9090")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			go probe.Whoami(ln, p.Name)
		}
	}
	for {
		if seen := reached("c1", 30); len(seen) == 3 {
			t.Logf("the proxy follows an added pod %v after its attachment (Pod created, slice updated, programmed)", time.Since(added).Round(time.Millisecond))
			break
		}
		if time.Since(added) > 5*time.Second {
			t.Fatalf("5 s after p3 came, c1 reaches %v through %s", reached("c1", 30), vip)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Scaling down: a pod goes, its Pod object is deleted, the controller updates the
	// slice, and the proxy on every node follows.
	l.must("pod", "rm", "p2")
	gone := time.Now()
	for {
		if seen := reached("c1", 30); len(seen) == 2 && seen["p1"] && seen["p3"] {
			t.Logf("the proxy follows a removed pod %v after its removal (Pod deleted, slice updated, programmed)", time.Since(gone).Round(time.Millisecond))
			break
		}
		if time.Since(gone) > 5*time.Second {
			t.Fatalf("5 s after p2 went, c1 reaches %v through %s", reached("c1", 30), vip)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// A Node deleted from the API: the other node forgets it and drops its routes.
	block := st.Nodes[1].PodCIDRs[0].String()
	routes := func() string {
		out, _ := exec.Command("ip", "-n", filepath.Base(st.Nodes[0].Netns), "route").Output()
		return string(out)
	}
	if !strings.Contains(routes(), block) {
		t.Fatalf("node1 has no route to node2's %s to begin with:\n%s", block, routes())
	}
	if err := client.CoreV1().Nodes().Delete(ctx, st.Nodes[1].Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	for strings.Contains(routes(), block) {
		if time.Since(deleted) > 3*time.Second {
			t.Fatalf("3 s after node2's Node object was deleted, node1 still routes its %s:\n%s", block, routes())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("node2's block left node1's routes %v after its Node object was deleted", time.Since(deleted).Round(time.Millisecond))
}

// TestKubernetesLoadBalancerOverBGP: a racked lab in Kubernetes mode (no store: the rack
// routers are peers from the configuration file). A LoadBalancer Service's address, as a
// load balancer controller writes it into the status, is announced to the rack router
// over BGP: under externalTrafficPolicy Local only by the node with the endpoint, so the
// client behind the router reaches the pod with its own address kept; under Cluster by
// every node, masqueraded.
func TestKubernetesLoadBalancerOverBGP(t *testing.T) {
	testutil.RequireRoot(t)
	t.Setenv("WEFT_KUBE_DIR", kubetest.Binaries(t, "kube-apiserver", "kube-controller-manager"))
	l := labFor(t, "b")
	l.must("up", "-d", "--nodes", "2", "--fabric", "bgp", "--racks", "2", "--kubernetes")
	l.must("pod", "add", "web", "--node", "2", "--labels", "app=web")
	st := l.status()
	var state struct{ Client string }
	if b, err := os.ReadFile(filepath.Join("/run/weft-lab", l.name, "lab.json")); err != nil || json.Unmarshal(b, &state) != nil {
		t.Fatalf("lab state: %v", err)
	}
	for _, p := range st.Pods {
		ln, err := probe.ListenTCP(p.Netns, "[::]:9090")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go probe.Whoami(ln, p.Name)
	}
	// Each node's session with its rack's router, a peer from the configuration file.
	for _, n := range st.Nodes {
		var peers []struct{ Name, State string }
		if err := json.Unmarshal([]byte(l.must("bgp", "peers", n.Name, "-o", "json")), &peers); err != nil {
			t.Fatal(err)
		}
		if len(peers) != 1 || !strings.HasPrefix(peers[0].Name, "tor-rack") || peers[0].State != "established" {
			t.Errorf("%s peers: %+v", n.Name, peers)
		}
	}

	var withKube struct{ Kubeconfig string }
	if err := json.Unmarshal([]byte(l.must("status", "-o", "json")), &withKube); err != nil {
		t.Fatal(err)
	}
	client := kubeClientFrom(t, withKube.Kubeconfig)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	svc, err := client.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Selector: map[string]string{"app": "web"},
			ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal,
			Ports:                 []corev1.ServicePort{{Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(9090)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	lb := netip.AddrPortFrom(netip.MustParseAddr("10.97.0.10"), 80) // in the lab's load balancer range
	svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: lb.Addr().String()}}
	if svc, err = client.CoreV1().Services("default").UpdateStatus(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// routedVia is the router's entry for the address: its line and the indented lines
	// (next hops, other paths) up to the next prefix.
	routedVia := func() string {
		view := l.must("bgp", "router")
		i := strings.Index(view, lb.Addr().String()+"/32")
		if i < 0 {
			return ""
		}
		lines := strings.Split(view[i:], "\n")
		entry := lines[0]
		for _, ln := range lines[1:] {
			if ln == "" || (ln[0] != ' ' && ln[0] != '\t') {
				break
			}
			entry += "\n" + ln
		}
		return entry
	}
	// Local: the router learns the address from node2 alone, and the pod sees the client.
	start := time.Now()
	for {
		got, err := probe.AskTCP(state.Client, lb, time.Second)
		if err == nil && got == "web 192.168.250.1" {
			if r := routedVia(); !strings.Contains(r, st.Nodes[1].Underlay.String()) || strings.Contains(r, st.Nodes[0].Underlay.String()) {
				t.Errorf("under Local the router routes %s via more than node2:\n%s", lb.Addr(), r)
			}
			t.Logf("Local: the client reaches %s (announced by node2) %v after the address was set", lb, time.Since(start).Round(time.Millisecond))
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("the client behind the router does not reach %s with its own address: %q %v\nrouter:\n%s", lb, got, err, l.must("bgp", "router"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Cluster: both nodes announce it; connections are masqueraded.
	svc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyCluster
	if _, err := client.CoreV1().Services("default").Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	for start = time.Now(); ; time.Sleep(100 * time.Millisecond) {
		r := routedVia()
		if strings.Contains(r, st.Nodes[0].Underlay.String()) && strings.Contains(r, st.Nodes[1].Underlay.String()) {
			break
		}
		if time.Since(start) > 5*time.Second {
			t.Fatalf("under Cluster the router does not route %s via both nodes:\n%s", lb.Addr(), l.must("bgp", "router"))
		}
	}
	for i := range 10 {
		got, err := probe.AskTCP(state.Client, lb, time.Second)
		if err != nil || probe.Name(got) != "web" || got == "web 192.168.250.1" {
			t.Fatalf("connection %d under Cluster: %q %v (want web, the client's address masqueraded)", i, got, err)
		}
	}
}
