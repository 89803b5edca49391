package manifest

import (
	"fmt"
	"net/netip"

	v1 "github.com/weftnet/weft/api/v1"
)

// Kubernetes networking.k8s.io/v1 NetworkPolicy, as written: every field weft enforces,
// nothing else (an unknown field is refused by path).

type k8sPolicySpec struct {
	PodSelector k8sSelector      `json:"podSelector"`
	PolicyTypes []string         `json:"policyTypes"`
	Ingress     []k8sPolicyRule  `json:"ingress"`
	Egress      []k8sPolicyRuleE `json:"egress"`
}

type k8sPolicyRule struct {
	From  []k8sPeer       `json:"from"`
	Ports []k8sPolicyPort `json:"ports"`
}

type k8sPolicyRuleE struct {
	To    []k8sPeer       `json:"to"`
	Ports []k8sPolicyPort `json:"ports"`
}

type k8sPeer struct {
	PodSelector       *k8sSelector `json:"podSelector"`
	NamespaceSelector *k8sSelector `json:"namespaceSelector"`
	IPBlock           *struct {
		CIDR   string   `json:"cidr"`
		Except []string `json:"except"`
	} `json:"ipBlock"`
}

type k8sSelector struct {
	MatchLabels      map[string]string `json:"matchLabels"`
	MatchExpressions []struct {
		Key      string   `json:"key"`
		Operator string   `json:"operator"`
		Values   []string `json:"values"`
	} `json:"matchExpressions"`
}

type k8sPolicyPort struct {
	Protocol string       `json:"protocol"`
	Port     *intOrString `json:"port"`
	EndPort  int          `json:"endPort"`
}

func (s k8sSelector) toV1() v1.LabelSelector {
	out := v1.LabelSelector{MatchLabels: s.MatchLabels}
	for _, e := range s.MatchExpressions {
		out.MatchExpressions = append(out.MatchExpressions, v1.LabelSelectorRequirement{Key: e.Key, Operator: e.Operator, Values: e.Values})
	}
	return out
}

func parsePolicy(js []byte) (*v1.NetworkPolicy, error) {
	obj, meta, err := objectMeta(js, "NetworkPolicy")
	if err != nil {
		return nil, err
	}
	where := "NetworkPolicy " + meta.Name
	var spec k8sPolicySpec
	if len(obj.Spec) > 0 {
		if err := strict(obj.Spec, &spec, where+" spec"); err != nil {
			return nil, err
		}
	}
	p := &v1.NetworkPolicy{Name: meta.Name, Namespace: meta.Namespace, PodSelector: spec.PodSelector.toV1(), PolicyTypes: spec.PolicyTypes}
	if p.Namespace == "" {
		p.Namespace = "default"
	}
	for i, r := range spec.Ingress {
		from, err := peers(r.From, fmt.Sprintf("%s: spec.ingress[%d].from", where, i))
		if err != nil {
			return nil, err
		}
		p.Ingress = append(p.Ingress, v1.IngressRule{From: from, Ports: policyPorts(r.Ports)})
	}
	for i, r := range spec.Egress {
		to, err := peers(r.To, fmt.Sprintf("%s: spec.egress[%d].to", where, i))
		if err != nil {
			return nil, err
		}
		p.Egress = append(p.Egress, v1.EgressRule{To: to, Ports: policyPorts(r.Ports)})
	}
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	return p, nil
}

func peers(in []k8sPeer, where string) ([]v1.PolicyPeer, error) {
	var out []v1.PolicyPeer
	for i, k := range in {
		var p v1.PolicyPeer
		if k.PodSelector != nil {
			s := k.PodSelector.toV1()
			p.PodSelector = &s
		}
		if k.NamespaceSelector != nil {
			s := k.NamespaceSelector.toV1()
			p.NamespaceSelector = &s
		}
		if b := k.IPBlock; b != nil {
			cidr, err := netip.ParsePrefix(b.CIDR)
			if err != nil {
				return nil, fmt.Errorf("%s[%d].ipBlock.cidr: %w", where, i, err)
			}
			p.IPBlock = &v1.IPBlock{CIDR: cidr.Masked()}
			for j, e := range b.Except {
				ep, err := netip.ParsePrefix(e)
				if err != nil {
					return nil, fmt.Errorf("%s[%d].ipBlock.except[%d]: %w", where, i, j, err)
				}
				p.IPBlock.Except = append(p.IPBlock.Except, ep.Masked())
			}
		}
		out = append(out, p)
	}
	return out, nil
}

func policyPorts(in []k8sPolicyPort) []v1.PolicyPort {
	var out []v1.PolicyPort
	for _, k := range in {
		p := v1.PolicyPort{Protocol: k.Protocol, EndPort: k.EndPort}
		if p.Protocol == "" {
			p.Protocol = v1.ProtocolTCP
		}
		if k.Port != nil {
			p.Port, p.PortName = k.Port.Int, k.Port.Str
		}
		out = append(out, p)
	}
	return out
}
