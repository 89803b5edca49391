package kube

import (
	"reflect"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// TestTrimKeepsWhatConversionsRead: every conversion gives the same result from a trimmed
// object as from the full one, and the trimmed one has lost what weft never reads.
func TestTrimKeepsWhatConversionsRead(t *testing.T) {
	now := metav1.NewTime(time.Unix(1700000000, 0))
	noise := metav1.ObjectMeta{Annotations: map[string]string{"kubectl.kubernetes.io/last-applied-configuration": "{...}"},
		ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}, OwnerReferences: []metav1.OwnerReference{{Name: "rs"}}}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "shop", UID: "u1", Labels: map[string]string{"app": "web"}, DeletionTimestamp: &now,
			Annotations: noise.Annotations, ManagedFields: noise.ManagedFields, OwnerReferences: noise.OwnerReferences},
		Spec: corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{
			{Name: "main", Image: "web:1", Args: []string{"--serve"}, Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}, {ContainerPort: 9000}}},
			{Name: "sidecar", Image: "proxy:1"},
		}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: "10.244.1.5"}, {IP: "fd00::5"}},
			Conditions:        []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionTrue}, {Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}},
			ContainerStatuses: []corev1.ContainerStatus{{Name: "main", Ready: true}}},
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "web-abc", Namespace: "shop", Labels: map[string]string{discoveryv1.LabelServiceName: "web", "endpointslice.kubernetes.io/managed-by": "x"},
			Annotations: map[string]string{corev1.EndpointsLastChangeTriggerTime: "2026-11-30T09:00:00Z", "other": "x"}, ManagedFields: noise.ManagedFields},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080)), Protocol: ptr(corev1.ProtocolTCP)}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.244.1.5"}, NodeName: ptr("n1"), Zone: ptr("z1"), Hostname: ptr("web-1"),
				Conditions: discoveryv1.EndpointConditions{Ready: ptr(true), Serving: ptr(true), Terminating: ptr(false)},
				TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: "shop", Name: "web-1", UID: "u1", ResourceVersion: "7"},
				Hints:      &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: "z1"}}}},
			{Addresses: []string{"10.244.2.5"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(false), Terminating: ptr(true)}},
		},
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", Annotations: noise.Annotations, ManagedFields: noise.ManagedFields},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, ClusterIP: "10.96.0.7", ClusterIPs: []string{"10.96.0.7"}, Selector: map[string]string{"app": "web"},
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromString("http"), NodePort: 30080}}},
		Status: corev1.ServiceStatus{LoadBalancer: corev1.LoadBalancerStatus{Ingress: []corev1.LoadBalancerIngress{{IP: "203.0.113.7"}}}}}
	pol := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "deny", Namespace: "shop", Annotations: noise.Annotations},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}, PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}}

	trimmed := func(o any) any {
		t.Helper()
		out, err := trim(o)
		if err != nil {
			t.Fatal(err)
		}
		if m, ok := out.(metav1.Object); ok && (m.GetManagedFields() != nil || m.GetAnnotations()["kubectl.kubernetes.io/last-applied-configuration"] != "") {
			t.Errorf("%T keeps managed fields or last-applied: %+v", out, m)
		}
		return out
	}
	if a, _ := podOf(pod); !reflect.DeepEqual(a, must(podOf(trimmed(pod).(*corev1.Pod)))) {
		t.Errorf("pod differs once trimmed: %+v", a)
	}
	if tp := trimmed(pod).(*corev1.Pod); tp.Spec.Containers[0].Image != "" || len(tp.Spec.Containers) != 1 || tp.Status.ContainerStatuses != nil {
		t.Errorf("trimmed pod keeps what weft never reads: %+v", tp)
	}
	ts := trimmed(slice).(*discoveryv1.EndpointSlice)
	full, cut := []*discoveryv1.EndpointSlice{slice}, []*discoveryv1.EndpointSlice{ts}
	if !reflect.DeepEqual(resolvedOf(full), resolvedOf(cut)) || lastChange(full) != lastChange(cut) || ts.Labels[discoveryv1.LabelServiceName] != "web" {
		t.Errorf("slice differs once trimmed: %+v vs %+v", resolvedOf(full), resolvedOf(cut))
	}
	if ts.Endpoints[0].Hints != nil || ts.Endpoints[0].TargetRef.UID != "" {
		t.Errorf("trimmed slice keeps what weft never reads: %+v", ts.Endpoints[0])
	}
	if a, _ := serviceOf(svc); !reflect.DeepEqual(a, must(serviceOf(trimmed(svc).(*corev1.Service)))) {
		t.Errorf("service differs once trimmed: %+v", a)
	}
	a, err := policyOf(pol)
	if b, err2 := policyOf(trimmed(pol).(*networkingv1.NetworkPolicy)); err != nil || err2 != nil || !reflect.DeepEqual(a, b) {
		t.Errorf("policy differs once trimmed: %v %v", err, err2)
	}
}

func must[T any](v T, ok bool) T {
	if !ok {
		panic("conversion refused")
	}
	return v
}
