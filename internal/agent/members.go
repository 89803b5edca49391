package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/lease"
	"github.com/weftnet/weft/internal/resources"
	"github.com/weftnet/weft/internal/store"
)

// storeMembers is membership through weft's store (`--ipam weft`): the node leases its
// blocks and registers under the same store lease, so both vanish together when it stops
// renewing.
type storeMembers struct {
	st        store.Store
	cfg       v1.ClusterConfig
	mgr       *lease.Manager
	leaseFile string // the blocks this node had, preferred when it leases again
	log       *slog.Logger

	self v1.Node
	held *lease.Held
	// leaseID is the store lease of the node's keys (its pods are published under it);
	// onLease hears when it changes.
	leaseID atomic.Int64
	onLease func()
}

func (m *storeMembers) Join(ctx context.Context, self v1.Node) ([]netip.Prefix, error) {
	m.self = self
	if err := m.acquire(ctx); err != nil {
		return nil, err
	}
	return m.held.Lease.PodCIDRs, nil
}

// acquire takes the lease (preferring the blocks this node had) and registers the node.
func (m *storeMembers) acquire(ctx context.Context) error {
	var prefer []netip.Prefix
	if b, err := os.ReadFile(m.leaseFile); err == nil {
		var l v1.Lease
		if json.Unmarshal(b, &l) == nil {
			prefer = l.PodCIDRs
		}
	}
	held, err := m.mgr.Acquire(ctx, m.cfg, prefer)
	if err != nil {
		return fmt.Errorf("acquire pod CIDR: %w", err)
	}
	nb, _ := json.Marshal(m.self)
	if _, err := m.st.Txn(ctx, nil, []store.Op{{Key: resources.NodeKey(m.self.Name), Value: nb, Lease: held.StoreID}}); err != nil {
		return fmt.Errorf("register node: %w", err)
	}
	m.held = held
	m.leaseID.Store(held.StoreID)
	if m.onLease != nil {
		m.onLease()
	}
	lb, _ := json.Marshal(held.Lease)
	_ = os.MkdirAll(filepath.Dir(m.leaseFile), 0o700)
	return os.WriteFile(m.leaseFile, lb, 0o600)
}

// Run renews the lease and follows the store's nodes and leases.
func (m *storeMembers) Run(ctx context.Context, changed func()) error {
	go m.watch(ctx, changed)
	renew := time.NewTicker(m.mgr.TTL / 3)
	defer renew.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-renew.C:
			err := m.mgr.Renew(ctx, m.held)
			if errors.Is(err, store.ErrLeaseNotFound) {
				old := fmt.Sprint(m.held.Lease.PodCIDRs)
				m.log.Warn("lease expired; taking it again", "podCIDRs", old)
				if err := m.acquire(ctx); err != nil {
					m.log.Error("re-acquire failed", "err", err)
				} else if now := fmt.Sprint(m.held.Lease.PodCIDRs); now != old {
					m.log.Error("the node's pod CIDR changed while it was away: restart its pods", "was", old, "now", now)
				}
			} else if err != nil {
				m.log.Warn("lease renewal failed; retrying", "err", err)
			}
		}
	}
}

// watch calls changed on every change of nodes, leases or BGP peers; when a watch ends
// (the store restarted, history compacted), it starts again from a fresh list.
func (m *storeMembers) watch(ctx context.Context, changed func()) {
	for ctx.Err() == nil {
		ch, err := m.st.Watch(ctx, resources.Root, 0)
		if err == nil {
			changed()
			for e := range ch {
				if strings.HasPrefix(e.KV.Key, resources.NodesPrefix) || strings.HasPrefix(e.KV.Key, lease.Prefix) ||
					strings.HasPrefix(e.KV.Key, resources.BGPPeersPrefix) {
					changed()
				}
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (m *storeMembers) Peers(ctx context.Context) ([]v1.Node, []v1.Lease, error) {
	kvs, _, err := m.st.List(ctx, resources.NodesPrefix)
	if err != nil {
		return nil, nil, err
	}
	leases, err := lease.List(ctx, m.st)
	if err != nil {
		return nil, nil, err
	}
	var nodes []v1.Node
	for _, kv := range kvs {
		var n v1.Node
		if json.Unmarshal(kv.Value, &n) == nil {
			nodes = append(nodes, n)
		}
	}
	return nodes, leases, nil
}
