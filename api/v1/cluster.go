package v1

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
)

// Fabrics connecting nodes.
const (
	FabricVXLAN  = "vxlan"
	FabricDirect = "direct"
	FabricBGP    = "bgp"
)

// DefaultASN is the cluster's AS number when `--asn` is not given (private range, as
// Calico's default).
const DefaultASN = 64512

// ClusterConfig is written once by `weft cluster init` and read by every weftd.
type ClusterConfig struct {
	ClusterCIDRs      []netip.Prefix `json:"clusterCIDRs"`
	NodePrefixLength  int            `json:"nodePrefixLength"` // IPv4 block per node
	NodePrefixLength6 int            `json:"nodePrefixLength6,omitempty"`
	ServiceCIDRs      []netip.Prefix `json:"serviceCIDRs,omitempty"`
	Fabric            string         `json:"fabric"`
	VNI               int            `json:"vni,omitempty"`
	Port              int            `json:"port,omitempty"` // VXLAN UDP port
	DirectRouting     bool           `json:"directRouting,omitempty"`
	MTU               int            `json:"mtu,omitempty"` // 0: underlay minus encapsulation
	Domain            string         `json:"domain,omitempty"`
	DNSTTL            int            `json:"dnsTTL,omitempty"` // seconds, of the cluster domain's records; 0: 5
	BGP               *BGPConfig     `json:"bgp,omitempty"`    // fabric bgp
}

// BGPConfig is the cluster-wide part of fabric bgp.
type BGPConfig struct {
	ASN uint32 `json:"asn"` // every node's AS (iBGP among nodes)
	// NoNodeMesh turns off the iBGP full mesh (and route reflection) among nodes: each
	// node then peers only with its external peers (a top-of-rack router per rack).
	NoNodeMesh bool `json:"noNodeMesh,omitempty"`
	// AnnounceServices sends the service CIDRs (ClusterIP ranges) to external peers.
	AnnounceServices bool `json:"announceServices,omitempty"`
	// LoadBalancerCIDRs: load balancer ingress addresses of services (Kubernetes mode)
	// inside these are announced, each as a host route: by every node under
	// externalTrafficPolicy Cluster, by the nodes with a ready endpoint under Local.
	LoadBalancerCIDRs []netip.Prefix `json:"loadBalancerCIDRs,omitempty"`
	// Peers are external peers given with the configuration: Kubernetes mode has no store
	// to keep them in (`weft bgp peer add --config-file`); with a store they add to its.
	Peers []BGPPeer `json:"peers,omitempty"`
	// CrossSubnetVXLAN carries pod traffic to nodes outside this node's underlay subnet in
	// VXLAN (Calico's CrossSubnet): for a network whose routers do not take BGP routes.
	// Nodes on the same subnet still route to each other over BGP, unencapsulated.
	CrossSubnetVXLAN bool `json:"crossSubnetVXLAN,omitempty"`
}

// Tunnels says whether the fabric uses VXLAN: fabric vxlan, or fabric bgp across subnets.
func (c ClusterConfig) Tunnels() bool {
	return c.Fabric == FabricVXLAN || c.Fabric == FabricBGP && c.BGP != nil && c.BGP.CrossSubnetVXLAN
}

// AnnouncesServiceAddrs says whether service addresses go to peers: the service ranges,
// or load balancer addresses.
func (b *BGPConfig) AnnouncesServiceAddrs() bool {
	return b != nil && (b.AnnounceServices || len(b.LoadBalancerCIDRs) > 0)
}

// ParseClusterConfig reads a configuration file (`weft cluster init --config-file`):
// unknown fields are refused by name, and the result is validated.
func ParseClusterConfig(b []byte) (ClusterConfig, error) {
	var c ClusterConfig
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return c, err
	}
	return c, c.Validate()
}

// Validate checks the fields each on its own (overlaps are netcalc.Check's job).
func (c *ClusterConfig) Validate() error {
	if len(c.ClusterCIDRs) == 0 {
		return fmt.Errorf("clusterCIDRs: at least one is needed")
	}
	for _, p := range c.ClusterCIDRs {
		if p != p.Masked() {
			return fmt.Errorf("clusterCIDRs: %s has host bits set", p)
		}
		n := c.NodePrefixLength
		if p.Addr().Is6() {
			n = c.NodePrefixLength6
		}
		if n <= p.Bits() || n > p.Addr().BitLen()-2 {
			return fmt.Errorf("node prefix /%d does not fit cluster CIDR %s", n, p)
		}
	}
	switch c.Fabric {
	case FabricVXLAN, FabricDirect:
	case FabricBGP:
		if c.BGP == nil || c.BGP.ASN == 0 || c.BGP.ASN == 23456 || c.BGP.ASN == 4294967295 {
			return fmt.Errorf("fabric bgp: an AS number from 1 to 4294967294 is needed (not 23456)")
		}
	default:
		return fmt.Errorf("fabric %q: use %s, %s or %s", c.Fabric, FabricVXLAN, FabricDirect, FabricBGP)
	}
	if c.BGP != nil {
		for _, p := range c.BGP.LoadBalancerCIDRs {
			if p != p.Masked() {
				return fmt.Errorf("bgp.loadBalancerCIDRs: %s has host bits set", p)
			}
		}
		for i, p := range c.BGP.Peers {
			if err := p.Validate(); err != nil {
				return fmt.Errorf("bgp.peers[%d]: %w", i, err)
			}
		}
	}
	if c.DNSTTL < 0 || c.DNSTTL > 3600 {
		return fmt.Errorf("dnsTTL %d: from 0 (the default, 5 s) to 3600 seconds", c.DNSTTL)
	}
	if c.VNI < 0 || c.VNI > 1<<24-1 {
		return fmt.Errorf("vni %d is outside 0..16777215", c.VNI)
	}
	if c.Port < 0 || c.Port > 65535 {
		return fmt.Errorf("port %d is outside 0..65535", c.Port)
	}
	return nil
}

// Node is a registered node.
type Node struct {
	Name     string       `json:"name"`
	Underlay []netip.Addr `json:"underlay"`
	VTEPMAC  string       `json:"vtepMAC,omitempty"`
	BGPASN   uint32       `json:"bgpASN,omitempty"`
	// RouteReflector: under fabric bgp, the other nodes peer with this one (and the other
	// reflectors) instead of with each other.
	RouteReflector bool `json:"routeReflector,omitempty"`
}

// Lease gives a node its pod CIDR blocks.
type Lease struct {
	Node     string         `json:"node"`
	PodCIDRs []netip.Prefix `json:"podCIDRs"`
}
