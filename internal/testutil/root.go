package testutil

import (
	"os/exec"
	"strings"
	"testing"
)

// RootSnapshot records the root network namespace's links, routes and nftables ruleset.
func RootSnapshot(t testing.TB) string {
	t.Helper()
	var b strings.Builder
	for _, args := range [][]string{{"ip", "-br", "link"}, {"ip", "route"}, {"ip", "-6", "route"}, {"nft", "list", "ruleset"}} {
		out, _ := exec.Command(args[0], args[1:]...).CombinedOutput()
		b.WriteString(strings.Join(args, " ") + "\n" + string(out) + "\n")
	}
	return b.String()
}

// CheckRootUnchanged fails t if the root namespace differs from before.
func CheckRootUnchanged(t testing.TB, before string) {
	t.Helper()
	if after := RootSnapshot(t); after != before {
		t.Errorf("the root network namespace changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}
