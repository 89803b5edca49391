package kube

import (
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// trim is the informers' transform: each object is cut down to what the conversions read
// before the informer stores it. An informer keeps every object of its kind for as long
// as weftd runs, and a Pod or an EndpointSlice carries much weft never looks at (managed
// fields, last-applied annotations, container specs, statuses, topology hints), so on a
// node this is most of what Kubernetes mode costs in memory.
func trim(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		return trimPod(o), nil
	case *discoveryv1.EndpointSlice:
		return trimSlice(o), nil
	case *corev1.Service:
		out := *o
		out.ObjectMeta = meta(o.ObjectMeta, o.Labels, nil)
		return &out, nil
	case *corev1.Namespace:
		return &corev1.Namespace{ObjectMeta: meta(o.ObjectMeta, o.Labels, nil)}, nil
	case *corev1.Node:
		return trimNode(o)
	case *networkingv1.NetworkPolicy:
		return &networkingv1.NetworkPolicy{ObjectMeta: meta(o.ObjectMeta, nil, nil), Spec: o.Spec}, nil
	}
	return obj, nil // a tombstone, or a kind not trimmed
}

// meta keeps identity (and the given labels and annotations) of an object's metadata.
func meta(m metav1.ObjectMeta, labels, annotations map[string]string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion,
		DeletionTimestamp: m.DeletionTimestamp, Labels: labels, Annotations: annotations}
}

// trimPod keeps what podOf reads: labels, node, host networking, named container ports,
// addresses and the Ready condition.
func trimPod(p *corev1.Pod) *corev1.Pod {
	out := &corev1.Pod{ObjectMeta: meta(p.ObjectMeta, p.Labels, nil)}
	out.Spec.NodeName, out.Spec.HostNetwork = p.Spec.NodeName, p.Spec.HostNetwork
	for _, c := range p.Spec.Containers {
		var named []corev1.ContainerPort
		for _, port := range c.Ports {
			if port.Name != "" {
				named = append(named, corev1.ContainerPort{Name: port.Name, ContainerPort: port.ContainerPort, Protocol: port.Protocol})
			}
		}
		if len(named) > 0 {
			out.Spec.Containers = append(out.Spec.Containers, corev1.Container{Ports: named})
		}
	}
	out.Status.PodIPs = p.Status.PodIPs
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			out.Status.Conditions = []corev1.PodCondition{{Type: c.Type, Status: c.Status}}
		}
	}
	return out
}

// trimSlice keeps what resolvedOf and lastChange read: the service label, the change
// trigger time, ports, and each endpoint's addresses, conditions, node and pod.
func trimSlice(sl *discoveryv1.EndpointSlice) *discoveryv1.EndpointSlice {
	var labels, annotations map[string]string
	if v, ok := sl.Labels[discoveryv1.LabelServiceName]; ok {
		labels = map[string]string{discoveryv1.LabelServiceName: v}
	}
	if v, ok := sl.Annotations[corev1.EndpointsLastChangeTriggerTime]; ok {
		annotations = map[string]string{corev1.EndpointsLastChangeTriggerTime: v}
	}
	out := &discoveryv1.EndpointSlice{ObjectMeta: meta(sl.ObjectMeta, labels, annotations), AddressType: sl.AddressType, Ports: sl.Ports}
	out.Endpoints = make([]discoveryv1.Endpoint, len(sl.Endpoints))
	for i, e := range sl.Endpoints {
		te := discoveryv1.Endpoint{Addresses: e.Addresses, Conditions: e.Conditions, NodeName: e.NodeName}
		if r := e.TargetRef; r != nil && r.Kind == "Pod" {
			te.TargetRef = &corev1.ObjectReference{Kind: r.Kind, Namespace: r.Namespace, Name: r.Name}
		}
		out.Endpoints[i] = te
	}
	return out
}
