// Package policy decides, from the model alone, whether a connection is allowed under
// Kubernetes NetworkPolicy semantics, and by which policies: a pod selected by no policy
// in a direction is open in it; selected, it is default-deny there and a connection must
// match a rule of one of the selecting policies (rules and policies are unions); a
// connection needs both its source's egress and its destination's ingress to allow it.
// Replies of allowed connections are not decisions (the enforcement is stateful). Pure:
// `weft policy explain` and the truth-table tests use it; the nftables enforcement
// renders the same decisions.
package policy

import (
	"net/netip"
	"slices"
	"sort"

	v1 "github.com/weftnet/weft/api/v1"
)

// Endpoint is one end of a connection: a pod of the cluster, or an address outside it
// (Pod nil).
type Endpoint struct {
	Pod *v1.Pod
	IP  netip.Addr
}

// Model is the cluster's policies with its namespaces' labels.
type Model struct {
	policies   []v1.NetworkPolicy
	namespaces map[string]map[string]string
}

// New builds a model. Namespaces not listed have only their name label.
func New(policies []v1.NetworkPolicy, namespaces []v1.Namespace) *Model {
	m := &Model{policies: append([]v1.NetworkPolicy(nil), policies...), namespaces: map[string]map[string]string{}}
	sort.Slice(m.policies, func(i, j int) bool { return m.policies[i].Key() < m.policies[j].Key() })
	for _, n := range namespaces {
		m.namespaces[n.Name] = n.LabelsWithName()
	}
	return m
}

func (m *Model) namespaceLabels(ns string) map[string]string {
	if l, ok := m.namespaces[ns]; ok {
		return l
	}
	return v1.Namespace{Name: ns}.LabelsWithName()
}

// Side is one direction's decision: the source's egress or the destination's ingress.
type Side struct {
	// Selecting are the policies that select the pod in this direction; none: open.
	Selecting []string `json:"selecting,omitempty"`
	// AllowedBy are the selecting policies with a rule that matches the connection.
	AllowedBy []string `json:"allowedBy,omitempty"`
	Allowed   bool     `json:"allowed"`
}

// Verdict is a connection's decision.
type Verdict struct {
	Allowed bool `json:"allowed"`
	Egress  Side `json:"egress"`
	Ingress Side `json:"ingress"`
	// Loopback: a pod talking to itself, which no policy governs.
	Loopback bool `json:"loopback,omitempty"`
}

// Decide says whether a new connection from src to dst on proto/port is allowed.
func (m *Model) Decide(src, dst Endpoint, proto string, port int) Verdict {
	if proto == "" {
		proto = v1.ProtocolTCP
	}
	if src.Pod != nil && dst.Pod != nil && src.Pod.Namespace == dst.Pod.Namespace && src.Pod.Name == dst.Pod.Name {
		return Verdict{Allowed: true, Loopback: true, Egress: Side{Allowed: true}, Ingress: Side{Allowed: true}}
	}
	v := Verdict{Egress: Side{Allowed: true}, Ingress: Side{Allowed: true}}
	if src.Pod != nil {
		v.Egress = m.side(src.Pod, false, func(p *v1.NetworkPolicy) bool {
			for _, r := range p.Egress {
				if m.peersMatch(r.To, dst, p.Namespace) && portsMatch(r.Ports, proto, port, dst.Pod) {
					return true
				}
			}
			return false
		})
	}
	if dst.Pod != nil {
		v.Ingress = m.side(dst.Pod, true, func(p *v1.NetworkPolicy) bool {
			for _, r := range p.Ingress {
				if m.peersMatch(r.From, src, p.Namespace) && portsMatch(r.Ports, proto, port, dst.Pod) {
					return true
				}
			}
			return false
		})
	}
	v.Allowed = v.Egress.Allowed && v.Ingress.Allowed
	return v
}

// Selecting lists the policies that select pod for ingress and for egress.
func (m *Model) Selecting(pod *v1.Pod) (ingress, egress []string) {
	for i := range m.policies {
		p := &m.policies[i]
		if p.Namespace != pod.Namespace || !p.PodSelector.Matches(pod.Labels) {
			continue
		}
		in, out := p.Types()
		if in {
			ingress = append(ingress, p.Key())
		}
		if out {
			egress = append(egress, p.Key())
		}
	}
	return ingress, egress
}

func (m *Model) side(pod *v1.Pod, ingress bool, allows func(*v1.NetworkPolicy) bool) Side {
	var s Side
	for i := range m.policies {
		p := &m.policies[i]
		if p.Namespace != pod.Namespace || !p.PodSelector.Matches(pod.Labels) {
			continue
		}
		in, out := p.Types()
		if (ingress && !in) || (!ingress && !out) {
			continue
		}
		s.Selecting = append(s.Selecting, p.Key())
		if allows(p) {
			s.AllowedBy = append(s.AllowedBy, p.Key())
		}
	}
	s.Allowed = len(s.Selecting) == 0 || len(s.AllowedBy) > 0
	return s
}

// peersMatch: no peers match everything; else any peer matching is enough.
func (m *Model) peersMatch(peers []v1.PolicyPeer, ep Endpoint, policyNS string) bool {
	if len(peers) == 0 {
		return true
	}
	for _, peer := range peers {
		if m.peerMatches(peer, ep, policyNS) {
			return true
		}
	}
	return false
}

func (m *Model) peerMatches(peer v1.PolicyPeer, ep Endpoint, policyNS string) bool {
	if b := peer.IPBlock; b != nil {
		return InBlock(*b, ep.IP)
	}
	if ep.Pod == nil {
		return false // selectors pick pods only
	}
	if peer.NamespaceSelector != nil {
		if !peer.NamespaceSelector.Matches(m.namespaceLabels(ep.Pod.Namespace)) {
			return false
		}
	} else if ep.Pod.Namespace != policyNS {
		return false
	}
	return peer.PodSelector == nil || peer.PodSelector.Matches(ep.Pod.Labels)
}

// InBlock reports whether a is in the block's CIDR and in none of its exceptions.
func InBlock(b v1.IPBlock, a netip.Addr) bool {
	if !a.IsValid() || !b.CIDR.Contains(a.Unmap()) {
		return false
	}
	return !slices.ContainsFunc(b.Except, func(e netip.Prefix) bool { return e.Contains(a.Unmap()) })
}

// portsMatch: no ports match every port; a named port is looked up on the destination pod
// (the policy-selected pod for ingress, the peer for egress), so it matches nothing that
// is not a pod.
func portsMatch(ports []v1.PolicyPort, proto string, port int, dst *v1.Pod) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		want := p.Protocol
		if want == "" {
			want = v1.ProtocolTCP
		}
		if want != proto {
			continue
		}
		switch {
		case p.PortName != "":
			if dst != nil && slices.ContainsFunc(dst.Ports, func(np v1.NamedPort) bool {
				npProto := np.Protocol
				if npProto == "" {
					npProto = v1.ProtocolTCP
				}
				return np.Name == p.PortName && np.Port == port && npProto == proto
			}) {
				return true
			}
		case p.Port == 0:
			return true
		case p.EndPort != 0:
			if port >= p.Port && port <= p.EndPort {
				return true
			}
		case port == p.Port:
			return true
		}
	}
	return false
}
