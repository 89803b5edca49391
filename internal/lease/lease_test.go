package lease

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/store"
	"github.com/weftnet/weft/internal/store/boltstore"
)

func openStore(t *testing.T) store.Store {
	c, err := boltstore.OpenCluster(filepath.Join(t.TempDir(), "cluster.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

var cfg = v1.ClusterConfig{
	ClusterCIDRs:     []netip.Prefix{netip.MustParsePrefix("10.244.0.0/22"), netip.MustParsePrefix("fd00:244::/62")},
	NodePrefixLength: 24, NodePrefixLength6: 64, Fabric: v1.FabricVXLAN,
}

func TestNodesGetDistinctBlocksConcurrently(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	var mu sync.Mutex
	seen := map[netip.Prefix]string{}
	var wg sync.WaitGroup
	for _, node := range []string{"n1", "n2", "n3", "n4"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h, err := (&Manager{Store: s, Node: node, TTL: 5 * time.Second}).Acquire(ctx, cfg, nil)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if len(h.Lease.PodCIDRs) != 2 {
				t.Errorf("%s got %v", node, h.Lease.PodCIDRs)
			}
			for _, b := range h.Lease.PodCIDRs {
				if other, dup := seen[b]; dup {
					t.Errorf("%s and %s both hold %s", other, node, b)
				}
				seen[b] = node
			}
		}()
	}
	wg.Wait()
	// /22 holds four /24s: a fifth node finds the cluster full.
	_, err := (&Manager{Store: s, Node: "n5"}).Acquire(ctx, cfg, nil)
	if !errors.Is(err, ErrNoFreeBlock) {
		t.Fatalf("fifth node: %v", err)
	}
	leases, _ := List(ctx, s)
	if len(leases) != 4 {
		t.Fatalf("List: %+v", leases)
	}
}

func TestRestartKeepsTheBlockAndExpiryFreesIt(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	m := &Manager{Store: s, Node: "n1", TTL: time.Second}
	first, err := m.Acquire(ctx, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A restart within the TTL finds its block in the store.
	again, err := m.Acquire(ctx, cfg, nil)
	if err != nil || again.Lease.PodCIDRs[0] != first.Lease.PodCIDRs[0] {
		t.Fatalf("restart: %v %v, first %v", again.Lease.PodCIDRs, err, first.Lease.PodCIDRs)
	}
	// Unrenewed, the lease expires and the block is free for others.
	deadline := time.Now().Add(5 * time.Second)
	for {
		leases, _ := List(ctx, s)
		if len(leases) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("lease never expired: %+v", leases)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// After expiry, the node asks for its old block and gets it back.
	back, err := m.Acquire(ctx, cfg, first.Lease.PodCIDRs)
	if err != nil || back.Lease.PodCIDRs[0] != first.Lease.PodCIDRs[0] || back.Lease.PodCIDRs[1] != first.Lease.PodCIDRs[1] {
		t.Fatalf("preferred block: %v %v", back.Lease.PodCIDRs, err)
	}
	if err := m.Renew(ctx, back); err != nil {
		t.Fatal(err)
	}
	if err := m.Release(ctx, back); err != nil {
		t.Fatal(err)
	}
	if leases, _ := List(ctx, s); len(leases) != 0 {
		t.Fatalf("release left %+v", leases)
	}
}

func TestNthBlock(t *testing.T) {
	if b := nthBlock(netip.MustParsePrefix("10.244.0.0/16"), 24, 5); b.String() != "10.244.5.0/24" {
		t.Fatal(b)
	}
	if b := nthBlock(netip.MustParsePrefix("fd00::/48"), 64, 3); b.String() != "fd00:0:0:3::/64" {
		t.Fatal(b)
	}
	if b, ok := blockOf(blockKey(netip.MustParsePrefix("fd00:0:0:3::/64"))); !ok || b.String() != "fd00:0:0:3::/64" {
		t.Fatal(b)
	}
}

func TestClusterConfigValidate(t *testing.T) {
	good := cfg
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []v1.ClusterConfig{
		{NodePrefixLength: 24, Fabric: "vxlan"},
		{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}, NodePrefixLength: 24, Fabric: "vxlan"},
		{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}, NodePrefixLength: 24, Fabric: "gre"},
		{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.5/16")}, NodePrefixLength: 24, Fabric: "vxlan"},
	} {
		if err := bad.Validate(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}
