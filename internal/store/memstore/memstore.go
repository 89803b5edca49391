// Package memstore is an in-memory ipam.Store for unit tests and dry runs.
package memstore

import (
	"net/netip"
	"sort"
	"sync"

	"github.com/weftnet/weft/internal/ipam"
)

// Store keeps allocations in maps; Update works on a copy that replaces the original only
// when the function succeeds, which gives the all-or-nothing behaviour of a transaction.
type Store struct {
	mu    sync.RWMutex
	state state
}

type state struct {
	allocs  map[ipam.Key]ipam.Allocation
	owners  map[netip.Addr]ipam.Key
	cursors map[netip.Prefix]netip.Addr
}

var _ ipam.Store = (*Store)(nil)

// New returns an empty store.
func New() *Store {
	return &Store{state: state{map[ipam.Key]ipam.Allocation{}, map[netip.Addr]ipam.Key{}, map[netip.Prefix]netip.Addr{}}}
}

func (s *Store) View(fn func(ipam.Tx) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return fn(&tx{st: s.state})
}

func (s *Store) Update(fn func(ipam.Tx) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	work := s.state.clone()
	if err := fn(&tx{st: work}); err != nil {
		return err
	}
	s.state = work
	return nil
}

func (st state) clone() state {
	c := state{map[ipam.Key]ipam.Allocation{}, map[netip.Addr]ipam.Key{}, map[netip.Prefix]netip.Addr{}}
	for k, v := range st.allocs {
		c.allocs[k] = v
	}
	for k, v := range st.owners {
		c.owners[k] = v
	}
	for k, v := range st.cursors {
		c.cursors[k] = v
	}
	return c
}

type tx struct{ st state }

func (t *tx) Get(k ipam.Key) (ipam.Allocation, bool, error) {
	a, ok := t.st.allocs[k]
	return a, ok, nil
}

func (t *tx) Put(a ipam.Allocation) error {
	if err := t.Delete(a.Key); err != nil {
		return err
	}
	t.st.allocs[a.Key] = a
	for _, ip := range a.IPs {
		t.st.owners[ip.Address.Addr()] = a.Key
	}
	return nil
}

func (t *tx) Delete(k ipam.Key) error {
	a, ok := t.st.allocs[k]
	if !ok {
		return nil
	}
	for _, ip := range a.IPs {
		if t.st.owners[ip.Address.Addr()] == k {
			delete(t.st.owners, ip.Address.Addr())
		}
	}
	delete(t.st.allocs, k)
	return nil
}

func (t *tx) Owner(ip netip.Addr) (ipam.Key, bool, error) {
	k, ok := t.st.owners[ip]
	return k, ok, nil
}

func (t *tx) List() ([]ipam.Allocation, error) {
	out := make([]ipam.Allocation, 0, len(t.st.allocs))
	for _, a := range t.st.allocs {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key.String() < out[j].Key.String() })
	return out, nil
}

func (t *tx) Cursor(p netip.Prefix) (netip.Addr, error) { return t.st.cursors[p], nil }

func (t *tx) SetCursor(p netip.Prefix, a netip.Addr) error {
	t.st.cursors[p] = a
	return nil
}
