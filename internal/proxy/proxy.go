// Package proxy computes what a node's service proxy must program: for every service port
// and address family, the virtual address, node port and the backends each kind of traffic
// may reach, with Kubernetes semantics (traffic policies, session affinity, terminating
// endpoints get no new connections, no endpoints → refuse). Pure: the nftables adapter
// (proxy/nftproxy), and later an eBPF one, render the same State.
package proxy

import (
	"crypto/sha256"
	"encoding/base32"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/endpoints"
)

// Backend is one endpoint address a connection may be sent to.
type Backend struct {
	IP   netip.Addr
	Port uint16
}

func (b Backend) String() string { return netip.AddrPortFrom(b.IP, b.Port).String() }

// Port is one service port in one address family: the unit the proxy programs, with a
// chain of its own, so a change to it touches only its objects.
type Port struct {
	ID       string // stable short name, from service, port and family
	Service  string // namespace/name, for humans
	PortName string
	VIP      netip.Addr // the ClusterIP of this family
	Proto    uint8      // IPPROTO_TCP, _UDP or _SCTP
	Port     uint16
	NodePort uint16 // 0: none
	// Backends for traffic to the VIP (internalTrafficPolicy applied).
	Backends []Backend
	// NodePortBackends for traffic to the node port (externalTrafficPolicy applied);
	// with ExternalLocal the client's address is kept (no masquerade).
	NodePortBackends []Backend
	ExternalLocal    bool
	// Affinity pins a client address to its backend for this long (0: none).
	Affinity time.Duration
	// A load balancer ingress address (VIP is then that address, Backends those of
	// externalTrafficPolicy): Masquerade under policy Cluster, so replies come back
	// through this node; DropIfEmpty under policy Local when the endpoints are all on
	// other nodes (the load balancer's health check moves traffic to those).
	LoadBalancer, Masquerade, DropIfEmpty bool
	// PodBackends (load balancer addresses): where the cluster's own pods' connections go
	// instead, unmasqueraded: the service's internal backends, as kube-proxy short-circuits
	// them (so a pod reaches the address even under policy Local on a node without an
	// endpoint).
	PodBackends []Backend
}

// Is6 reports the port's family.
func (p *Port) Is6() bool { return p.VIP.Is6() }

// Key is an endpoint as the dataplane sees a packet from it: address, protocol, port.
type Key struct {
	IP    netip.Addr
	Proto uint8
	Port  uint16
}

// KeyLess orders keys by address, protocol and port (State.Endpoints is in this order).
func KeyLess(a, b Key) bool {
	if a.IP != b.IP {
		return a.IP.Less(b.IP)
	}
	if a.Proto != b.Proto {
		return a.Proto < b.Proto
	}
	return a.Port < b.Port
}

// State is everything a node's proxy programs.
type State struct {
	Ports map[string]*Port
	// Endpoints lists every service endpoint in the cluster, sorted by KeyLess and without
	// duplicates. Packets from them are the
	// replies of DNATed connections: they must stay tracked (no notrack) and off the eBPF
	// fast path, or their reverse NAT would be skipped.
	Endpoints []Key
}

// Node is what the proxy knows of the node it runs on.
type Node struct {
	Name string
}

// Protocol numbers (IANA).
const (
	ProtoTCP  = 6
	ProtoUDP  = 17
	ProtoSCTP = 132
)

// ProtoNumber converts a v1 protocol name.
func ProtoNumber(p string) uint8 {
	switch p {
	case v1.ProtocolUDP:
		return ProtoUDP
	case v1.ProtocolSCTP:
		return ProtoSCTP
	}
	return ProtoTCP
}

// Compute renders the desired state from every service and pod of the cluster.
func Compute(node Node, services []v1.Service, pods []v1.Pod) State {
	st := State{Ports: map[string]*Port{}}
	seen := map[Key]bool{}
	for i := range services {
		svc := &services[i]
		for _, ep := range endpoints.For(svc, pods) {
			proto := ProtoNumber(ep.Protocol)
			all := endpoints.Serving(ep.Endpoints)
			for _, e := range ep.Endpoints { // terminating ones too: their replies are DNATed flows
				k := Key{IP: e.IP, Proto: proto, Port: uint16(e.Port)}
				if !seen[k] {
					seen[k] = true
					st.Endpoints = append(st.Endpoints, k)
				}
			}
			for _, is4 := range []bool{true, false} {
				vip := vipOf(svc, is4)
				if !vip.IsValid() { // headless, or a family the service has no address of
					continue
				}
				fam := endpoints.Family(all, is4)
				p := &Port{
					ID:       portID(svc, ep.ServicePort, is4),
					Service:  svc.Key(),
					PortName: ep.Name,
					VIP:      vip,
					Proto:    proto,
					Port:     uint16(ep.Port),
					NodePort: uint16(ep.NodePort),
				}
				internal := fam
				if svc.InternalTrafficPolicy == v1.TrafficPolicyLocal {
					internal = endpoints.Local(fam, node.Name)
				}
				p.Backends = backends(internal)
				if p.NodePort != 0 {
					external := fam
					if svc.ExternalTrafficPolicy == v1.TrafficPolicyLocal {
						external = endpoints.Local(fam, node.Name)
						p.ExternalLocal = true
					}
					p.NodePortBackends = backends(external)
				}
				if svc.SessionAffinity == v1.AffinityClientIP {
					p.Affinity = time.Duration(svc.AffinityTimeout) * time.Second
				}
				st.Ports[p.ID] = p
				for _, lb := range svc.LoadBalancerIPs {
					if lb.Is4() != is4 {
						continue
					}
					q := &Port{ID: lbPortID(p.ID, lb), Service: p.Service, PortName: p.PortName, VIP: lb, Proto: p.Proto, Port: p.Port,
						Affinity: p.Affinity, LoadBalancer: true, Masquerade: true, PodBackends: p.Backends}
					external := fam
					if svc.ExternalTrafficPolicy == v1.TrafficPolicyLocal {
						external = endpoints.Local(fam, node.Name)
						q.Masquerade, q.DropIfEmpty = false, len(fam) > 0
					}
					q.Backends = backends(external)
					st.Ports[q.ID] = q
				}
			}
		}
	}
	sort.Slice(st.Endpoints, func(i, j int) bool { return KeyLess(st.Endpoints[i], st.Endpoints[j]) })
	return st
}

func vipOf(svc *v1.Service, is4 bool) netip.Addr {
	for _, a := range svc.ClusterIPs {
		if a.Is4() == is4 {
			return a
		}
	}
	return netip.Addr{}
}

func backends(eps []v1.Endpoint) []Backend {
	out := make([]Backend, 0, len(eps))
	seen := map[Backend]bool{}
	for _, e := range eps {
		b := Backend{IP: e.IP, Port: uint16(e.Port)}
		if !seen[b] {
			seen[b] = true
			out = append(out, b)
		}
	}
	return out
}

var idEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// portID names a service port's objects: short (nftables names are at most 256 bytes,
// and shorter is faster to send), stable, and different for every service/port/family.
func portID(svc *v1.Service, sp v1.ServicePort, is4 bool) string {
	fam := "6"
	if is4 {
		fam = "4"
	}
	h := sha256.Sum256([]byte(svc.Namespace + "/" + svc.Name + "/" + sp.Name + "/" + sp.Protocol + "/" + fam))
	return strings.ToLower(idEncoding.EncodeToString(h[:]))[:13] + fam
}

// lbPortID names a service port's objects for one of its load balancer addresses.
func lbPortID(portID string, lb netip.Addr) string {
	h := sha256.Sum256([]byte(portID + "/lb/" + lb.String()))
	return strings.ToLower(idEncoding.EncodeToString(h[:]))[:13] + portID[len(portID)-1:]
}

// BackendID names a backend's objects within a port (affinity sets and chains).
func BackendID(p *Port, b Backend) string {
	h := sha256.Sum256([]byte(p.ID + "/" + b.String()))
	return strings.ToLower(idEncoding.EncodeToString(h[:]))[:13]
}

// Equal reports whether two ports program the same objects.
func (p *Port) Equal(q *Port) bool {
	if p.ID != q.ID || p.VIP != q.VIP || p.Proto != q.Proto || p.Port != q.Port || p.NodePort != q.NodePort ||
		p.ExternalLocal != q.ExternalLocal || p.Affinity != q.Affinity ||
		p.LoadBalancer != q.LoadBalancer || p.Masquerade != q.Masquerade || p.DropIfEmpty != q.DropIfEmpty ||
		len(p.Backends) != len(q.Backends) || len(p.NodePortBackends) != len(q.NodePortBackends) {
		return false
	}
	for i := range p.Backends {
		if p.Backends[i] != q.Backends[i] {
			return false
		}
	}
	for i := range p.NodePortBackends {
		if p.NodePortBackends[i] != q.NodePortBackends[i] {
			return false
		}
	}
	return slices.Equal(p.PodBackends, q.PodBackends)
}
