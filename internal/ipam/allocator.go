package ipam

import (
	"fmt"
	"math/big"
	"net/netip"
	"slices"
	"time"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/netcalc"
)

// Request asks for one address from each range set.
type Request struct {
	Key
	Netns  string
	Sets   []RangeSet
	Static []netip.Addr // wanted addresses; each must fall in one of the sets
	Pod    *v1.PodIdentity
	Ports  []v1.PortMapping
}

// Allocator hands out and takes back addresses.
type Allocator struct {
	store Store
	now   func() time.Time
}

// New returns an allocator over store.
func New(store Store) *Allocator { return &Allocator{store: store, now: time.Now} }

// Allocate returns the addresses of req.Key, assigning them on first use. Repeating a
// request returns the same addresses (and reused=true). Nothing is written unless every set
// got an address.
func (a *Allocator) Allocate(req Request) (out Allocation, reused bool, err error) {
	sets, err := canonicalSets(req.Sets)
	if err != nil {
		return Allocation{}, false, err
	}
	err = a.store.Update(func(tx Tx) error {
		reused = false
		if prev, ok, err := tx.Get(req.Key); err != nil {
			return err
		} else if ok {
			out, reused = prev, true
			return nil
		}
		alloc := Allocation{Key: req.Key, Netns: req.Netns, Created: a.now().UTC(), Pod: req.Pod, Ports: req.Ports}
		static := slices.Clone(req.Static)
		cursors := map[netip.Prefix]netip.Addr{}
		for _, set := range sets {
			ipc, fromStatic, err := a.pickFromSet(tx, req.Key, set, &static)
			if err != nil {
				return err
			}
			if !fromStatic {
				cursors[ipc.Address.Masked()] = ipc.Address.Addr()
			}
			alloc.IPs = append(alloc.IPs, ipc)
		}
		if len(static) > 0 {
			return fmt.Errorf("%w: %s", ErrAddressNotInRange, static[0])
		}
		for subnet, last := range cursors {
			if err := tx.SetCursor(subnet, last); err != nil {
				return err
			}
		}
		out = alloc
		return tx.Put(alloc)
	})
	return out, reused, err
}

// pickFromSet takes a requested static address that belongs to set, or else the next free one.
func (a *Allocator) pickFromSet(tx Tx, key Key, set RangeSet, static *[]netip.Addr) (IPConfig, bool, error) {
	for i, want := range *static {
		for _, r := range set {
			if !r.Subnet.Contains(want) {
				continue
			}
			if !r.Assignable(want) {
				return IPConfig{}, true, fmt.Errorf("%w: %s is reserved or excluded in %s", ErrAddressNotInRange, want, r.Subnet)
			}
			if owner, taken, err := tx.Owner(want); err != nil {
				return IPConfig{}, true, err
			} else if taken && owner != key {
				return IPConfig{}, true, fmt.Errorf("%w: %s is held by %s", ErrAddressInUse, want, owner)
			}
			*static = slices.Delete(*static, i, i+1)
			return IPConfig{Address: netip.PrefixFrom(want, r.Subnet.Bits()), Gateway: r.Gateway}, true, nil
		}
	}
	for _, r := range set {
		ip, err := nextFree(tx, r)
		if err == ErrExhausted {
			continue
		}
		if err != nil {
			return IPConfig{}, false, err
		}
		return IPConfig{Address: netip.PrefixFrom(ip, r.Subnet.Bits()), Gateway: r.Gateway}, false, nil
	}
	return IPConfig{}, false, fmt.Errorf("%w: no free address in %s", ErrExhausted, describe(set))
}

// nextFree scans r from just after its cursor, wrapping once, for an unowned address.
func nextFree(tx Tx, r Range) (netip.Addr, error) {
	cur, err := tx.Cursor(r.Subnet)
	if err != nil {
		return netip.Addr{}, err
	}
	start := r.Start
	if cur.IsValid() && r.Contains(cur) && cur != r.End {
		start = cur.Next()
	}
	ip := start
	for {
		if r.Assignable(ip) {
			_, taken, err := tx.Owner(ip)
			if err != nil {
				return netip.Addr{}, err
			}
			if !taken {
				return ip, nil
			}
		}
		if ip == r.End {
			ip = r.Start
		} else {
			ip = ip.Next()
		}
		if ip == start {
			return netip.Addr{}, ErrExhausted
		}
	}
}

// Release frees the addresses of key. It reports whether anything was held.
func (a *Allocator) Release(key Key) (Allocation, bool, error) {
	var prev Allocation
	var found bool
	err := a.store.Update(func(tx Tx) error {
		var err error
		prev, found, err = tx.Get(key)
		if err != nil || !found {
			return err
		}
		return tx.Delete(key)
	})
	return prev, found, err
}

// Get returns the allocation of key.
func (a *Allocator) Get(key Key) (Allocation, bool, error) {
	var out Allocation
	var ok bool
	err := a.store.View(func(tx Tx) error {
		var err error
		out, ok, err = tx.Get(key)
		return err
	})
	return out, ok, err
}

// List returns every allocation.
func (a *Allocator) List() ([]Allocation, error) {
	var out []Allocation
	err := a.store.View(func(tx Tx) error {
		var err error
		out, err = tx.List()
		return err
	})
	return out, err
}

// ReleaseWhere frees, in one transaction, every allocation for which stale returns true,
// and returns what it freed. GC and the start-up sweep are both built on it.
func (a *Allocator) ReleaseWhere(stale func(Allocation) bool) ([]Allocation, error) {
	var freed []Allocation
	err := a.store.Update(func(tx Tx) error {
		freed = nil
		all, err := tx.List()
		if err != nil {
			return err
		}
		for _, al := range all {
			if !stale(al) {
				continue
			}
			if err := tx.Delete(al.Key); err != nil {
				return err
			}
			freed = append(freed, al)
		}
		return nil
	})
	return freed, err
}

// GC frees every allocation of network whose key is not in valid.
func (a *Allocator) GC(network string, valid map[Key]bool) ([]Allocation, error) {
	return a.ReleaseWhere(func(al Allocation) bool {
		return al.Network == network && !valid[al.Key]
	})
}

// Usage counts allocated and still-free addresses of a range.
func Usage(tx Tx, r Range) (used, free *big.Int, err error) {
	r, err = r.Canonical()
	if err != nil {
		return nil, nil, err
	}
	total := netcalc.Distance(r.Start, r.End)
	if r.Contains(r.Gateway) {
		total.Sub(total, big.NewInt(1))
	}
	for _, x := range r.Exclude {
		lo, hi := x.Masked().Addr(), netcalc.Last(x)
		if lo.Less(r.Start) {
			lo = r.Start
		}
		if r.End.Less(hi) {
			hi = r.End
		}
		total.Sub(total, netcalc.Distance(lo, hi))
	}
	all, err := tx.List()
	if err != nil {
		return nil, nil, err
	}
	used = new(big.Int)
	for _, al := range all {
		for _, ip := range al.IPs {
			if r.Assignable(ip.Address.Addr()) {
				used.Add(used, big.NewInt(1))
			}
		}
	}
	free = new(big.Int).Sub(total, used)
	if free.Sign() < 0 {
		free.SetInt64(0)
	}
	return used, free, nil
}

func canonicalSets(sets []RangeSet) ([]RangeSet, error) {
	if len(sets) == 0 {
		return nil, fmt.Errorf("%w: no ranges configured", ErrInvalidRange)
	}
	out := make([]RangeSet, len(sets))
	for i, set := range sets {
		if len(set) == 0 {
			return nil, fmt.Errorf("%w: empty range set", ErrInvalidRange)
		}
		for _, r := range set {
			c, err := r.Canonical()
			if err != nil {
				return nil, err
			}
			if c.Subnet.Addr().Is4() != set[0].Subnet.Addr().Is4() {
				return nil, fmt.Errorf("%w: range set mixes IPv4 and IPv6", ErrInvalidRange)
			}
			out[i] = append(out[i], c)
		}
	}
	return out, nil
}

func describe(set RangeSet) string {
	s := ""
	for i, r := range set {
		if i > 0 {
			s += ", "
		}
		s += r.Subnet.String()
	}
	return s
}
