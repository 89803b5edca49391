package boltstore

import (
	"context"

	"net/netip"
	"path/filepath"
	"testing"

	"github.com/weftnet/weft/internal/ipam"
	"github.com/weftnet/weft/internal/store"
	"github.com/weftnet/weft/internal/store/storetest"
)

func openTemp(t *testing.T) *Store {
	s, err := Open(filepath.Join(t.TempDir(), "node.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	storetest.RunIPAM(t, func(t *testing.T) ipam.Store { return openTemp(t) })
}

func TestSurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "node.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	sets := []ipam.RangeSet{{{Subnet: netip.MustParsePrefix("10.9.0.0/24")}}}
	k := ipam.Key{Network: "n", ContainerID: "c", IfName: "eth0"}
	first, _, err := ipam.New(s).Allocate(ipam.Request{Key: k, Sets: sets})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	again, _, err := ipam.New(s).Allocate(ipam.Request{Key: k, Sets: sets})
	if err != nil {
		t.Fatal(err)
	}
	if again.IPs[0] != first.IPs[0] {
		t.Fatalf("after reopen got %v, want %v", again.IPs[0], first.IPs[0])
	}
}

func TestClusterConformance(t *testing.T) {
	c, err := OpenCluster(filepath.Join(t.TempDir(), "cluster.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	storetest.RunCluster(t, func(t *testing.T) store.Store { return c })
}

func TestClusterSurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cluster.db")
	c, err := OpenCluster(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	rev, err := c.Txn(ctx, nil, []store.Op{{Key: "/k", Value: []byte("v")}})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	c, err = OpenCluster(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := c.Get(ctx, "/k")
	if err != nil || got.ModRevision != rev {
		t.Fatalf("%+v %v", got, err)
	}
	rev2, _ := c.Txn(ctx, nil, []store.Op{{Key: "/k2", Value: []byte("v")}})
	if rev2 != rev+1 {
		t.Fatalf("revision did not continue: %d after %d", rev2, rev)
	}
	if _, err := c.Watch(ctx, "/", rev); err == nil {
		t.Fatal("watching history from before the restart must report compaction")
	}
}
