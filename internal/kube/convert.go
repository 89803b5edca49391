package kube

import (
	"encoding/json"
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/manifest"
)

// serviceOf converts a Service. ExternalName services have no address to balance: ok is
// false. LoadBalancer services are node port services to the proxy (their node ports are
// what a load balancer sends to), plus the ingress addresses a load balancer gave them.
func serviceOf(s *corev1.Service) (out v1.Service, ok bool) {
	out = v1.Service{
		Name: s.Name, Namespace: s.Namespace, Selector: s.Spec.Selector,
		SessionAffinity: string(s.Spec.SessionAffinity),
	}
	switch s.Spec.Type {
	case corev1.ServiceTypeClusterIP, "":
		out.Type = v1.ServiceTypeClusterIP
	case corev1.ServiceTypeNodePort, corev1.ServiceTypeLoadBalancer:
		out.Type = v1.ServiceTypeNodePort
	default:
		return out, false
	}
	if s.Spec.ClusterIP == corev1.ClusterIPNone {
		out.ClusterIP = v1.ClusterIPNone
	}
	for _, ip := range s.Spec.ClusterIPs {
		if a, err := netip.ParseAddr(ip); err == nil {
			out.ClusterIPs = append(out.ClusterIPs, a)
		}
	}
	if s.Spec.Type == corev1.ServiceTypeLoadBalancer {
		for _, in := range s.Status.LoadBalancer.Ingress {
			if a, err := netip.ParseAddr(in.IP); err == nil {
				out.LoadBalancerIPs = append(out.LoadBalancerIPs, a)
			}
		}
	}
	for _, f := range s.Spec.IPFamilies {
		out.IPFamilies = append(out.IPFamilies, string(f))
	}
	if c := s.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
		out.AffinityTimeout = int(*c.ClientIP.TimeoutSeconds)
	}
	if p := s.Spec.InternalTrafficPolicy; p != nil {
		out.InternalTrafficPolicy = string(*p)
	}
	out.ExternalTrafficPolicy = string(s.Spec.ExternalTrafficPolicy)
	for _, p := range s.Spec.Ports {
		sp := v1.ServicePort{Name: p.Name, Protocol: string(p.Protocol), Port: int(p.Port), NodePort: int(p.NodePort)}
		if p.TargetPort.Type == intstr.String {
			sp.TargetPortName = p.TargetPort.StrVal
		} else {
			sp.TargetPort = int(p.TargetPort.IntVal)
		}
		out.Ports = append(out.Ports, sp)
	}
	out.Defaults()
	return out, true
}

// resolvedOf gathers a service's endpoints from its EndpointSlices, by port name: every
// address of every endpoint, with the slice's port of that name. An endpoint is ready
// unless its ready condition says false (an unknown condition counts as ready, as the API
// documents), and terminating when its terminating condition says so.
func resolvedOf(slices []*discoveryv1.EndpointSlice) map[string][]v1.Endpoint {
	out := map[string][]v1.Endpoint{}
	for _, sl := range slices {
		for _, p := range sl.Ports {
			if p.Port == nil {
				continue
			}
			name := ""
			if p.Name != nil {
				name = *p.Name
			}
			for _, e := range sl.Endpoints {
				ep := v1.Endpoint{Port: int(*p.Port),
					Ready:       e.Conditions.Ready == nil || *e.Conditions.Ready,
					Terminating: e.Conditions.Terminating != nil && *e.Conditions.Terminating}
				if ep.Terminating {
					ep.Ready = false
				}
				if e.NodeName != nil {
					ep.Node = *e.NodeName
				}
				if r := e.TargetRef; r != nil && r.Kind == "Pod" {
					ep.Pod = r.Namespace + "/" + r.Name
				}
				for _, a := range e.Addresses {
					if ip, err := netip.ParseAddr(a); err == nil {
						ep.IP = ip
						out[name] = append(out[name], ep)
					}
				}
			}
		}
	}
	return out
}

// podOf converts a pod with addresses; host-network pods are the node's, not pods of the
// pod network: ok is false for them and for pods without an address yet.
func podOf(p *corev1.Pod) (out v1.Pod, ok bool) {
	if p.Spec.HostNetwork {
		return out, false
	}
	out = v1.Pod{Name: p.Name, Namespace: p.Namespace, Labels: p.Labels, Node: p.Spec.NodeName,
		ContainerID: string(p.UID), Terminating: p.DeletionTimestamp != nil}
	for _, a := range p.Status.PodIPs {
		if ip, err := netip.ParseAddr(a.IP); err == nil {
			out.IPs = append(out.IPs, ip)
		}
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			out.Ready = c.Status == corev1.ConditionTrue
		}
	}
	for _, c := range p.Spec.Containers {
		for _, port := range c.Ports {
			if port.Name != "" {
				out.Ports = append(out.Ports, v1.NamedPort{Name: port.Name, Port: int(port.ContainerPort), Protocol: string(port.Protocol)})
			}
		}
	}
	return out, len(out.IPs) > 0
}

// policyOf converts a NetworkPolicy through weft's manifest reader, so a policy from the
// API means exactly what the same manifest given to `weft apply` means.
func policyOf(p *networkingv1.NetworkPolicy) (v1.NetworkPolicy, error) {
	spec, err := json.Marshal(p.Spec)
	if err != nil {
		return v1.NetworkPolicy{}, err
	}
	doc, err := json.Marshal(map[string]any{
		"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
		"metadata": map[string]string{"name": p.Name, "namespace": p.Namespace},
		"spec":     json.RawMessage(spec),
	})
	if err != nil {
		return v1.NetworkPolicy{}, err
	}
	objs, err := manifest.Parse(doc)
	if err != nil {
		return v1.NetworkPolicy{}, err
	}
	if len(objs) != 1 || objs[0].Policy == nil {
		return v1.NetworkPolicy{}, fmt.Errorf("NetworkPolicy %s/%s: not a policy", p.Namespace, p.Name)
	}
	return *objs[0].Policy, nil
}
