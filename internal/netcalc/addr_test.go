package netcalc

import (
	"net/netip"
	"testing"
)

func TestAdd(t *testing.T) {
	cases := []struct {
		in   string
		n    uint64
		want string
		ok   bool
	}{
		{"10.0.0.1", 1, "10.0.0.2", true},
		{"10.0.0.255", 1, "10.0.1.0", true},
		{"255.255.255.255", 1, "", false},
		{"10.0.0.0", 1 << 24, "11.0.0.0", true},
		{"fd00::ffff", 1, "fd00::1:0", true},
		{"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1, "", false},
	}
	for _, c := range cases {
		got, ok := Add(netip.MustParseAddr(c.in), c.n)
		if ok != c.ok || (ok && got.String() != c.want) {
			t.Errorf("Add(%s,%d) = %v,%v want %s,%v", c.in, c.n, got, ok, c.want, c.ok)
		}
	}
}

func TestUsableBounds(t *testing.T) {
	cases := []struct{ p, first, last string }{
		{"10.0.0.0/24", "10.0.0.1", "10.0.0.254"},
		{"10.0.0.0/31", "10.0.0.0", "10.0.0.1"},
		{"10.0.0.7/32", "10.0.0.7", "10.0.0.7"},
		{"10.0.0.5/30", "10.0.0.5", "10.0.0.6"},
		{"fd00::/64", "fd00::1", "fd00::ffff:ffff:ffff:ffff"},
		{"fd00::/127", "fd00::", "fd00::1"},
		{"fd00::1/128", "fd00::1", "fd00::1"},
	}
	for _, c := range cases {
		f, l := UsableBounds(netip.MustParsePrefix(c.p))
		if f.String() != c.first || l.String() != c.last {
			t.Errorf("UsableBounds(%s) = %s..%s want %s..%s", c.p, f, l, c.first, c.last)
		}
	}
}

func TestSizeAndDistance(t *testing.T) {
	if s := Size(netip.MustParsePrefix("::/0")).String(); s != "340282366920938463463374607431768211456" {
		t.Errorf("Size(::/0) = %s", s)
	}
	if s := Size(netip.MustParsePrefix("0.0.0.0/0")).String(); s != "4294967296" {
		t.Errorf("Size(0/0) = %s", s)
	}
	if d := Distance(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.254")).Int64(); d != 254 {
		t.Errorf("Distance = %d", d)
	}
	if d := Distance(netip.MustParseAddr("10.0.0.9"), netip.MustParseAddr("10.0.0.1")).Int64(); d != 0 {
		t.Errorf("reverse Distance = %d", d)
	}
}
