package network

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weftnet/weft/internal/config"
	"github.com/weftnet/weft/internal/netcalc"
)

func TestCreateAutoAvoidsHostAndNetworks(t *testing.T) {
	dir := t.TempDir()
	// A reference-plugin network already holds 10.89.1.0/24; the host routes 10.89.0.0/24.
	ref := `{"cniVersion":"1.0.0","name":"podman","plugins":[{"type":"bridge","ipam":{"type":"host-local","ranges":[[{"subnet":"10.89.1.0/24"}]]}}]}`
	if err := os.WriteFile(filepath.Join(dir, "87-podman.conflist"), []byte(ref), 0o644); err != nil {
		t.Fatal(err)
	}
	host := []netcalc.HostPrefix{{Prefix: netip.MustParsePrefix("10.89.0.0/24"), Source: "route dev wg0"}}
	n, err := Create(dir, CreateRequest{Name: "web", Subnet: "auto", IPv6: "auto", Host: host})
	if err != nil {
		t.Fatal(err)
	}
	if n.Subnets[0].String() != "10.89.2.0/24" || n.Subnets[1].String() != "fd00:89::/64" || n.Bridge != "weft-web" {
		t.Fatalf("%+v", n)
	}
	// The conflist is valid for weft-cni and lists back the same way.
	b, _ := os.ReadFile(n.File)
	if !strings.Contains(string(b), `"type": "weft-cni"`) {
		t.Fatalf("conflist:\n%s", b)
	}
	back, err := Find(dir, "web")
	if err != nil || back.Mode != config.ModeBridge || len(back.Subnets) != 2 {
		t.Fatalf("%+v %v", back, err)
	}
	// A second auto network takes the next block.
	n2, err := Create(dir, CreateRequest{Name: "db", Subnet: "auto", Mode: "ptp", MTU: 1400, Host: host})
	if err != nil || n2.Subnets[0].String() != "10.89.3.0/24" || n2.Bridge != "" || n2.MTU != 1400 {
		t.Fatalf("%+v %v", n2, err)
	}
	all, _ := List(dir)
	if len(all) != 3 {
		t.Fatalf("List: %+v", all)
	}
}

func TestCreateRefusesClashesNamingThem(t *testing.T) {
	dir := t.TempDir()
	host := []netcalc.HostPrefix{{Prefix: netip.MustParsePrefix("192.168.1.0/24"), Source: "address on eth0"}}
	_, err := Create(dir, CreateRequest{Name: "a", Subnet: "192.168.0.0/16", Host: host})
	if !errors.Is(err, ErrClash) || !strings.Contains(err.Error(), "address on eth0") {
		t.Fatalf("got %v", err)
	}
	if _, err := Create(dir, CreateRequest{Name: "a", Subnet: "10.5.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	_, err = Create(dir, CreateRequest{Name: "b", Subnet: "10.5.0.128/25"})
	if !errors.Is(err, ErrClash) || !strings.Contains(err.Error(), "network a") {
		t.Fatalf("got %v", err)
	}
	if _, err := Create(dir, CreateRequest{Name: "a", Subnet: "10.6.0.0/24"}); err == nil {
		t.Fatal("a duplicate name was accepted")
	}
	for _, bad := range []CreateRequest{{Name: "bad/name"}, {Name: "x", Subnet: "10.0.0.5/24"}, {Name: "x", Subnet: "fd00::/64"}, {Name: "x", Subnet: "nope"}} {
		if _, err := Create(dir, bad); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
	full := []Pool{{netip.MustParsePrefix("10.7.0.0/24"), 25}}
	host = []netcalc.HostPrefix{{Prefix: netip.MustParsePrefix("10.7.0.0/24"), Source: "route"}}
	if _, err := Create(dir, CreateRequest{Name: "c", Pools: full, Host: host}); !errors.Is(err, ErrClash) {
		t.Fatalf("exhausted pools: %v", err)
	}
}

func TestRemoveOnlyWeftNetworks(t *testing.T) {
	dir := t.TempDir()
	_ = os.WriteFile(filepath.Join(dir, "other.conflist"), []byte(`{"name":"other","plugins":[{"type":"bridge"}]}`), 0o644)
	if err := Remove(dir, "other"); err == nil {
		t.Fatal("removed another plugin's network")
	}
	if _, err := Create(dir, CreateRequest{Name: "mine", Subnet: "10.8.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	if err := Remove(dir, "mine"); err != nil {
		t.Fatal(err)
	}
	if _, err := Find(dir, "mine"); err == nil {
		t.Fatal("still listed")
	}
}

func TestParsePool(t *testing.T) {
	p, err := ParsePool("10.89.0.0/16:24")
	if err != nil || p.Size != 24 || p.Base.String() != "10.89.0.0/16" {
		t.Fatalf("%+v %v", p, err)
	}
	p, err = ParsePool("fd00:89::/48:64")
	if err != nil || p.Size != 64 {
		t.Fatalf("%+v %v", p, err)
	}
	for _, bad := range []string{"10.0.0.0/16", "10.0.0.0/16:8", "10.0.0.0/16:31", "x:24", "10.0.0.0/16:y"} {
		if _, err := ParsePool(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if BridgeName("a-very-long-network") == "weft-a-very-long-network" || len(BridgeName("a-very-long-network")) > 15 {
		t.Error("long names need a hashed bridge name")
	}
}

func FuzzParsePool(f *testing.F) {
	for _, s := range []string{"10.89.0.0/16:24", "fd00::/48:64", "x", "1.2.3.4/0:30"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePool(s)
		if err == nil && (p.Size < p.Base.Bits() || p.Size > p.Base.Addr().BitLen()-2) {
			t.Fatalf("%q gave block size %d outside %s", s, p.Size, p.Base)
		}
	})
}
