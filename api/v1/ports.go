// Package v1 holds weft's resource types. Standard library only.
package v1

import (
	"fmt"
	"net/netip"
	"strings"
)

// PortMapping publishes a pod port on the node (the CNI portMappings capability).
type PortMapping struct {
	HostPort      int        `json:"hostPort"`
	ContainerPort int        `json:"containerPort"`
	Protocol      string     `json:"protocol"`        // tcp or udp
	HostIP        netip.Addr `json:"hostIP,omitzero"` // empty: every local address
}

// Validate checks one mapping and normalises its protocol to lower case (default tcp).
func (p *PortMapping) Validate() error {
	p.Protocol = strings.ToLower(p.Protocol)
	if p.Protocol == "" {
		p.Protocol = "tcp"
	}
	if p.Protocol != "tcp" && p.Protocol != "udp" {
		return fmt.Errorf("port mapping protocol %q: use tcp or udp", p.Protocol)
	}
	for name, v := range map[string]int{"hostPort": p.HostPort, "containerPort": p.ContainerPort} {
		if v < 1 || v > 65535 {
			return fmt.Errorf("port mapping %s %d is outside 1..65535", name, v)
		}
	}
	if p.HostIP.IsValid() && p.HostIP.IsUnspecified() {
		p.HostIP = netip.Addr{}
	}
	return nil
}

// Clashes reports whether two mappings claim the same host port.
func (p PortMapping) Clashes(q PortMapping) bool {
	if p.HostPort != q.HostPort || p.Protocol != q.Protocol {
		return false
	}
	return !p.HostIP.IsValid() || !q.HostIP.IsValid() || p.HostIP == q.HostIP
}

func (p PortMapping) String() string {
	host := "*"
	if p.HostIP.IsValid() {
		host = p.HostIP.String()
	}
	return fmt.Sprintf("%s:%d/%s->%d", host, p.HostPort, p.Protocol, p.ContainerPort)
}
