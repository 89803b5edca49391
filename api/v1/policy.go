package v1

import (
	"fmt"
	"net/netip"
	"time"
)

// Policy types.
const (
	PolicyTypeIngress = "Ingress"
	PolicyTypeEgress  = "Egress"
)

// NamespaceNameLabel is the label every namespace carries with its own name (Kubernetes
// sets it too), so a namespaceSelector can pick namespaces by name.
const NamespaceNameLabel = "kubernetes.io/metadata.name"

// NetworkPolicy is a Kubernetes networking.k8s.io/v1 NetworkPolicy, field for field.
type NetworkPolicy struct {
	Name        string        `json:"name"`
	Namespace   string        `json:"namespace"`
	PodSelector LabelSelector `json:"podSelector"`
	PolicyTypes []string      `json:"policyTypes,omitempty"`
	Ingress     []IngressRule `json:"ingress,omitempty"`
	Egress      []EgressRule  `json:"egress,omitempty"`
}

// IngressRule allows traffic from any of From (all sources when empty) to any of Ports
// (every port when empty).
type IngressRule struct {
	From  []PolicyPeer `json:"from,omitempty"`
	Ports []PolicyPort `json:"ports,omitempty"`
}

// EgressRule allows traffic to any of To (every destination when empty) on any of Ports.
type EgressRule struct {
	To    []PolicyPeer `json:"to,omitempty"`
	Ports []PolicyPort `json:"ports,omitempty"`
}

// PolicyPeer is pods (by pod and/or namespace selector) or an address block.
type PolicyPeer struct {
	PodSelector       *LabelSelector `json:"podSelector,omitempty"`
	NamespaceSelector *LabelSelector `json:"namespaceSelector,omitempty"`
	IPBlock           *IPBlock       `json:"ipBlock,omitempty"`
}

// IPBlock is a CIDR minus exceptions inside it.
type IPBlock struct {
	CIDR   netip.Prefix   `json:"cidr"`
	Except []netip.Prefix `json:"except,omitempty"`
}

// PolicyPort is a protocol (TCP when empty) and a port: a number (with EndPort, a range),
// a pod port's name, or none (every port).
type PolicyPort struct {
	Protocol string `json:"protocol,omitempty"`
	Port     int    `json:"port,omitempty"`
	PortName string `json:"portName,omitempty"`
	EndPort  int    `json:"endPort,omitempty"`
}

// LabelSelector selects by labels; the empty selector selects everything.
type LabelSelector struct {
	MatchLabels      map[string]string          `json:"matchLabels,omitempty"`
	MatchExpressions []LabelSelectorRequirement `json:"matchExpressions,omitempty"`
}

// LabelSelectorRequirement is one expression: In, NotIn, Exists, DoesNotExist.
type LabelSelectorRequirement struct {
	Key      string   `json:"key"`
	Operator string   `json:"operator"`
	Values   []string `json:"values,omitempty"`
}

// Matches reports whether labels satisfy the selector.
func (s LabelSelector) Matches(labels map[string]string) bool {
	for k, v := range s.MatchLabels {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	for _, e := range s.MatchExpressions {
		v, has := labels[e.Key]
		in := false
		for _, x := range e.Values {
			in = in || (has && v == x)
		}
		switch e.Operator {
		case "In":
			if !in {
				return false
			}
		case "NotIn":
			if in {
				return false
			}
		case "Exists":
			if !has {
				return false
			}
		case "DoesNotExist":
			if has {
				return false
			}
		default:
			return false // refused by Validate; never matches
		}
	}
	return true
}

// Types are the directions the policy governs: as given, or Ingress plus Egress when the
// policy has egress rules (Kubernetes' default).
func (p *NetworkPolicy) Types() (ingress, egress bool) {
	if len(p.PolicyTypes) == 0 {
		return true, len(p.Egress) > 0
	}
	for _, t := range p.PolicyTypes {
		ingress = ingress || t == PolicyTypeIngress
		egress = egress || t == PolicyTypeEgress
	}
	return ingress, egress
}

// Key is "namespace/name".
func (p *NetworkPolicy) Key() string { return p.Namespace + "/" + p.Name }

// Validate checks a policy, naming the field at fault.
func (p *NetworkPolicy) Validate() error {
	if err := ValidName("metadata.name", p.Name); err != nil {
		return err
	}
	if err := ValidName("metadata.namespace", p.Namespace); err != nil {
		return err
	}
	if err := p.PodSelector.validate("spec.podSelector"); err != nil {
		return err
	}
	for i, t := range p.PolicyTypes {
		if t != PolicyTypeIngress && t != PolicyTypeEgress {
			return fmt.Errorf("spec.policyTypes[%d]: %q: use Ingress or Egress", i, t)
		}
	}
	for i, r := range p.Ingress {
		if err := validateRule(fmt.Sprintf("spec.ingress[%d]", i), "from", r.From, r.Ports); err != nil {
			return err
		}
	}
	for i, r := range p.Egress {
		if err := validateRule(fmt.Sprintf("spec.egress[%d]", i), "to", r.To, r.Ports); err != nil {
			return err
		}
	}
	return nil
}

func validateRule(path, peers string, ps []PolicyPeer, ports []PolicyPort) error {
	for i, peer := range ps {
		at := fmt.Sprintf("%s.%s[%d]", path, peers, i)
		if peer.IPBlock != nil {
			if peer.PodSelector != nil || peer.NamespaceSelector != nil {
				return fmt.Errorf("%s: ipBlock cannot be combined with a selector", at)
			}
			b := peer.IPBlock
			if !b.CIDR.IsValid() {
				return fmt.Errorf("%s.ipBlock.cidr: required", at)
			}
			for j, e := range b.Except {
				if e.Addr().Is4() != b.CIDR.Addr().Is4() || e.Bits() < b.CIDR.Bits() || !b.CIDR.Contains(e.Addr()) {
					return fmt.Errorf("%s.ipBlock.except[%d]: %s is not inside %s", at, j, e, b.CIDR)
				}
			}
			continue
		}
		if peer.PodSelector == nil && peer.NamespaceSelector == nil {
			return fmt.Errorf("%s: one of podSelector, namespaceSelector or ipBlock is required", at)
		}
		for name, sel := range map[string]*LabelSelector{"podSelector": peer.PodSelector, "namespaceSelector": peer.NamespaceSelector} {
			if sel != nil {
				if err := sel.validate(at + "." + name); err != nil {
					return err
				}
			}
		}
	}
	for i, pt := range ports {
		at := fmt.Sprintf("%s.ports[%d]", path, i)
		switch pt.Protocol {
		case "", ProtocolTCP, ProtocolUDP, ProtocolSCTP:
		default:
			return fmt.Errorf("%s.protocol: %q: use TCP, UDP or SCTP", at, pt.Protocol)
		}
		if pt.Port < 0 || pt.Port > 65535 {
			return fmt.Errorf("%s.port: %d is outside 1..65535", at, pt.Port)
		}
		if pt.PortName != "" && pt.Port != 0 {
			return fmt.Errorf("%s.port: a number or a name, not both", at)
		}
		if pt.EndPort != 0 {
			if pt.Port == 0 {
				return fmt.Errorf("%s.endPort: needs a numeric port", at)
			}
			if pt.EndPort < pt.Port || pt.EndPort > 65535 {
				return fmt.Errorf("%s.endPort: %d must be from port (%d) to 65535", at, pt.EndPort, pt.Port)
			}
		}
	}
	return nil
}

func (s LabelSelector) validate(path string) error {
	for i, e := range s.MatchExpressions {
		at := fmt.Sprintf("%s.matchExpressions[%d]", path, i)
		switch e.Operator {
		case "In", "NotIn":
			if len(e.Values) == 0 {
				return fmt.Errorf("%s.values: %s needs at least one value", at, e.Operator)
			}
		case "Exists", "DoesNotExist":
			if len(e.Values) > 0 {
				return fmt.Errorf("%s.values: %s takes no values", at, e.Operator)
			}
		default:
			return fmt.Errorf("%s.operator: %q: use In, NotIn, Exists or DoesNotExist", at, e.Operator)
		}
		if e.Key == "" {
			return fmt.Errorf("%s.key: required", at)
		}
	}
	return nil
}

// Namespace carries a namespace's labels (for namespaceSelector).
type Namespace struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels,omitempty"`
}

// LabelsWithName are the namespace's labels plus NamespaceNameLabel.
func (n Namespace) LabelsWithName() map[string]string {
	out := map[string]string{NamespaceNameLabel: n.Name}
	for k, v := range n.Labels {
		out[k] = v
	}
	return out
}

// PolicyDrop is a packet a node dropped because no network policy allowed it, or because
// a pod sent it from an address or MAC not its own.
type PolicyDrop struct {
	Seq       uint64    `json:"seq"`
	Time      time.Time `json:"time"`
	Pod       string    `json:"pod"`       // namespace/name of the policed pod
	Direction string    `json:"direction"` // ingress or egress
	Reason    string    `json:"reason"`    // "policy" or "spoofed source"
	// Policies select the pod in that direction (namespace/name): none of them allowed it.
	Policies []string   `json:"policies,omitempty"`
	Protocol string     `json:"protocol"`
	Src      netip.Addr `json:"src"`
	Dst      netip.Addr `json:"dst"`
	SrcPort  uint16     `json:"srcPort,omitempty"`
	DstPort  uint16     `json:"dstPort,omitempty"`
}
