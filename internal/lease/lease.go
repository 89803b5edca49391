// Package lease hands each node a pod CIDR block out of the cluster CIDR, through the
// cluster store: a random free block taken with compare-and-swap, held by a TTL lease that
// the node renews, reclaimed by the store when the node stops renewing. A node that comes
// back asks for the block it had, and gets it while nobody else took it.
package lease

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"math/rand/v2"
	"net/netip"
	"strings"
	"time"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/netcalc"
	"github.com/weftnet/weft/internal/store"
)

// Prefix is where leases live in the store: one key per block.
const Prefix = "/weft/leases/" // resources.LeasesPrefix: the schema lives there

// ErrNoFreeBlock means the cluster CIDR is full.
var ErrNoFreeBlock = errors.New("no free pod CIDR block")

// Held is a lease this node holds.
type Held struct {
	Lease   v1.Lease
	StoreID int64 // the store lease that keeps the keys alive
	keys    []string
}

// Manager acquires and renews one node's lease.
type Manager struct {
	Store store.Store
	Node  string
	TTL   time.Duration
}

func blockKey(p netip.Prefix) string {
	return Prefix + strings.NewReplacer("/", "-", ":", "_").Replace(p.String())
}

// Acquire takes a block of every cluster CIDR's family for the node: the one it already
// holds in the store, else the preferred one (what it had before a restart) if free, else a
// random free one.
func (m *Manager) Acquire(ctx context.Context, cfg v1.ClusterConfig, prefer []netip.Prefix) (*Held, error) {
	ttl := m.TTL
	if ttl == 0 {
		ttl = 30 * time.Second
	}
	id, err := m.Store.Grant(ctx, ttl)
	if err != nil {
		return nil, fmt.Errorf("grant lease: %w", err)
	}
	h := &Held{Lease: v1.Lease{Node: m.Node}, StoreID: id}
	for _, cidr := range cfg.ClusterCIDRs {
		n := cfg.NodePrefixLength
		if cidr.Addr().Is6() {
			n = cfg.NodePrefixLength6
		}
		block, key, err := m.acquireBlock(ctx, cidr, n, prefer, id)
		if err != nil {
			_ = m.Store.Revoke(ctx, id)
			return nil, err
		}
		h.Lease.PodCIDRs = append(h.Lease.PodCIDRs, block)
		h.keys = append(h.keys, key)
	}
	return h, nil
}

func (m *Manager) acquireBlock(ctx context.Context, cidr netip.Prefix, n int, prefer []netip.Prefix, id int64) (netip.Prefix, string, error) {
	value, _ := json.Marshal(v1.Lease{Node: m.Node})
	for attempt := 0; attempt < 16; attempt++ {
		kvs, _, err := m.Store.List(ctx, Prefix)
		if err != nil {
			return netip.Prefix{}, "", err
		}
		taken := map[string]bool{}
		for _, kv := range kvs {
			var l v1.Lease
			if json.Unmarshal(kv.Value, &l) == nil && l.Node == m.Node {
				if b, ok := blockOf(kv.Key); ok && netcalc.Contains(cidr, b) {
					// Ours already (a restart within the TTL): move it to the new lease.
					_, err := m.Store.Txn(ctx, []store.Cond{{Key: kv.Key, ModRevision: kv.ModRevision}}, []store.Op{{Key: kv.Key, Value: value, Lease: id}})
					if err == nil {
						return b, kv.Key, nil
					}
					if !errors.Is(err, store.ErrConflict) {
						return netip.Prefix{}, "", err
					}
					continue
				}
			}
			taken[kv.Key] = true
		}
		cand, ok := pick(cidr, n, prefer, func(b netip.Prefix) bool { return taken[blockKey(b)] })
		if !ok {
			return netip.Prefix{}, "", fmt.Errorf("%w in %s (/%d blocks)", ErrNoFreeBlock, cidr, n)
		}
		key := blockKey(cand)
		_, err = m.Store.Txn(ctx, []store.Cond{{Key: key}}, []store.Op{{Key: key, Value: value, Lease: id}})
		if err == nil {
			return cand, key, nil
		}
		if !errors.Is(err, store.ErrConflict) {
			return netip.Prefix{}, "", err
		}
		// Someone took it first: look again.
	}
	return netip.Prefix{}, "", fmt.Errorf("could not take a block of %s after 16 tries: too much contention", cidr)
}

// pick prefers a block from prefer, else a random free block (random, so nodes starting
// together rarely race for the same one).
func pick(cidr netip.Prefix, n int, prefer []netip.Prefix, taken func(netip.Prefix) bool) (netip.Prefix, bool) {
	for _, p := range prefer {
		if p.Bits() == n && netcalc.Contains(cidr, p) && !taken(p.Masked()) {
			return p.Masked(), true
		}
	}
	total := uint64(1) << min(n-cidr.Bits(), 62)
	start := rand.Uint64N(total)
	for i := uint64(0); i < total && i < 1<<20; i++ {
		off := (start + i) % total
		b := nthBlock(cidr, n, off)
		if !taken(b) {
			return b, true
		}
	}
	return netip.Prefix{}, false
}

// nthBlock is the i-th /n block of cidr.
func nthBlock(cidr netip.Prefix, n int, i uint64) netip.Prefix {
	off := new(big.Int).Lsh(new(big.Int).SetUint64(i), uint(cidr.Addr().BitLen()-n))
	a, _ := netcalc.AddBig(cidr.Masked().Addr(), off)
	return netip.PrefixFrom(a, n)
}

func blockOf(key string) (netip.Prefix, bool) {
	s := strings.TrimPrefix(key, Prefix)
	s = strings.Replace(s, "-", "/", 1)
	s = strings.ReplaceAll(s, "_", ":")
	p, err := netip.ParsePrefix(s)
	return p, err == nil
}

// Renew refreshes the lease; ErrLeaseNotFound means it expired and must be acquired again.
func (m *Manager) Renew(ctx context.Context, h *Held) error {
	return m.Store.KeepAlive(ctx, h.StoreID)
}

// Release gives the blocks back at once (a node leaving the cluster).
func (m *Manager) Release(ctx context.Context, h *Held) error {
	return m.Store.Revoke(ctx, h.StoreID)
}

// List returns every lease in the store, by node.
func List(ctx context.Context, s store.Store) ([]v1.Lease, error) {
	kvs, _, err := s.List(ctx, Prefix)
	if err != nil {
		return nil, err
	}
	byNode := map[string]*v1.Lease{}
	var order []string
	for _, kv := range kvs {
		var l v1.Lease
		b, ok := blockOf(kv.Key)
		if json.Unmarshal(kv.Value, &l) != nil || !ok {
			continue
		}
		if byNode[l.Node] == nil {
			byNode[l.Node] = &v1.Lease{Node: l.Node}
			order = append(order, l.Node)
		}
		byNode[l.Node].PodCIDRs = append(byNode[l.Node].PodCIDRs, b)
	}
	out := make([]v1.Lease, 0, len(order))
	for _, n := range order {
		out = append(out, *byNode[n])
	}
	return out, nil
}
