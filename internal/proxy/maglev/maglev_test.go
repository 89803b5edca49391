package maglev

import (
	"fmt"
	"testing"
)

func backends(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("10.%d.%d.%d:8080", i/65536, i/256%256, i%256)
	}
	return out
}

// Every backend holds M/N slots to within one (so 1/N ± 1 % at M ≥ 100 N).
func TestBalance(t *testing.T) {
	for _, n := range []int{1, 2, 3, 10, 100, 163, 500} {
		m := Size(n)
		table, names, err := Table(backends(n), m)
		if err != nil {
			t.Fatal(err)
		}
		count := make([]int, len(names))
		for _, b := range table {
			count[b]++
		}
		lo, hi := m/n, (m+n-1)/n
		for i, c := range count {
			if c < lo || c > hi {
				t.Fatalf("n=%d: backend %s holds %d slots, want %d..%d", n, names[i], c, lo, hi)
			}
			if share := float64(c) / float64(m); share < 1/float64(n)*0.99 || share > 1/float64(n)*1.01 {
				t.Fatalf("n=%d: backend %s holds %.4f of the table, want 1/n ± 1 %%", n, names[i], share)
			}
		}
	}
}

// Removing one backend moves its own slots and few others; the test reports the figure
// and holds it to 2 % of the table.
func TestDisruption(t *testing.T) {
	for _, n := range []int{10, 100} {
		m := Size(n)
		all := backends(n)
		before, namesBefore, _ := Table(all, m)
		for _, gone := range []int{0, n / 2, n - 1} {
			rest := append(append([]string{}, all[:gone]...), all[gone+1:]...)
			after, namesAfter, _ := Table(rest, m)
			moved := 0
			for s := range before {
				was := namesBefore[before[s]]
				if was == all[gone] {
					continue // its own flows must move
				}
				if namesAfter[after[s]] != was {
					moved++
				}
			}
			pct := 100 * float64(moved) / float64(m)
			t.Logf("n=%d, M=%d: removing backend %d moved %.2f %% of the other backends' slots", n, m, gone, pct)
			if pct > 2 {
				t.Errorf("n=%d: removing a backend moved %.2f %% of the others' slots, want ≤ 2 %%", n, pct)
			}
		}
	}
}

// The table depends on the backends, not on the order they are listed in.
func TestDeterministic(t *testing.T) {
	a, _, _ := Table([]string{"a:1", "b:1", "c:1"}, 17)
	b, _, _ := Table([]string{"c:1", "a:1", "b:1", "a:1"}, 17)
	if fmt.Sprint(a) != fmt.Sprint(b) {
		t.Errorf("order changed the table:\n%v\n%v", a, b)
	}
	if _, _, err := Table([]string{"a"}, 16); err == nil {
		t.Error("a table size that is not a prime was accepted")
	}
	if tb, _, _ := Table(nil, 17); len(tb) != 0 {
		t.Error("no backends gave a table")
	}
}
