package netcalc

import (
	"errors"
	"fmt"
	"math/big"
	"math/bits"
	"net/netip"
	"sort"
)

// MaxBlocks bounds what Split will list, so a /8 split into /32s cannot exhaust memory.
const MaxBlocks = 1 << 16

// ErrTooMany means a split would produce more than MaxBlocks blocks.
var ErrTooMany = errors.New("too many blocks")

// Split divides p into its sub-blocks of length newLen, in address order.
func Split(p netip.Prefix, newLen int) ([]netip.Prefix, error) {
	p = p.Masked()
	if newLen < p.Bits() || newLen > p.Addr().BitLen() {
		return nil, fmt.Errorf("prefix length %d must be between %d and %d for %s", newLen, p.Bits(), p.Addr().BitLen(), p)
	}
	if newLen-p.Bits() > 16 {
		return nil, fmt.Errorf("%w: %s into /%d gives 2^%d blocks (at most %d are listed)", ErrTooMany, p, newLen, newLen-p.Bits(), MaxBlocks)
	}
	n := 1 << (newLen - p.Bits())
	out := make([]netip.Prefix, 0, n)
	a := p.Addr()
	for i := range n {
		out = append(out, netip.PrefixFrom(a, newLen))
		if i < n-1 {
			a = Last(netip.PrefixFrom(a, newLen)).Next()
		}
	}
	return out, nil
}

// SplitCount divides p into the smallest equal blocks of which there are at least k, and
// returns the first k of them.
func SplitCount(p netip.Prefix, k int) ([]netip.Prefix, error) {
	if k < 1 {
		return nil, fmt.Errorf("count %d must be at least 1", k)
	}
	extra := bits.Len(uint(k - 1)) // ceil(log2 k)
	blocks, err := Split(p, p.Masked().Bits()+extra)
	if err != nil {
		return nil, err
	}
	return blocks[:k], nil
}

// Summarize returns the fewest CIDRs that cover exactly the union of ps, IPv4 first, each
// family in address order.
func Summarize(ps []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, v4 := range []bool{true, false} {
		var ranges [][2]netip.Addr
		for _, p := range ps {
			if p.Addr().Is4() == v4 {
				m := p.Masked()
				ranges = append(ranges, [2]netip.Addr{m.Addr(), Last(m)})
			}
		}
		for _, r := range mergeRanges(ranges) {
			out = append(out, rangeToPrefixes(r[0], r[1])...)
		}
	}
	return out
}

// mergeRanges sorts and joins overlapping or adjacent inclusive ranges.
func mergeRanges(rs [][2]netip.Addr) [][2]netip.Addr {
	sort.Slice(rs, func(i, j int) bool { return rs[i][0].Less(rs[j][0]) })
	var out [][2]netip.Addr
	for _, r := range rs {
		if n := len(out); n > 0 {
			last := &out[n-1]
			overlapping := !last[1].Less(r[0])
			adjacent := last[1].Next().IsValid() && last[1].Next() == r[0]
			if overlapping || adjacent {
				if last[1].Less(r[1]) {
					last[1] = r[1]
				}
				continue
			}
		}
		out = append(out, r)
	}
	return out
}

// rangeToPrefixes covers [lo, hi] exactly with the fewest aligned prefixes.
func rangeToPrefixes(lo, hi netip.Addr) []netip.Prefix {
	var out []netip.Prefix
	size := lo.BitLen()
	for {
		// The largest block that starts at lo (aligned) and does not pass hi.
		l := size
		for l > 0 {
			cand := netip.PrefixFrom(lo, l-1)
			if cand.Masked().Addr() != lo || hi.Less(Last(cand)) {
				break
			}
			l--
		}
		p := netip.PrefixFrom(lo, l)
		out = append(out, p)
		end := Last(p)
		if end == hi || !end.Next().IsValid() {
			return out
		}
		lo = end.Next()
	}
}

// Overlap is one overlapping pair and the range they share.
type Overlap struct {
	A      string `json:"a"`
	B      string `json:"b"`
	Shared string `json:"shared"`
}

// Overlaps lists every overlapping pair of ps, in input order. Two prefixes overlap only
// when one contains the other, so the shared range is the smaller one.
func Overlaps(ps []netip.Prefix) []Overlap {
	var out []Overlap
	for i := range ps {
		for j := i + 1; j < len(ps); j++ {
			a, b := ps[i].Masked(), ps[j].Masked()
			if a.Addr().Is4() != b.Addr().Is4() || !a.Overlaps(b) {
				continue
			}
			shared := a
			if b.Bits() > a.Bits() {
				shared = b
			}
			out = append(out, Overlap{A: ps[i].String(), B: ps[j].String(), Shared: shared.String()})
		}
	}
	return out
}

// Contains reports whether outer contains all of inner.
func Contains(outer, inner netip.Prefix) bool {
	return outer.Addr().Is4() == inner.Addr().Is4() && outer.Bits() <= inner.Bits() && outer.Masked().Contains(inner.Addr())
}

// Count returns how many addresses the prefixes cover together.
func Count(ps []netip.Prefix) *big.Int {
	n := new(big.Int)
	for _, p := range Summarize(ps) {
		n.Add(n, Size(p))
	}
	return n
}
