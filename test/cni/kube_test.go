package cni_test

import (
	"context"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/weftnet/weft/internal/probe"
	"github.com/weftnet/weft/internal/testutil"
	"github.com/weftnet/weft/internal/testutil/kubetest"
)

// TestServicesFromKubernetesAPI: a weftd given --kubeconfig programs a Service and its
// EndpointSlice from a real kube-apiserver (running in the node's namespace): a pod
// reaches the ClusterIP; a load balancer address in the Service's status is served to
// clients outside the node under both external traffic policies, and to pods straight
// (unmasqueraded, whatever the policy); when the slice says its endpoint is not ready, the
// service refuses at once.
func TestServicesFromKubernetesAPI(t *testing.T) {
	testutil.RequireRoot(t)
	u, storeURL, plug := underlayWithEtcd(t)
	for i := 0; ; i++ {
		if _, err := u.Command(filepath.Join(testutil.Binaries(t), "weft"), "cluster", "init", "--store", storeURL,
			"--cluster-cidr", "10.131.0.0/16", "--service-cidr", "10.96.0.0/16", "--fabric", "vxlan").CombinedOutput(); err == nil {
			break
		} else if i > 50 {
			t.Fatal("weft cluster init never succeeded (etcd not up?)")
		}
		time.Sleep(200 * time.Millisecond)
	}
	n := &node{t: t, ns: testutil.NewNS(t, "kn")}
	plug(n.ns, "192.168.60.1")
	began := time.Now()
	api := kubetest.StartKubeAPI(t, n.ns.Path)
	t.Logf("kube-apiserver ready in %v", time.Since(began).Round(time.Millisecond))
	n.weftd = testutil.StartWeftd(t, n.ns, "", "--store", storeURL, "--underlay-dev", "uplink", "--kubeconfig", api.WriteKubeconfig(t))
	n.cni = libcni.NewCNIConfigWithCacheDir([]string{testutil.Binaries(t)}, t.TempDir(), nil)
	list := n.conflist("1.1.0", "weft", `"mode":"bridge"`)
	client, rtc := n.pod("client")
	clientIP := podIPs(n.mustAdd(list, rtc))[0]
	server, rts := n.pod("server")
	serverIP := podIPs(n.mustAdd(list, rts))[0]
	ln, err := probe.ListenTCP(server.Path, ":8080")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go probe.Whoami(ln, "server")

	kc, err := kubernetes.NewForConfig(api.Config)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	svc, err := kc.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer,
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "web-1", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptrTo("http"), Port: ptrTo(int32(8080)), Protocol: ptrTo(corev1.ProtocolTCP)}},
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{serverIP.String()}, Conditions: discoveryv1.EndpointConditions{Ready: ptrTo(true)}}},
	}
	if slice, err = kc.DiscoveryV1().EndpointSlices("default").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	vip := netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIP), 80)
	var got string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if got, err = probe.AskTCP(client.Path, vip, time.Second); err == nil && probe.Name(got) == "server" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the Kubernetes service %s never answered from a pod: %q %v\nweftd:\n%s", vip, got, err, n.weftd.Log())
		}
	}

	// A load balancer gives the service an address (as MetalLB or a cloud controller
	// writes status.loadBalancer): from outside the node (the underlay namespace, routed
	// to the node) it reaches the backend, masqueraded under externalTrafficPolicy
	// Cluster; under Local the client's address is kept, and with the endpoint on another
	// node the address drops (no refusal: a load balancer's health check moves on).
	lb := netip.AddrPortFrom(netip.MustParseAddr("203.0.113.7"), 80)
	if err := u.Handle(t).RouteAdd(&netlink.Route{Dst: netlink.NewIPNet(lb.Addr().AsSlice()), Gw: net.ParseIP("192.168.60.1")}); err != nil {
		t.Fatal(err)
	}
	svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: lb.Addr().String()}}
	if svc, err = kc.CoreV1().Services("default").UpdateStatus(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// ask waits for the backend to answer and say it saw the client as want (with "!",
	// as anything but; a bare name: any client address).
	ask := func(from testutil.NS, want string) {
		t.Helper()
		for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			got, err = probe.AskTCP(from.Path, lb, 300*time.Millisecond)
			not, negated := strings.CutPrefix(want, "!")
			if err == nil && (got == want || probe.Name(got) == want || (negated && probe.Name(got) == "server" && got != not)) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("load balancer address %s from %s: %q %v, want %q\nweftd:\n%s", lb, from.Path, got, err, want, n.weftd.Log())
			}
		}
	}
	ask(u, "!server 192.168.60.254")         // masqueraded: the client's address is not seen
	ask(client, "server "+clientIP.String()) // a pod: short-circuited to the endpoints, unmasqueraded
	svc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	if svc, err = kc.CoreV1().Services("default").Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The slice names no node: the endpoint is not this node's, so Local drops.
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		_, err := probe.AskTCP(u.Path, lb, 300*time.Millisecond)
		if err != nil && !strings.Contains(err.Error(), "refused") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("under policy Local with no endpoint on the node, %s answers or refuses: %v", lb, err)
		}
	}
	ask(client, "server "+clientIP.String()) // a pod still reaches it (kube-proxy's short-circuit)
	slice.Endpoints[0].NodeName = ptrTo(n.ns.Name)
	if slice, err = kc.DiscoveryV1().EndpointSlices("default").Update(ctx, slice, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	ask(u, "server 192.168.60.254") // the client's own address

	// The endpoint stops being ready: within a second the service refuses.
	slice.Endpoints[0].Conditions.Ready = ptrTo(false)
	start := time.Now()
	if _, err := kc.DiscoveryV1().EndpointSlices("default").Update(ctx, slice, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := probe.AskTCP(client.Path, vip, 300*time.Millisecond); err != nil {
			t.Logf("refused %v after the endpoint became not ready: %v", time.Since(start).Round(time.Millisecond), err)
			break
		}
		if time.Since(start) > time.Second {
			t.Fatal("the service still answers a second after its only endpoint became not ready")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func ptrTo[T any](v T) *T { return &v }
