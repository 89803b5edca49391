package kube

import (
	"context"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/proxy"
	"github.com/weftnet/weft/internal/resources"
	"github.com/weftnet/weft/internal/testutil/kubetest"
)

func ptr[T any](v T) *T { return &v }

func endpoint(ip, node string, ready, terminating bool) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{Addresses: []string{ip}, NodeName: ptr(node),
		Conditions: discoveryv1.EndpointConditions{Ready: ptr(ready), Terminating: ptr(terminating)}}
}

// TestSourceAgainstAnAPIServer feeds a cache from a real kube-apiserver: services with
// their EndpointSlices' endpoints, pods, namespaces and policies arrive converted, and an
// EndpointSlice change reaches the service proxy's desired state within a second.
func TestSourceAgainstAnAPIServer(t *testing.T) {
	client := kubetest.StartKubeAPI(t, "").Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{"team": "a"}}}, metav1.CreateOptions{}))
	svc, err := client.CoreV1().Services("shop").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, Selector: map[string]string{"app": "web"},
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromString("web")}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "web-1", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080)), Protocol: ptr(corev1.ProtocolTCP)}},
		Endpoints:   []discoveryv1.Endpoint{endpoint("10.244.1.5", "n1", true, false), endpoint("10.244.2.5", "n2", false, true)},
	}
	if slice, err = client.DiscoveryV1().EndpointSlices("shop").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod, err := client.CoreV1().Pods("shop").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-a", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "c", Image: "x",
			Ports: []corev1.ContainerPort{{Name: "web", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}}}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Status = corev1.PodStatus{PodIP: "10.244.1.5", PodIPs: []corev1.PodIP{{IP: "10.244.1.5"}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
	must(client.CoreV1().Pods("shop").UpdateStatus(ctx, pod, metav1.UpdateOptions{}))
	must(client.NetworkingV1().NetworkPolicies("shop").Create(ctx, &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "web-in"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
				NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "a"}}}}}}},
	}, metav1.CreateOptions{}))

	cache, feeder := resources.NewFedCache()
	changed := make(chan resources.Kind, 100)
	cache.OnChange(func(k resources.Kind) {
		select {
		case changed <- k:
		default:
		}
	})
	src := &Source{Client: client}
	go func() { _ = src.Run(ctx, feeder) }()
	for deadline := time.Now().Add(30 * time.Second); !cache.Synced(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the source never synced")
		}
	}

	svcs := cache.Services()
	var web *v1.Service
	for i := range svcs {
		if svcs[i].Key() == "shop/web" {
			web = &svcs[i]
		}
	}
	if web == nil {
		t.Fatalf("shop/web not in the cache: %+v", svcs)
	}
	if web.Type != v1.ServiceTypeNodePort || len(web.ClusterIPs) != 1 || web.ClusterIPs[0].String() != svc.Spec.ClusterIP ||
		web.Ports[0].NodePort != int(svc.Spec.Ports[0].NodePort) || web.Ports[0].TargetPortName != "web" {
		t.Errorf("service converted as %+v", web)
	}
	if eps := web.Resolved["http"]; len(eps) != 2 {
		t.Errorf("endpoints from the slice: %+v", web.Resolved)
	}
	if pods := cache.Pods(); len(pods) != 1 || pods[0].Name != "web-a" || !pods[0].Ready || len(pods[0].IPs) != 1 || pods[0].Ports[0].Name != "web" {
		t.Errorf("pods: %+v", pods)
	}
	if pols := cache.Policies(); len(pols) != 1 || pols[0].Key() != "shop/web-in" || len(pols[0].Ingress) != 1 {
		t.Errorf("policies: %+v", pols)
	}
	found := false
	for _, ns := range cache.Namespaces() {
		found = found || (ns.Name == "shop" && ns.Labels["team"] == "a")
	}
	if !found {
		t.Errorf("namespaces: %+v", cache.Namespaces())
	}
	// The proxy's view: the ready endpoint only (the other one terminates).
	backends := func() []string {
		st := proxy.Compute(proxy.Node{Name: "n1"}, cache.Services(), cache.Pods())
		for _, p := range st.Ports {
			if p.Service == "shop/web" {
				var out []string
				for _, b := range p.Backends {
					out = append(out, b.String())
				}
				return out
			}
		}
		return nil
	}
	if got := backends(); len(got) != 1 || got[0] != "10.244.1.5:8080" {
		t.Fatalf("backends %v, want the ready endpoint", got)
	}

	// Scale: a third endpoint in the slice reaches the proxy's state within a second.
	slice.Endpoints = append(slice.Endpoints, endpoint("10.244.3.5", "n3", true, false))
	for len(changed) > 0 {
		<-changed
	}
	start := time.Now()
	must(client.DiscoveryV1().EndpointSlices("shop").Update(ctx, slice, metav1.UpdateOptions{}))
	for len(backends()) != 2 {
		if time.Since(start) > time.Second {
			t.Fatalf("a new endpoint not in the proxy's state after 1 s: %v", backends())
		}
		select {
		case <-changed:
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Logf("an EndpointSlice update reached the proxy's state in %v", time.Since(start).Round(time.Millisecond))
	if got := backends(); netip.MustParseAddrPort(got[1]).Addr().String() != "10.244.3.5" {
		t.Errorf("backends %v", got)
	}

	// A deleted service leaves the cache.
	must(nil, client.CoreV1().Services("shop").Delete(ctx, "web", metav1.DeleteOptions{}))
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		gone := true
		for _, s := range cache.Services() {
			gone = gone && s.Key() != "shop/web"
		}
		if gone {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a deleted service is still in the cache")
		}
	}
}
