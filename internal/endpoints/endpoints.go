// Package endpoints derives a service's backends from the pods of the whole cluster, with
// Kubernetes semantics: a selector picks pods by label in the service's namespace, a named
// targetPort resolves per pod, ready pods serve, terminating pods keep their connections
// but take no new ones, and explicit IP:port endpoints stand for backends that are not pods.
// Pure: the service proxy, DNS and later a Kubernetes EndpointSlice source share it.
package endpoints

import (
	"net/netip"
	"sort"

	v1 "github.com/weftnet/weft/api/v1"
)

// Port is one service port with its backends.
type Port struct {
	v1.ServicePort
	Endpoints []v1.Endpoint
}

// For returns, for each port of svc, its endpoints among pods, sorted by address so equal
// inputs give equal outputs (the proxy compares them to skip work).
func For(svc *v1.Service, pods []v1.Pod) []Port {
	out := make([]Port, len(svc.Ports))
	for i, sp := range svc.Ports {
		out[i] = Port{ServicePort: sp, Endpoints: []v1.Endpoint{}}
		if svc.Resolved != nil {
			out[i].Endpoints = append(out[i].Endpoints, svc.Resolved[sp.Name]...)
			sortEndpoints(out[i].Endpoints)
			continue
		}
		if len(svc.Endpoints) > 0 {
			for _, ap := range svc.Endpoints {
				out[i].Endpoints = append(out[i].Endpoints, v1.Endpoint{IP: ap.Addr().Unmap(), Port: int(ap.Port()), Ready: true})
			}
			continue
		}
		for _, p := range pods {
			if p.Namespace != svc.Namespace || !svc.Selects(p.Labels) {
				continue
			}
			port, ok := targetPort(sp, p)
			if !ok {
				continue // a named port this pod does not have: not a backend of this port
			}
			for _, ip := range p.IPs {
				out[i].Endpoints = append(out[i].Endpoints, v1.Endpoint{
					IP: ip, Port: port, Node: p.Node, Pod: p.Namespace + "/" + p.Name,
					Ready: p.Ready && !p.Terminating, Terminating: p.Terminating,
				})
			}
		}
		sortEndpoints(out[i].Endpoints)
	}
	return out
}

func sortEndpoints(eps []v1.Endpoint) {
	sort.Slice(eps, func(a, b int) bool {
		if eps[a].IP != eps[b].IP {
			return eps[a].IP.Less(eps[b].IP)
		}
		return eps[a].Port < eps[b].Port
	})
}

func targetPort(sp v1.ServicePort, p v1.Pod) (int, bool) {
	switch {
	case sp.TargetPortName != "":
		for _, np := range p.Ports {
			proto := np.Protocol
			if proto == "" {
				proto = v1.ProtocolTCP
			}
			if np.Name == sp.TargetPortName && proto == sp.Protocol {
				return np.Port, true
			}
		}
		return 0, false
	case sp.TargetPort != 0:
		return sp.TargetPort, true
	default:
		return sp.Port, true
	}
}

// Family keeps the endpoints of one address family (for a VIP of that family).
func Family(eps []v1.Endpoint, is4 bool) []v1.Endpoint {
	out := []v1.Endpoint{}
	for _, e := range eps {
		if e.IP.Is4() == is4 {
			out = append(out, e)
		}
	}
	return out
}

// Serving keeps the endpoints that take new connections: ready and not terminating.
// (Kubernetes falls back to terminating endpoints that still pass readiness when none is
// ready; weft's pods have no readiness of their own while terminating, so they get none.)
func Serving(eps []v1.Endpoint) []v1.Endpoint {
	out := []v1.Endpoint{}
	for _, e := range eps {
		if e.Ready && !e.Terminating {
			out = append(out, e)
		}
	}
	return out
}

// Local keeps the endpoints on node (externalTrafficPolicy and internalTrafficPolicy Local).
func Local(eps []v1.Endpoint, node string) []v1.Endpoint {
	out := []v1.Endpoint{}
	for _, e := range eps {
		if e.Node == node {
			out = append(out, e)
		}
	}
	return out
}

// Addrs lists the endpoints' addresses.
func Addrs(eps []v1.Endpoint) []netip.Addr {
	out := make([]netip.Addr, len(eps))
	for i, e := range eps {
		out[i] = e.IP
	}
	return out
}
