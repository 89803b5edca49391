// Package maglev builds Maglev consistent-hashing lookup tables (Eisenbud et al., "Maglev:
// A Fast and Reliable Software Network Load Balancer", NSDI 2016): a table of M slots (M
// prime), each naming a backend, so that a flow's hash modulo M picks the same backend on
// every node that builds the table from the same backends, every backend holds M/N slots
// to within one, and removing a backend moves its own flows and few others.
//
// The table depends only on the backends' names (sorted first) and M: any node computes
// the same one, which is what lets traffic entering through any node reach the same
// backend for the same flow.
package maglev

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
)

// DefaultSize is the table size for up to 163 backends (M ≥ 100 × N keeps the imbalance
// under 1 %); Size picks a larger prime for more.
const DefaultSize = 16381

// Size returns the smallest prime M ≥ max(DefaultSize, 100 × n).
func Size(n int) int {
	m := max(DefaultSize, 100*n)
	for !isPrime(m) {
		m++
	}
	return m
}

func isPrime(n int) bool {
	if n < 2 {
		return false
	}
	for d := 2; d*d <= n; d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}

// Table returns the lookup table of size m for the backends (names, e.g. "10.0.0.5:8080"):
// slot → index into the sorted, de-duplicated backend list it also returns. No backends:
// an empty table.
func Table(backends []string, m int) ([]int, []string, error) {
	if !isPrime(m) {
		return nil, nil, fmt.Errorf("maglev: table size %d is not a prime", m)
	}
	names := slices.Clone(backends)
	slices.Sort(names)
	names = slices.Compact(names)
	if len(names) == 0 {
		return nil, nil, nil
	}
	if len(names) > m {
		return nil, nil, errors.New("maglev: more backends than slots")
	}
	n := len(names)
	offset, skip := make([]uint64, n), make([]uint64, n)
	for i, name := range names {
		offset[i] = hash(name, 0xbadc0ffee0ddf00d) % uint64(m)
		skip[i] = hash(name, 0x5eed5eed5eed5eed)%uint64(m-1) + 1
	}
	table := make([]int, m)
	for i := range table {
		table[i] = -1
	}
	next := make([]uint64, n)
	filled := 0
	for {
		for i := range n {
			// Backend i takes the next slot of its permutation that is still free.
			c := (offset[i] + next[i]*skip[i]) % uint64(m)
			for table[c] >= 0 {
				next[i]++
				c = (offset[i] + next[i]*skip[i]) % uint64(m)
			}
			table[c] = i
			next[i]++
			if filled++; filled == m {
				return table, names, nil
			}
		}
	}
}

// hash is 64-bit FNV-1a of a seed and the name: fixed, so every node and every version
// computes the same permutations.
func hash(name string, seed uint64) uint64 {
	h := fnv.New64a()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], seed)
	h.Write(b[:])
	h.Write([]byte(name))
	return h.Sum64()
}
