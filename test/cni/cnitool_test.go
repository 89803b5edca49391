package cni_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weftnet/weft/internal/testutil"
)

// cnitoolPath finds cnitool on PATH or in GOBIN/GOPATH/bin, where the test command installs it.
func cnitoolPath(t *testing.T) string {
	if p, err := exec.LookPath("cnitool"); err == nil {
		return p
	}
	if out, err := exec.Command("go", "env", "GOBIN", "GOPATH").Output(); err == nil {
		for _, dir := range strings.Fields(string(out)) {
			for _, p := range []string{filepath.Join(dir, "cnitool"), filepath.Join(dir, "bin", "cnitool")} {
				if _, err := os.Stat(p); err == nil {
					return p
				}
			}
		}
	}
	return testutil.RequireTool(t, "cnitool")
}

func TestCnitoolAddCheckDelGCStatus(t *testing.T) {
	n := newNode(t, "10.91.0.0/24,fd91::/64")
	tool := cnitoolPath(t)
	confDir := t.TempDir()
	// cnitool caches results under /var/lib/cni/results with no way to move it; a name of
	// this process's own keeps parallel runs apart, and the cleanup removes what is left.
	net := fmt.Sprintf("weftcnt%d", os.Getpid())
	t.Cleanup(func() {
		left, _ := filepath.Glob("/var/lib/cni/results/" + net + "-*")
		for _, f := range left {
			_ = os.Remove(f)
		}
	})
	conf := fmt.Sprintf(`{"cniVersion":"1.1.0","name":%q,"plugins":[{"type":"weft-cni","mode":"bridge","socket":%q}]}`, net, n.weftd.Socket())
	if err := os.WriteFile(filepath.Join(confDir, "10-weft.conflist"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cnitool := func(args ...string) (string, error) {
		c := n.ns.Command(tool, args...)
		c.Env = append(os.Environ(), "NETCONFPATH="+confDir, "CNI_PATH="+testutil.Binaries(t))
		out, err := c.CombinedOutput()
		return string(out), err
	}
	p1, p2 := testutil.NewNS(t, "cnt"), testutil.NewNS(t, "cnt")
	for _, p := range []testutil.NS{p1, p2} {
		out, err := cnitool("add", net, p.Path)
		if err != nil {
			t.Fatalf("cnitool add: %v\n%s", err, out)
		}
		if !strings.Contains(out, `"10.91.0.`) || !strings.Contains(out, `"fd91::`) {
			t.Fatalf("cnitool add printed no dual-stack result:\n%s", out)
		}
	}
	if out, err := cnitool("check", net, p1.Path); err != nil {
		t.Fatalf("cnitool check: %v\n%s", err, out)
	}
	if out, err := cnitool("status", net, p1.Path); err != nil {
		t.Fatalf("cnitool status: %v\n%s", err, out)
	}
	if out, err := cnitool("del", net, p1.Path); err != nil {
		t.Fatalf("cnitool del: %v\n%s", err, out)
	}
	if allocs, _ := n.weftd.Allocations(); len(allocs) != 1 {
		t.Fatalf("after one del: %v", allocs)
	}
	// cnitool's gc lists no valid attachments, so it resets the network.
	if out, err := cnitool("gc", net, p2.Path); err != nil {
		t.Fatalf("cnitool gc: %v\n%s", err, out)
	}
	if allocs, _ := n.weftd.Allocations(); len(allocs) != 0 {
		t.Fatalf("after gc: %v", allocs)
	}
	n.weftd.Stop()
	defer n.weftd.Start()
	if out, err := cnitool("status", net, p1.Path); err == nil || !strings.Contains(out, "weftd is not available") {
		t.Fatalf("cnitool status with weftd down: err=%v\n%s", err, out)
	}
}
