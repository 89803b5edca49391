// Package cniapi is the wire protocol between weft-cni and weftd on the node's unix socket.
//
// One request per connection: the client writes a JSON Request and half-closes, the server
// answers one JSON Response. It deliberately avoids net/http so that weft-cni, which is
// exec'd on every pod start, links and initialises as little as possible.
package cniapi

import (
	"fmt"
	"net/netip"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/ipam"
)

// Ops the agent serves.
const (
	OpAllocate = "allocate"
	OpRelease  = "release"
	OpGet      = "get"
	OpGC       = "gc"
	OpStatus   = "status"
	OpList     = "list"
	OpReap     = "reap"  // delete retired veths (see podnet.Retire)
	OpBGP      = "bgp"   // the node's BGP sessions and routes (weft bgp)
	OpDrops    = "drops" // packets dropped by network policy, after Since (weft policy log)
)

// Error codes weftd returns; they are the CNI codes weft-cni passes on.
const (
	CodeUnknownContainer = 3
	CodeInvalidConfig    = 7
	CodeTryAgain         = 11
	CodeDegraded         = 51
	CodeExhausted        = 100 // no free address in the pool
	CodeAddressInUse     = 101 // a requested static address is held by another attachment
	CodeNotInRange       = 102 // a requested static address fits no range
	CodePortInUse        = 103 // a host port is already published by another attachment
	CodeInternal         = 999
)

// Request is what weft-cni asks of the agent.
type Request struct {
	Op     string           `json:"op"`
	Key    ipam.Key         `json:"key"`
	Netns  string           `json:"netns,omitempty"`
	Sets   []ipam.RangeSet  `json:"sets,omitempty"` // empty: the node's pod CIDRs
	Static []netip.Addr     `json:"static,omitempty"`
	Pod    *v1.PodIdentity  `json:"pod,omitempty"`
	Ports  []v1.PortMapping `json:"ports,omitempty"` // allocate: ports to publish on the node
	Valid  []ipam.Key       `json:"valid,omitempty"` // GC: attachments still in use
	Reap   bool             `json:"reap,omitempty"`  // release: a veth was retired, reap it
	Since  uint64           `json:"since,omitempty"` // drops: the last sequence number seen
}

// Response carries the outcome of one Request.
type Response struct {
	Error       *Error            `json:"error,omitempty"`
	Allocation  *ipam.Allocation  `json:"allocation,omitempty"`
	Reused      bool              `json:"reused,omitempty"`      // the allocation predates this request
	Allocations []ipam.Allocation `json:"allocations,omitempty"` // GC: those released; list: all
	Status      *Status           `json:"status,omitempty"`
	BGP         *v1.BGPStatus     `json:"bgp,omitempty"`
	Drops       []v1.PolicyDrop   `json:"drops,omitempty"`
}

// Status describes the agent's health for CNI STATUS and `weft status`.
type Status struct {
	Ready    bool        `json:"ready"`
	Problems []string    `json:"problems,omitempty"`
	Pools    []PoolUsage `json:"pools,omitempty"`
}

// PoolUsage counts the addresses of one node pod CIDR (decimal strings: IPv6 is large).
type PoolUsage struct {
	CIDR      string `json:"cidr"`
	Allocated string `json:"allocated"`
	Free      string `json:"free"`
}

// Error is an error with a CNI code.
type Error struct {
	Code uint   `json:"code"`
	Msg  string `json:"msg"`
}

func (e *Error) Error() string { return fmt.Sprintf("%s (code %d)", e.Msg, e.Code) }
