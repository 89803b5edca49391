package policy

import (
	"net/netip"
	"slices"

	v1 "github.com/weftnet/weft/api/v1"
)

// Rules are what a node enforces for one of its pods in one direction, with every
// selector already resolved to addresses: the peers allowed on every protocol and port,
// and the peers allowed on one protocol's port range. A new connection is then one lookup
// per list, whatever the number of policies behind them (the nftables enforcement keys
// its sets on exactly these).
type Rules struct {
	Any   []netip.Prefix `json:"any,omitempty"`
	Ports []PortRule     `json:"ports,omitempty"`
}

// PortRule allows Peer on Proto ports First..Last.
type PortRule struct {
	Peer        netip.Prefix `json:"peer"`
	Proto       string       `json:"proto"`
	First, Last int
}

// PodRules are a pod's rules; a nil direction is open (no policy selects the pod there).
type PodRules struct {
	Ingress *Rules `json:"ingress,omitempty"`
	Egress  *Rules `json:"egress,omitempty"`
}

var everywhere = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}

// Compile resolves the policies selecting pod against every pod of the cluster.
func (m *Model) Compile(pod *v1.Pod, all []v1.Pod) PodRules {
	var out PodRules
	for i := range m.policies {
		p := &m.policies[i]
		if p.Namespace != pod.Namespace || !p.PodSelector.Matches(pod.Labels) {
			continue
		}
		in, eg := p.Types()
		if in {
			if out.Ingress == nil {
				out.Ingress = &Rules{}
			}
			for _, r := range p.Ingress {
				m.addIngress(out.Ingress, r, p.Namespace, pod, all)
			}
		}
		if eg {
			if out.Egress == nil {
				out.Egress = &Rules{}
			}
			for _, r := range p.Egress {
				m.addEgress(out.Egress, r, p.Namespace, all)
			}
		}
	}
	return out
}

// addIngress: the peers are sources; a named port is the policed pod's own.
func (m *Model) addIngress(rs *Rules, r v1.IngressRule, ns string, self *v1.Pod, all []v1.Pod) {
	peers := m.peerPrefixes(r.From, ns, all)
	if len(r.Ports) == 0 {
		rs.Any = append(rs.Any, peers...)
		return
	}
	for _, pt := range r.Ports {
		for _, rg := range portRanges(pt, self) {
			for _, peer := range peers {
				rs.Ports = append(rs.Ports, PortRule{Peer: peer, Proto: rg.Proto, First: rg.First, Last: rg.Last})
			}
		}
	}
}

// addEgress: the peers are destinations; a named port is each destination pod's own, so
// it only ever allows pods.
func (m *Model) addEgress(rs *Rules, r v1.EgressRule, ns string, all []v1.Pod) {
	if len(r.Ports) == 0 {
		rs.Any = append(rs.Any, m.peerPrefixes(r.To, ns, all)...)
		return
	}
	for _, pt := range r.Ports {
		if pt.PortName == "" {
			for _, rg := range portRanges(pt, nil) {
				for _, peer := range m.peerPrefixes(r.To, ns, all) {
					rs.Ports = append(rs.Ports, PortRule{Peer: peer, Proto: rg.Proto, First: rg.First, Last: rg.Last})
				}
			}
			continue
		}
		for i := range all {
			dst := &all[i]
			ep := Endpoint{Pod: dst}
			matched := len(r.To) == 0
			for _, ip := range dst.IPs {
				ep.IP = ip
				matched = matched || m.peersMatch(r.To, ep, ns)
			}
			if !matched {
				continue
			}
			for _, rg := range portRanges(pt, dst) {
				for _, ip := range dst.IPs {
					rs.Ports = append(rs.Ports, PortRule{Peer: netip.PrefixFrom(ip, ip.BitLen()), Proto: rg.Proto, First: rg.First, Last: rg.Last})
				}
			}
		}
	}
}

// peerPrefixes resolves peers: every address when there are none, the addresses of the
// pods selectors pick, and address blocks minus their exceptions.
func (m *Model) peerPrefixes(peers []v1.PolicyPeer, ns string, all []v1.Pod) []netip.Prefix {
	if len(peers) == 0 {
		return everywhere
	}
	var out []netip.Prefix
	for _, peer := range peers {
		if b := peer.IPBlock; b != nil {
			out = append(out, subtract(b.CIDR.Masked(), b.Except)...)
			continue
		}
		for i := range all {
			if m.peerMatches(peer, Endpoint{Pod: &all[i]}, ns) {
				for _, ip := range all[i].IPs {
					out = append(out, netip.PrefixFrom(ip, ip.BitLen()))
				}
			}
		}
	}
	return out
}

// subtract is p minus the exceptions, as a list of prefixes.
func subtract(p netip.Prefix, except []netip.Prefix) []netip.Prefix {
	overlapping := false
	for _, e := range except {
		if e.Bits() <= p.Bits() && e.Contains(p.Addr()) {
			return nil // p is all exception
		}
		overlapping = overlapping || p.Contains(e.Addr())
	}
	if !overlapping || p.Bits() == p.Addr().BitLen() {
		return []netip.Prefix{p}
	}
	lo := netip.PrefixFrom(p.Addr(), p.Bits()+1)
	hiAddr := lo.Addr()
	b := hiAddr.AsSlice()
	b[p.Bits()/8] |= 0x80 >> (p.Bits() % 8)
	hiAddr, _ = netip.AddrFromSlice(b)
	return append(subtract(lo, except), subtract(netip.PrefixFrom(hiAddr, p.Bits()+1), except)...)
}

type portRange struct {
	Proto       string
	First, Last int
}

// portRanges is a policy port as ranges: a number (or number to endPort), every port of
// the protocol, or a named port looked up on pod (nothing when pod is nil or lacks it).
func portRanges(pt v1.PolicyPort, pod *v1.Pod) []portRange {
	proto := pt.Protocol
	if proto == "" {
		proto = v1.ProtocolTCP
	}
	switch {
	case pt.PortName != "":
		if pod == nil {
			return nil
		}
		var out []portRange
		for _, np := range pod.Ports {
			npProto := np.Protocol
			if npProto == "" {
				npProto = v1.ProtocolTCP
			}
			if np.Name == pt.PortName && npProto == proto && !slices.Contains(out, portRange{proto, np.Port, np.Port}) {
				out = append(out, portRange{proto, np.Port, np.Port})
			}
		}
		return out
	case pt.Port == 0:
		return []portRange{{proto, 0, 65535}}
	case pt.EndPort != 0:
		return []portRange{{proto, pt.Port, pt.EndPort}}
	}
	return []portRange{{proto, pt.Port, pt.Port}}
}

// Allows evaluates compiled rules for a peer address, protocol and port.
func (r *Rules) Allows(peer netip.Addr, proto string, port int) bool {
	if r == nil {
		return true
	}
	for _, p := range r.Any {
		if p.Contains(peer) {
			return true
		}
	}
	for _, pr := range r.Ports {
		if pr.Proto == proto && port >= pr.First && port <= pr.Last && pr.Peer.Contains(peer) {
			return true
		}
	}
	return false
}

// NodeDNS is weft's node-local DNS server as network policies see it: the pod Kubernetes
// manifests name when they allow DNS (kube-system, k8s-app=kube-dns, ports dns and
// dns-tcp), at the cluster DNS addresses. It is not a pod of the cluster: the enforcer adds
// it to the pods it resolves peers against, so "allow DNS" policies allow it and policed
// pods reach it only when one does.
func NodeDNS(addrs []netip.Addr) v1.Pod {
	return v1.Pod{Name: "kube-dns", Namespace: "kube-system", IPs: addrs, Ready: true,
		Labels: map[string]string{"k8s-app": "kube-dns"},
		Ports:  []v1.NamedPort{{Name: "dns", Port: 53, Protocol: v1.ProtocolUDP}, {Name: "dns-tcp", Port: 53, Protocol: v1.ProtocolTCP}}}
}
