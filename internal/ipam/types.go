// Package ipam allocates pod addresses. It is pure logic over a small Store interface, so the
// same allocator runs on bbolt in weftd and on an in-memory store in unit tests.
//
// An allocation is keyed by (network, container ID, interface name) and holds every address
// that attachment got. The record and the address index are written in one transaction, so a
// crash can never leave an address owned by nobody, or a record whose addresses are free.
package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/netcalc"
)

var (
	// ErrExhausted means a range had no free address left.
	ErrExhausted = errors.New("address pool exhausted")
	// ErrAddressInUse means a requested static address belongs to another attachment.
	ErrAddressInUse = errors.New("address already in use")
	// ErrAddressNotInRange means a requested static address fits none of the ranges.
	ErrAddressNotInRange = errors.New("address outside every range")
	// ErrInvalidRange means a range is malformed.
	ErrInvalidRange = errors.New("invalid range")
)

// Key identifies one attachment: a container's interface on a network.
type Key struct {
	Network     string `json:"network"`
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

func (k Key) String() string { return k.Network + "/" + k.ContainerID + "/" + k.IfName }

// IPConfig is one assigned address with the prefix length of its subnet.
type IPConfig struct {
	Address netip.Prefix `json:"address"`
	Gateway netip.Addr   `json:"gateway,omitzero"`
}

// Allocation is everything weft remembers about one attachment.
type Allocation struct {
	Key
	Netns   string           `json:"netns,omitempty"`
	IPs     []IPConfig       `json:"ips"`
	Created time.Time        `json:"created"`
	Pod     *v1.PodIdentity  `json:"pod,omitempty"`
	Ports   []v1.PortMapping `json:"ports,omitempty"` // published on the node
}

// Range is one contiguous block of assignable addresses within a subnet.
type Range struct {
	Subnet  netip.Prefix   `json:"subnet"`
	Start   netip.Addr     `json:"rangeStart,omitzero"`
	End     netip.Addr     `json:"rangeEnd,omitzero"`
	Gateway netip.Addr     `json:"gateway,omitzero"`
	Exclude []netip.Prefix `json:"exclude,omitempty"`
}

// RangeSet is a list of ranges of one family; an attachment gets one address from a set.
type RangeSet []Range

// Canonical fills the defaults of r and checks that it is coherent.
func (r Range) Canonical() (Range, error) {
	if !r.Subnet.IsValid() {
		return r, fmt.Errorf("%w: missing subnet", ErrInvalidRange)
	}
	if r.Subnet != r.Subnet.Masked() {
		return r, fmt.Errorf("%w: subnet %s has host bits set (did you mean %s?)", ErrInvalidRange, r.Subnet, r.Subnet.Masked())
	}
	first, last := netcalc.UsableBounds(r.Subnet)
	if !r.Start.IsValid() {
		r.Start = first
	}
	if !r.End.IsValid() {
		r.End = last
	}
	for name, a := range map[string]netip.Addr{"rangeStart": r.Start, "rangeEnd": r.End} {
		if !r.Subnet.Contains(a) {
			return r, fmt.Errorf("%w: %s %s is outside subnet %s", ErrInvalidRange, name, a, r.Subnet)
		}
	}
	if r.End.Less(r.Start) {
		return r, fmt.Errorf("%w: rangeEnd %s is below rangeStart %s", ErrInvalidRange, r.End, r.Start)
	}
	if r.Gateway.IsValid() && !r.Subnet.Contains(r.Gateway) {
		return r, fmt.Errorf("%w: gateway %s is outside subnet %s", ErrInvalidRange, r.Gateway, r.Subnet)
	}
	for _, x := range r.Exclude {
		if x.Addr().Is4() != r.Subnet.Addr().Is4() {
			return r, fmt.Errorf("%w: exclude %s is of another family than %s", ErrInvalidRange, x, r.Subnet)
		}
	}
	return r, nil
}

// Contains reports whether a lies in the assignable span of r (ignoring exclusions).
func (r Range) Contains(a netip.Addr) bool {
	return r.Subnet.Contains(a) && !a.Less(r.Start) && !r.End.Less(a)
}

// Assignable reports whether a may be handed out: inside the span, not the gateway,
// not excluded.
func (r Range) Assignable(a netip.Addr) bool {
	if !r.Contains(a) || a == r.Gateway {
		return false
	}
	for _, x := range r.Exclude {
		if x.Contains(a) {
			return false
		}
	}
	return true
}

// Tx is one storage transaction. Implementations must make every write of a transaction
// visible together or not at all.
type Tx interface {
	Get(Key) (Allocation, bool, error)
	// Put writes the record and claims each of its addresses in the index.
	Put(Allocation) error
	// Delete removes the record and frees its addresses.
	Delete(Key) error
	// Owner returns the attachment that holds ip, if any.
	Owner(ip netip.Addr) (Key, bool, error)
	List() ([]Allocation, error)
	// Cursor is the last address handed out from subnet, so allocation rotates through a range.
	Cursor(subnet netip.Prefix) (netip.Addr, error)
	SetCursor(subnet netip.Prefix, last netip.Addr) error
}

// Store runs transactions.
type Store interface {
	Update(func(Tx) error) error
	View(func(Tx) error) error
}
