// Package storetest is the conformance suite every ipam.Store implementation must pass.
package storetest

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/weftnet/weft/internal/ipam"
)

// Opener returns a fresh, empty store; the suite closes nothing.
type Opener func(t *testing.T) ipam.Store

func v4(cidr, gw string) []ipam.RangeSet {
	r := ipam.Range{Subnet: netip.MustParsePrefix(cidr)}
	if gw != "" {
		r.Gateway = netip.MustParseAddr(gw)
	}
	return []ipam.RangeSet{{r}}
}

func key(i int) ipam.Key {
	return ipam.Key{Network: "net", ContainerID: fmt.Sprintf("c%d", i), IfName: "eth0"}
}

// RunIPAM runs the allocator against a store from open.
func RunIPAM(t *testing.T, open Opener) {
	t.Run("SameKeySameAddress", func(t *testing.T) {
		a := ipam.New(open(t))
		req := ipam.Request{Key: key(1), Sets: v4("10.1.0.0/24", "10.1.0.1")}
		first, _, err := a.Allocate(req)
		if err != nil {
			t.Fatal(err)
		}
		again, reused, err := a.Allocate(req)
		if err != nil {
			t.Fatal(err)
		}
		if !reused || first.IPs[0] != again.IPs[0] {
			t.Fatalf("repeat ADD got %v, first got %v", again.IPs, first.IPs)
		}
		if got := first.IPs[0].Address.String(); got != "10.1.0.2/24" {
			t.Fatalf("first address %s, want 10.1.0.2/24 (gateway reserved)", got)
		}
	})

	t.Run("ExhaustThenReuse", func(t *testing.T) {
		a := ipam.New(open(t))
		sets := v4("10.2.0.0/29", "10.2.0.1") // 6 usable, minus gateway = 5
		seen := map[netip.Addr]bool{}
		for i := range 5 {
			al, _, err := a.Allocate(ipam.Request{Key: key(i), Sets: sets})
			if err != nil {
				t.Fatalf("allocation %d: %v", i, err)
			}
			ip := al.IPs[0].Address.Addr()
			if seen[ip] || ip == netip.MustParseAddr("10.2.0.1") {
				t.Fatalf("allocation %d got duplicate or gateway %s", i, ip)
			}
			seen[ip] = true
		}
		_, _, err := a.Allocate(ipam.Request{Key: key(99), Sets: sets})
		if !errors.Is(err, ipam.ErrExhausted) {
			t.Fatalf("sixth allocation: got %v, want ErrExhausted", err)
		}
		freed, ok, err := a.Release(key(2))
		if err != nil || !ok {
			t.Fatalf("release: %v %v", ok, err)
		}
		al, _, err := a.Allocate(ipam.Request{Key: key(99), Sets: sets})
		if err != nil {
			t.Fatal(err)
		}
		if al.IPs[0] != freed.IPs[0] {
			t.Fatalf("after release got %v, want the freed %v", al.IPs[0], freed.IPs[0])
		}
	})

	t.Run("StaticAndConflicts", func(t *testing.T) {
		a := ipam.New(open(t))
		sets := v4("10.3.0.0/24", "10.3.0.1")
		want := netip.MustParseAddr("10.3.0.50")
		al, _, err := a.Allocate(ipam.Request{Key: key(1), Sets: sets, Static: []netip.Addr{want}})
		if err != nil || al.IPs[0].Address.Addr() != want {
			t.Fatalf("static: %v %v", al.IPs, err)
		}
		if _, _, err := a.Allocate(ipam.Request{Key: key(2), Sets: sets, Static: []netip.Addr{want}}); !errors.Is(err, ipam.ErrAddressInUse) {
			t.Fatalf("taken static: %v", err)
		}
		if _, _, err := a.Allocate(ipam.Request{Key: key(3), Sets: sets, Static: []netip.Addr{netip.MustParseAddr("10.9.0.5")}}); !errors.Is(err, ipam.ErrAddressNotInRange) {
			t.Fatalf("foreign static: %v", err)
		}
		if _, _, err := a.Allocate(ipam.Request{Key: key(4), Sets: sets, Static: []netip.Addr{netip.MustParseAddr("10.3.0.1")}}); !errors.Is(err, ipam.ErrAddressNotInRange) {
			t.Fatalf("gateway as static: %v", err)
		}
		all, _ := a.List()
		if len(all) != 1 {
			t.Fatalf("failed requests left records behind: %v", all)
		}
	})

	t.Run("DualStackAllOrNothing", func(t *testing.T) {
		a := ipam.New(open(t))
		sets := []ipam.RangeSet{
			{{Subnet: netip.MustParsePrefix("10.4.0.0/30")}},
			{{Subnet: netip.MustParsePrefix("fd00:4::/64"), Gateway: netip.MustParseAddr("fd00:4::1")}},
		}
		var got []ipam.Allocation
		for i := range 3 {
			al, _, err := a.Allocate(ipam.Request{Key: key(i), Sets: sets})
			if i < 2 && err != nil {
				t.Fatalf("allocation %d: %v", i, err)
			}
			if i == 2 {
				if !errors.Is(err, ipam.ErrExhausted) {
					t.Fatalf("v4 exhausted: got %v", err)
				}
				break
			}
			got = append(got, al)
		}
		if len(got[0].IPs) != 2 || !got[0].IPs[1].Address.Addr().Is6() {
			t.Fatalf("dual stack IPs: %v", got[0].IPs)
		}
		if got[0].IPs[1].Address.Addr().String() != "fd00:4::2" {
			t.Fatalf("v6 address %s", got[0].IPs[1].Address)
		}
		all, _ := a.List()
		if len(all) != 2 {
			t.Fatalf("the failed dual-stack request kept its IPv6 address: %d records", len(all))
		}
	})

	t.Run("RangeBoundsAndExclude", func(t *testing.T) {
		a := ipam.New(open(t))
		sets := []ipam.RangeSet{{{
			Subnet:  netip.MustParsePrefix("10.5.0.0/24"),
			Start:   netip.MustParseAddr("10.5.0.10"),
			End:     netip.MustParseAddr("10.5.0.13"),
			Exclude: []netip.Prefix{netip.MustParsePrefix("10.5.0.11/32")},
		}}}
		var got []string
		for i := range 3 {
			al, _, err := a.Allocate(ipam.Request{Key: key(i), Sets: sets})
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, al.IPs[0].Address.Addr().String())
		}
		if fmt.Sprint(got) != "[10.5.0.10 10.5.0.12 10.5.0.13]" {
			t.Fatalf("got %v", got)
		}
	})

	t.Run("GCKeepsOnlyValid", func(t *testing.T) {
		a := ipam.New(open(t))
		sets := v4("10.6.0.0/24", "")
		for i := range 6 {
			if _, _, err := a.Allocate(ipam.Request{Key: key(i), Sets: sets}); err != nil {
				t.Fatal(err)
			}
		}
		other := ipam.Key{Network: "other", ContainerID: "x", IfName: "eth0"}
		if _, _, err := a.Allocate(ipam.Request{Key: other, Sets: sets}); err != nil {
			t.Fatal(err)
		}
		freed, err := a.GC("net", map[ipam.Key]bool{key(1): true, key(4): true})
		if err != nil {
			t.Fatal(err)
		}
		if len(freed) != 4 {
			t.Fatalf("freed %d, want 4", len(freed))
		}
		all, _ := a.List()
		if len(all) != 3 {
			t.Fatalf("left %d records, want 3 (two valid + other network)", len(all))
		}
	})

	t.Run("ConcurrentDistinct", func(t *testing.T) {
		a := ipam.New(open(t))
		sets := v4("10.7.0.0/24", "10.7.0.1")
		var wg sync.WaitGroup
		var mu sync.Mutex
		seen := map[netip.Addr]int{}
		for i := range 50 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				al, _, err := a.Allocate(ipam.Request{Key: key(i), Sets: sets})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				seen[al.IPs[0].Address.Addr()]++
				mu.Unlock()
			}()
		}
		wg.Wait()
		if len(seen) != 50 {
			t.Fatalf("50 concurrent allocations gave %d distinct addresses", len(seen))
		}
	})

	t.Run("FailedUpdateWritesNothing", func(t *testing.T) {
		s := open(t)
		boom := errors.New("boom")
		err := s.Update(func(tx ipam.Tx) error {
			if err := tx.Put(ipam.Allocation{Key: key(1), IPs: []ipam.IPConfig{{Address: netip.MustParsePrefix("10.8.0.2/24")}}}); err != nil {
				return err
			}
			return boom
		})
		if !errors.Is(err, boom) {
			t.Fatalf("got %v", err)
		}
		_ = s.View(func(tx ipam.Tx) error {
			if _, ok, _ := tx.Get(key(1)); ok {
				t.Error("record survived a failed transaction")
			}
			if _, ok, _ := tx.Owner(netip.MustParseAddr("10.8.0.2")); ok {
				t.Error("owner entry survived a failed transaction")
			}
			return nil
		})
	})
}
