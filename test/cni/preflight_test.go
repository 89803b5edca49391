package cni_test

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/testutil"
)

// TestWeftdPreflightRefusesClashingPodCIDR: a node route inside the pod CIDR stops weftd.
func TestWeftdPreflightRefusesClashingPodCIDR(t *testing.T) {
	testutil.RequireRoot(t)
	node := testutil.NewNS(t, "pre")
	h := node.Handle(t)
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "up0"}, PeerName: "up1"}); err != nil {
		t.Fatal(err)
	}
	l, _ := h.LinkByName("up0")
	a, _ := netlink.ParseAddr("192.0.2.1/24")
	_ = h.AddrAdd(l, a)
	_ = h.LinkSetUp(l)
	if out, err := exec.Command("ip", "-n", node.Name, "route", "add", "10.98.0.0/26", "via", "192.0.2.254").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	dir := t.TempDir()
	out, err := node.Command(filepath.Join(testutil.Binaries(t), "weftd"), "--state-dir", dir, "--run-dir", dir, "--pod-cidr", "10.98.0.0/24").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "10.98.0.0/26") || !strings.Contains(string(out), "preflight") {
		t.Fatalf("weftd started on a clashing pod CIDR, or said nothing useful: %v\n%s", err, out)
	}
}
