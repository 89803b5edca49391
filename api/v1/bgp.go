package v1

import (
	"fmt"
	"net/netip"
	"time"
)

// BGPPeer is an external BGP neighbour (a top-of-rack or edge router) of some nodes.
type BGPPeer struct {
	Name    string     `json:"name"`
	Address netip.Addr `json:"address"`
	ASN     uint32     `json:"asn"`
	// Which nodes peer with it: those named in Nodes, those whose underlay address lies
	// in NodeSubnet (a rack's segment), or, when both are empty, every node.
	Nodes      []string     `json:"nodes,omitempty"`
	NodeSubnet netip.Prefix `json:"nodeSubnet,omitzero"`
	Password   string       `json:"password,omitempty"` // TCP MD5
	HoldTime   Duration     `json:"holdTime,omitzero"`
	Keepalive  Duration     `json:"keepalive,omitzero"`
	Multihop   uint8        `json:"multihop,omitempty"` // eBGP TTL when not directly connected
}

// Validate checks a peer on its own.
func (p BGPPeer) Validate() error {
	switch {
	case p.Name == "":
		return fmt.Errorf("name: required")
	case !p.Address.IsValid():
		return fmt.Errorf("address: required")
	case p.ASN == 0 || p.ASN == 23456 || p.ASN == 4294967295:
		return fmt.Errorf("asn: from 1 to 4294967294 (not 23456)")
	case p.NodeSubnet.IsValid() && p.NodeSubnet != p.NodeSubnet.Masked():
		return fmt.Errorf("nodeSubnet: %s has host bits set", p.NodeSubnet)
	case len(p.Password) > 80:
		return fmt.Errorf("password: at most 80 characters (TCP MD5 key)")
	case p.HoldTime.D() != 0 && (p.HoldTime.D() < 3*time.Second || p.HoldTime.D() > 65535*time.Second):
		return fmt.Errorf("holdTime: from 3s to 65535s")
	case p.Keepalive.D() != 0 && p.HoldTime.D() != 0 && p.Keepalive.D() >= p.HoldTime.D():
		return fmt.Errorf("keepalive: must be shorter than holdTime")
	}
	return nil
}

// Duration is a time.Duration written as "9s" in JSON.
type Duration time.Duration

// D is the duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// MarshalText writes "9s".
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText reads "9s".
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// BGPStatus is a node's BGP speaker as `weft bgp peers|routes` shows it.
type BGPStatus struct {
	ASN       uint32          `json:"asn"`
	RouterID  string          `json:"routerID"`
	Peers     []BGPPeerStatus `json:"peers"`
	Routes    []BGPRoute      `json:"routes"`    // learned and installed
	Announced []BGPRoute      `json:"announced"` // originated by this node
}

// BGPPeerStatus is one session.
type BGPPeerStatus struct {
	Name       string    `json:"name"`
	Address    string    `json:"address"`
	ASN        uint32    `json:"asn"`
	State      string    `json:"state"`
	Since      time.Time `json:"since,omitzero"`
	Received   uint64    `json:"received"`
	Accepted   uint64    `json:"accepted"`
	Advertised uint64    `json:"advertised"`
	Synced     bool      `json:"synced"`
	DownSince  time.Time `json:"downSince,omitzero"` // when it last left Established
}

// BGPRoute is a prefix with its next hops.
type BGPRoute struct {
	Prefix   netip.Prefix `json:"prefix"`
	NextHops []netip.Addr `json:"nextHops"`
}
