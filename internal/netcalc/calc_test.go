package netcalc

import (
	"fmt"
	"math/big"
	"net/netip"
	"strings"
	"testing"
)

func TestDescribe(t *testing.T) {
	cases := []struct {
		in   string
		want Info
	}{
		{"10.1.2.3/24", Info{CIDR: "10.1.2.3/24", Network: "10.1.2.0", PrefixLength: 24, Netmask: "255.255.255.0", Wildcard: "0.0.0.255",
			Broadcast: "10.1.2.255", FirstUsable: "10.1.2.1", LastUsable: "10.1.2.254", Total: "256", Usable: "254", Class: ClassPrivate}},
		{"192.168.0.0/31", Info{CIDR: "192.168.0.0/31", Network: "192.168.0.0", PrefixLength: 31, Netmask: "255.255.255.254", Wildcard: "0.0.0.1",
			FirstUsable: "192.168.0.0", LastUsable: "192.168.0.1", Total: "2", Usable: "2", Class: ClassPrivate}},
		{"8.8.8.8/32", Info{CIDR: "8.8.8.8/32", Network: "8.8.8.8", PrefixLength: 32, Netmask: "255.255.255.255", Wildcard: "0.0.0.0",
			FirstUsable: "8.8.8.8", LastUsable: "8.8.8.8", Total: "1", Usable: "1", Class: ClassPublic}},
		{"0.0.0.0/0", Info{CIDR: "0.0.0.0/0", Network: "0.0.0.0", PrefixLength: 0, Netmask: "0.0.0.0", Wildcard: "255.255.255.255",
			Broadcast: "255.255.255.255", FirstUsable: "0.0.0.1", LastUsable: "255.255.255.254", Total: "4294967296", Usable: "4294967294", Class: ClassMixed}},
		{"fd00::/64", Info{CIDR: "fd00::/64", Network: "fd00::", PrefixLength: 64, Netmask: "ffff:ffff:ffff:ffff::", Wildcard: "::ffff:ffff:ffff:ffff",
			FirstUsable: "fd00::1", LastUsable: "fd00::ffff:ffff:ffff:ffff", Total: "18446744073709551616", Usable: "18446744073709551615", Class: ClassULA}},
		{"2001:db8::/127", Info{CIDR: "2001:db8::/127", Network: "2001:db8::", PrefixLength: 127, Netmask: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", Wildcard: "::1",
			FirstUsable: "2001:db8::", LastUsable: "2001:db8::1", Total: "2", Usable: "2", Class: ClassDocumentation}},
		{"::/0", Info{CIDR: "::/0", Network: "::", PrefixLength: 0, Netmask: "::", Wildcard: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
			FirstUsable: "::1", LastUsable: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Total: "340282366920938463463374607431768211456", Usable: "340282366920938463463374607431768211455", Class: ClassMixed}},
		{"::ffff:10.0.0.0/104", Info{CIDR: "::ffff:10.0.0.0/104", Network: "::ffff:10.0.0.0", PrefixLength: 104, Netmask: "ffff:ffff:ffff:ffff:ffff:ffff:ff00:0", Wildcard: "::ff:ffff",
			FirstUsable: "::ffff:10.0.0.1", LastUsable: "::ffff:10.255.255.255", Total: "16777216", Usable: "16777215", Class: ClassIPv4Mapped}},
	}
	for _, c := range cases {
		p, err := ParseCIDR(c.in)
		if err != nil {
			t.Fatal(err)
		}
		if got := Describe(p); got != c.want {
			t.Errorf("Describe(%s)\n got %+v\nwant %+v", c.in, got, c.want)
		}
	}
}

func TestClass(t *testing.T) {
	cases := map[string]string{
		"100.64.1.0/24": ClassCGNAT, "100.0.0.0/8": ClassMixed, "127.0.0.1/32": ClassLoopback,
		"169.254.0.0/16": ClassLinkLocal, "224.0.0.0/24": ClassMulticast, "198.51.100.0/24": ClassDocumentation,
		"255.255.255.255/32": ClassBroadcast, "240.0.0.0/8": ClassReserved, "1.1.1.0/24": ClassPublic,
		"fe80::/64": ClassLinkLocal, "ff02::1/128": ClassMulticast, "2a00::/16": ClassPublic, "::1/128": ClassLoopback,
		"64:ff9b::/96": ClassNAT64, "4000::/2": ClassReserved, "::/128": ClassUnspecified,
	}
	for in, want := range cases {
		if got := Class(netip.MustParsePrefix(in)); got != want {
			t.Errorf("Class(%s) = %q, want %q", in, got, want)
		}
	}
}

func TestParseCIDRErrorsNameTheToken(t *testing.T) {
	for _, bad := range []string{"10.0.0.0", "10.0.0.0/33", "fd00::/129", "banana/8", "", "/", "10.0.0.0/-1", "fe80::1%eth0/64"} {
		_, err := ParseCIDR(bad)
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%q", bad)) {
			t.Errorf("ParseCIDR(%q) = %v, want an error naming it", bad, err)
		}
	}
}

func TestSplit(t *testing.T) {
	got, err := Split(netip.MustParsePrefix("10.0.0.0/24"), 26)
	if err != nil || fmt.Sprint(got) != "[10.0.0.0/26 10.0.0.64/26 10.0.0.128/26 10.0.0.192/26]" {
		t.Fatalf("%v %v", got, err)
	}
	got, err = Split(netip.MustParsePrefix("10.0.0.7/31"), 32) // unaligned input
	if err != nil || fmt.Sprint(got) != "[10.0.0.6/32 10.0.0.7/32]" {
		t.Fatalf("%v %v", got, err)
	}
	got, err = Split(netip.MustParsePrefix("255.255.255.252/30"), 32) // the last block of the space
	if err != nil || len(got) != 4 || got[3].String() != "255.255.255.255/32" {
		t.Fatalf("%v %v", got, err)
	}
	got, err = Split(netip.MustParsePrefix("fd00::/126"), 128)
	if err != nil || fmt.Sprint(got) != "[fd00::/128 fd00::1/128 fd00::2/128 fd00::3/128]" {
		t.Fatalf("%v %v", got, err)
	}
	if _, err := Split(netip.MustParsePrefix("10.0.0.0/24"), 23); err == nil {
		t.Error("a shorter prefix was accepted")
	}
	if _, err := Split(netip.MustParsePrefix("10.0.0.0/8"), 32); err == nil {
		t.Error("2^24 blocks were accepted")
	}
	got, err = SplitCount(netip.MustParsePrefix("10.0.0.0/24"), 3)
	if err != nil || fmt.Sprint(got) != "[10.0.0.0/26 10.0.0.64/26 10.0.0.128/26]" {
		t.Fatalf("SplitCount: %v %v", got, err)
	}
	if _, err := SplitCount(netip.MustParsePrefix("10.0.0.0/32"), 2); err == nil {
		t.Error("splitting a /32 in two was accepted")
	}
}

func TestSummarize(t *testing.T) {
	cases := []struct{ in, want string }{
		{"10.0.0.0/25 10.0.0.128/25", "[10.0.0.0/24]"},
		{"10.0.0.0/24 10.0.0.0/16", "[10.0.0.0/16]"},
		{"10.0.1.0/24 10.0.2.0/24", "[10.0.1.0/24 10.0.2.0/24]"},
		{"10.0.1.0/24 10.0.2.0/23", "[10.0.1.0/24 10.0.2.0/23]"},
		{"10.0.0.1/32 10.0.0.2/32 10.0.0.3/32", "[10.0.0.1/32 10.0.0.2/31]"},
		{"0.0.0.0/1 128.0.0.0/1", "[0.0.0.0/0]"},
		{"fd00::/65 fd00::8000:0:0:0/65 10.0.0.0/8", "[10.0.0.0/8 fd00::/64]"},
		{"255.255.255.255/32 255.255.255.254/32", "[255.255.255.254/31]"},
		{"", "[]"},
	}
	for _, c := range cases {
		ps, _ := ParseCIDRs(strings.Fields(c.in))
		if got := fmt.Sprint(Summarize(ps)); got != c.want {
			t.Errorf("Summarize(%s) = %s, want %s", c.in, got, c.want)
		}
	}
}

func TestOverlaps(t *testing.T) {
	ps, _ := ParseCIDRs([]string{"10.0.0.0/8", "10.1.0.0/16", "192.168.0.0/24", "10.1.2.0/24", "fd00::/8"})
	got := Overlaps(ps)
	want := []Overlap{{"10.0.0.0/8", "10.1.0.0/16", "10.1.0.0/16"}, {"10.0.0.0/8", "10.1.2.0/24", "10.1.2.0/24"}, {"10.1.0.0/16", "10.1.2.0/24", "10.1.2.0/24"}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %v", got)
	}
	if len(Overlaps(nil)) != 0 {
		t.Fatal("empty list")
	}
}

// FuzzSplitSummarize: splitting then summarizing gives back the block; sub-blocks are
// disjoint, in order, and cover the same count.
func FuzzSplitSummarize(f *testing.F) {
	f.Add("10.0.0.0/24", 3)
	f.Add("fd00::/120", 5)
	f.Add("0.0.0.0/0", 4)
	f.Fuzz(func(t *testing.T, s string, extra int) {
		p, err := ParseCIDR(s)
		if err != nil {
			return
		}
		n := p.Bits() + ((extra%9)+9)%9
		blocks, err := Split(p, n)
		if err != nil {
			return
		}
		for i := 1; i < len(blocks); i++ {
			if !blocks[i-1].Addr().Less(blocks[i].Addr()) || blocks[i-1].Overlaps(blocks[i]) {
				t.Fatalf("blocks %s and %s out of order or overlapping", blocks[i-1], blocks[i])
			}
		}
		if sum := Summarize(blocks); len(sum) != 1 || sum[0] != p.Masked() {
			t.Fatalf("Summarize(Split(%s)) = %v", p, sum)
		}
		if Count(blocks).Cmp(Size(p)) != 0 {
			t.Fatalf("count changed")
		}
	})
}

// FuzzSummarizeExact: the summary covers exactly the input addresses, with no overlaps.
func FuzzSummarizeExact(f *testing.F) {
	f.Add("10.0.0.0/30 10.0.0.4/31 10.0.0.6/32 192.168.1.0/24")
	f.Add("fd00::/127 fd00::2/128 10.0.0.0/8")
	f.Fuzz(func(t *testing.T, in string) {
		ps, err := ParseCIDRs(strings.Fields(in))
		if err != nil || len(ps) > 8 {
			return
		}
		sum := Summarize(ps)
		for i := range sum {
			for j := i + 1; j < len(sum); j++ {
				if sum[i].Overlaps(sum[j]) {
					t.Fatalf("summary overlaps itself: %v", sum)
				}
			}
		}
		total := new(big.Int)
		for _, s := range sum {
			total.Add(total, Size(s))
			if !coveredBy(s, ps) {
				t.Fatalf("summary block %s covers addresses outside the input %v", s, ps)
			}
		}
		for _, p := range ps {
			if !coveredBy(p.Masked(), sum) {
				t.Fatalf("input %s not covered by summary %v", p, sum)
			}
		}
	})
}

// coveredBy reports whether every address of p is inside one of set (checked at p's two
// ends and by merging, which is exact for prefixes).
func coveredBy(p netip.Prefix, set []netip.Prefix) bool {
	var parts []netip.Prefix
	for _, s := range set {
		if s.Addr().Is4() != p.Addr().Is4() || !s.Masked().Overlaps(p) {
			continue
		}
		if Contains(s, p) {
			return true
		}
		if Contains(p, s) {
			parts = append(parts, s.Masked())
		}
	}
	return len(parts) > 0 && Count(parts).Cmp(Size(p)) == 0
}

// FuzzParseCIDR: a parsed CIDR describes and splits without panicking; a rejected one names
// the token.
func FuzzParseCIDR(f *testing.F) {
	for _, s := range []string{"10.0.0.0/8", "::ffff:1.2.3.4/128", "fd00::/0", "1.2.3.4", "/", "::/129"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseCIDR(s)
		if err != nil {
			if !strings.Contains(err.Error(), fmt.Sprintf("%q", s)) {
				t.Fatalf("error %q does not name %q", err, s)
			}
			return
		}
		_ = Describe(p)
		_, _ = SplitCount(p, 3)
		_ = Class(p)
	})
}
