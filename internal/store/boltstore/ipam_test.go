package boltstore

import (
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/weftnet/weft/internal/ipam"
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
