package masq

import (
	"github.com/weftnet/weft/internal/dataplane"
	"net/netip"
	"reflect"
	"testing"

	"github.com/google/nftables/expr"
)

func TestRulesExemptOwnFamilyOnly(t *testing.T) {
	v4, v6 := netip.MustParsePrefix("10.1.0.0/24"), netip.MustParsePrefix("fd00:1::/64")
	rules := Rules([]netip.Prefix{v4, v6}, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")})
	want := []Rule{
		{Source: v4, Exempt: []netip.Prefix{v4, netip.MustParsePrefix("10.0.0.0/8")}},
		{Source: v6, Exempt: []netip.Prefix{v6}},
	}
	if !reflect.DeepEqual(rules, want) {
		t.Fatalf("got %+v\nwant %+v", rules, want)
	}
}

func TestExprsMatchSourceAndExemptDestination(t *testing.T) {
	ex := Exprs(Rule{Source: netip.MustParsePrefix("10.1.0.0/24"), Exempt: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24")}})
	// nfproto check (2) + saddr match (3) + daddr mismatch (3) + not marked tracked (3) + masq (1)
	if len(ex) != 12 {
		t.Fatalf("%d expressions", len(ex))
	}
	if c := ex[1].(*expr.Cmp); c.Data[0] != 2 { // NFPROTO_IPV4
		t.Errorf("family check %v", c.Data)
	}
	if p := ex[2].(*expr.Payload); p.Offset != 12 || p.Len != 4 {
		t.Errorf("saddr load %+v", p)
	}
	if b := ex[3].(*expr.Bitwise); !reflect.DeepEqual(b.Mask, []byte{255, 255, 255, 0}) {
		t.Errorf("mask %v", b.Mask)
	}
	if p := ex[5].(*expr.Payload); p.Offset != 16 {
		t.Errorf("daddr load %+v", p)
	}
	if c := ex[7].(*expr.Cmp); c.Op != expr.CmpOpNeq || !reflect.DeepEqual(c.Data, []byte{10, 1, 0, 0}) {
		t.Errorf("daddr compare %+v", c)
	}
	if b := ex[9].(*expr.Bitwise); !reflect.DeepEqual(b.Mask, nativeUint32(dataplane.MarkTracked)) {
		t.Errorf("tracked-mark mask %v", b.Mask)
	}
	if _, ok := ex[11].(*expr.Masq); !ok {
		t.Errorf("last expression %T, want masquerade", ex[11])
	}
	ex6 := Exprs(Rule{Source: netip.MustParsePrefix("fd00::/64")})
	if p := ex6[2].(*expr.Payload); p.Offset != 8 || p.Len != 16 {
		t.Errorf("IPv6 saddr load %+v", p)
	}
}
