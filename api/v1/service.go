package v1

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strings"
	"time"
)

// Service types, as in Kubernetes.
const (
	ServiceTypeClusterIP = "ClusterIP"
	ServiceTypeNodePort  = "NodePort"
)

// Traffic policies, as in Kubernetes.
const (
	TrafficPolicyCluster = "Cluster"
	TrafficPolicyLocal   = "Local"
)

// Session affinity, as in Kubernetes.
const (
	AffinityNone     = "None"
	AffinityClientIP = "ClientIP"
	// DefaultAffinityTimeout is Kubernetes' default for ClientIP affinity, in seconds.
	DefaultAffinityTimeout = 10800
)

// Protocols a service port carries.
const (
	ProtocolTCP  = "TCP"
	ProtocolUDP  = "UDP"
	ProtocolSCTP = "SCTP"
)

// Default NodePort range, as in Kubernetes.
const (
	NodePortMin = 30000
	NodePortMax = 32767
)

// ClusterIPNone marks a headless service.
const ClusterIPNone = "None"

// Service is a stable virtual address in front of a set of endpoints, with Kubernetes
// Service semantics: a source of Kubernetes Services can fill it unchanged.
type Service struct {
	Name       string       `json:"name"`
	Namespace  string       `json:"namespace"`
	Type       string       `json:"type"`                 // ClusterIP (default) or NodePort
	ClusterIP  string       `json:"clusterIP,omitempty"`  // "", an address, or None (headless)
	ClusterIPs []netip.Addr `json:"clusterIPs,omitempty"` // allocated, one per family
	// IPFamilies asked for when allocating: "IPv4", "IPv6" or both (dual-stack).
	IPFamilies []string          `json:"ipFamilies,omitempty"`
	Ports      []ServicePort     `json:"ports"`
	Selector   map[string]string `json:"selector,omitempty"`
	// Endpoints listed by hand (IP:port), for backends that are not pods: host-network
	// addresses, or anything reachable from the nodes. Exclusive with Selector.
	Endpoints []netip.AddrPort `json:"endpoints,omitempty"`
	// Resolved are endpoints someone else derived (Kubernetes' EndpointSlice controller,
	// in Kubernetes mode), by service port name; when not nil they are the service's
	// endpoints, and Selector is not evaluated by weft.
	Resolved map[string][]Endpoint `json:"resolved,omitempty"`
	// ChangedAt is when the change behind Resolved's latest version began (the
	// EndpointSlice controller's last-change-trigger-time), for the proxy's programming
	// latency; zero when unknown.
	ChangedAt time.Time `json:"-"`
	// LoadBalancerIPs are the addresses a load balancer gave a Kubernetes LoadBalancer
	// service (status.loadBalancer.ingress): the proxy serves them as it serves node
	// ports (externalTrafficPolicy), and fabric bgp announces them with the service
	// addresses. Only the Kubernetes source sets them.
	LoadBalancerIPs       []netip.Addr `json:"loadBalancerIPs,omitempty"`
	SessionAffinity       string       `json:"sessionAffinity,omitempty"`
	AffinityTimeout       int          `json:"affinityTimeoutSeconds,omitempty"`
	InternalTrafficPolicy string       `json:"internalTrafficPolicy,omitempty"`
	ExternalTrafficPolicy string       `json:"externalTrafficPolicy,omitempty"`
}

// ServicePort is one port of a service.
type ServicePort struct {
	Name     string `json:"name,omitempty"`
	Protocol string `json:"protocol"`
	Port     int    `json:"port"`
	// TargetPort is the endpoints' port: a number, or the name of a pod port. 0 and "":
	// the same as Port.
	TargetPort     int    `json:"targetPort,omitempty"`
	TargetPortName string `json:"targetPortName,omitempty"`
	NodePort       int    `json:"nodePort,omitempty"`
}

// Headless reports whether the service has no virtual address (endpoints only).
func (s *Service) Headless() bool { return s.ClusterIP == ClusterIPNone }

// Key is "namespace/name".
func (s *Service) Key() string { return s.Namespace + "/" + s.Name }

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// ValidName checks a name the way Kubernetes checks a DNS-1035 label (services) or a
// DNS-1123 label (namespaces): lower case letters, digits and '-', at most 63.
func ValidName(what, name string) error {
	if !dnsLabel.MatchString(name) {
		return fmt.Errorf("%s %q: use at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit", what, name)
	}
	return nil
}

// Defaults fills what Kubernetes fills when a field is left out.
func (s *Service) Defaults() {
	if s.Namespace == "" {
		s.Namespace = "default"
	}
	if s.Type == "" {
		s.Type = ServiceTypeClusterIP
	}
	if s.SessionAffinity == "" {
		s.SessionAffinity = AffinityNone
	}
	if s.SessionAffinity == AffinityClientIP && s.AffinityTimeout == 0 {
		s.AffinityTimeout = DefaultAffinityTimeout
	}
	if s.InternalTrafficPolicy == "" {
		s.InternalTrafficPolicy = TrafficPolicyCluster
	}
	if s.ExternalTrafficPolicy == "" && s.Type == ServiceTypeNodePort {
		s.ExternalTrafficPolicy = TrafficPolicyCluster
	}
	for i := range s.Ports {
		if s.Ports[i].Protocol == "" {
			s.Ports[i].Protocol = ProtocolTCP
		}
	}
}

// Validate checks a service after Defaults; the message names the field at fault.
func (s *Service) Validate() error {
	if err := ValidName("name", s.Name); err != nil {
		return err
	}
	if err := ValidName("namespace", s.Namespace); err != nil {
		return err
	}
	switch s.Type {
	case ServiceTypeClusterIP, ServiceTypeNodePort:
	default:
		return fmt.Errorf("type %q: use ClusterIP or NodePort", s.Type)
	}
	if s.Resolved != nil {
		return errors.New("resolved: set only from a Kubernetes API's EndpointSlices, never stored")
	}
	if s.LoadBalancerIPs != nil {
		return errors.New("loadBalancerIPs: set only from a Kubernetes API's LoadBalancer services, never stored")
	}
	if s.Headless() && s.Type != ServiceTypeClusterIP {
		return fmt.Errorf("clusterIP None (headless) needs type ClusterIP")
	}
	if s.ClusterIP != "" && !s.Headless() {
		if _, err := netip.ParseAddr(s.ClusterIP); err != nil {
			return fmt.Errorf("clusterIP %q: not an address or None", s.ClusterIP)
		}
	}
	for _, f := range s.IPFamilies {
		if f != "IPv4" && f != "IPv6" {
			return fmt.Errorf("ipFamilies: %q is neither IPv4 nor IPv6", f)
		}
	}
	if len(s.IPFamilies) == 2 && s.IPFamilies[0] == s.IPFamilies[1] {
		return fmt.Errorf("ipFamilies: %s twice", s.IPFamilies[0])
	}
	if len(s.IPFamilies) > 2 {
		return fmt.Errorf("ipFamilies: at most one of each family")
	}
	if len(s.Ports) == 0 && !s.Headless() {
		return fmt.Errorf("ports: a service needs at least one (only a headless one may have none)")
	}
	names := map[string]bool{}
	seen := map[string]bool{}
	for i, p := range s.Ports {
		at := fmt.Sprintf("ports[%d]", i)
		if len(s.Ports) > 1 && p.Name == "" {
			return fmt.Errorf("%s.name: required when a service has several ports", at)
		}
		if p.Name != "" {
			if err := ValidName(at+".name", p.Name); err != nil {
				return err
			}
			if names[p.Name] {
				return fmt.Errorf("%s.name %q: used twice", at, p.Name)
			}
			names[p.Name] = true
		}
		switch p.Protocol {
		case ProtocolTCP, ProtocolUDP, ProtocolSCTP:
		default:
			return fmt.Errorf("%s.protocol %q: use TCP, UDP or SCTP", at, p.Protocol)
		}
		if p.Port < 1 || p.Port > 65535 {
			return fmt.Errorf("%s.port %d: outside 1..65535", at, p.Port)
		}
		if p.TargetPort < 0 || p.TargetPort > 65535 {
			return fmt.Errorf("%s.targetPort %d: outside 1..65535", at, p.TargetPort)
		}
		if p.TargetPortName != "" {
			if p.TargetPort != 0 {
				return fmt.Errorf("%s.targetPort: a number or a name, not both", at)
			}
			if err := ValidName(at+".targetPort", p.TargetPortName); err != nil {
				return err
			}
		}
		if p.NodePort != 0 {
			if s.Type != ServiceTypeNodePort {
				return fmt.Errorf("%s.nodePort: only a NodePort service has one", at)
			}
			if p.NodePort < NodePortMin || p.NodePort > NodePortMax {
				return fmt.Errorf("%s.nodePort %d: outside %d..%d", at, p.NodePort, NodePortMin, NodePortMax)
			}
		}
		k := fmt.Sprintf("%s/%d", p.Protocol, p.Port)
		if seen[k] {
			return fmt.Errorf("%s: %s port %d is listed twice", at, p.Protocol, p.Port)
		}
		seen[k] = true
	}
	if len(s.Selector) > 0 && len(s.Endpoints) > 0 {
		return fmt.Errorf("selector and endpoints: use one or the other")
	}
	for k := range s.Selector {
		if k == "" {
			return fmt.Errorf("selector: empty label key")
		}
	}
	for _, ep := range s.Endpoints {
		if !ep.IsValid() || ep.Port() == 0 {
			return fmt.Errorf("endpoints: %s is not IP:PORT", ep)
		}
	}
	switch s.SessionAffinity {
	case AffinityNone:
	case AffinityClientIP:
		if s.AffinityTimeout < 1 || s.AffinityTimeout > 86400 {
			return fmt.Errorf("sessionAffinityConfig.clientIP.timeoutSeconds %d: outside 1..86400", s.AffinityTimeout)
		}
	default:
		return fmt.Errorf("sessionAffinity %q: use None or ClientIP", s.SessionAffinity)
	}
	for what, v := range map[string]string{"internalTrafficPolicy": s.InternalTrafficPolicy, "externalTrafficPolicy": s.ExternalTrafficPolicy} {
		if v != "" && v != TrafficPolicyCluster && v != TrafficPolicyLocal {
			return fmt.Errorf("%s %q: use Cluster or Local", what, v)
		}
	}
	if s.ExternalTrafficPolicy != "" && s.Type != ServiceTypeNodePort {
		return fmt.Errorf("externalTrafficPolicy: only for NodePort services")
	}
	return nil
}

// Selects reports whether the service's selector matches labels. An empty selector
// selects nothing (the endpoints are managed by hand), as in Kubernetes.
func (s *Service) Selects(labels map[string]string) bool {
	if len(s.Selector) == 0 {
		return false
	}
	for k, v := range s.Selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// SelectorString is the selector as k=v,... in key order.
func (s *Service) SelectorString() string {
	keys := make([]string, 0, len(s.Selector))
	for k := range s.Selector {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + s.Selector[k]
	}
	return strings.Join(parts, ",")
}

// Pod is a pod as the cluster sees it: published by the weftd of its node, withdrawn with
// that node's lease.
type Pod struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace"`
	Node        string            `json:"node"`
	ContainerID string            `json:"containerID"`
	IPs         []netip.Addr      `json:"ips"`
	Labels      map[string]string `json:"labels,omitempty"`
	// Ports are the pod's named ports, for services whose targetPort is a name.
	Ports []NamedPort `json:"ports,omitempty"`
	// Ready: the pod takes new connections. Terminating: it is going away; its existing
	// connections go on but it gets no new ones.
	Ready       bool `json:"ready"`
	Terminating bool `json:"terminating,omitempty"`
}

// NamedPort is a named container port.
type NamedPort struct {
	Name     string `json:"name"`
	Port     int    `json:"port"`
	Protocol string `json:"protocol"`
}

// Endpoint is one backend address of a service port.
type Endpoint struct {
	IP          netip.Addr `json:"ip"`
	Port        int        `json:"port"`
	Node        string     `json:"node,omitempty"` // "" for endpoints listed by hand
	Pod         string     `json:"pod,omitempty"`  // namespace/name
	Ready       bool       `json:"ready"`
	Terminating bool       `json:"terminating,omitempty"`
}

// String is IP:port.
func (e Endpoint) String() string { return netip.AddrPortFrom(e.IP, uint16(e.Port)).String() }
