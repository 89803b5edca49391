package e2e_test

import (
	"encoding/json"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/testutil"
)

// hostWithRoutes is a namespace whose addresses and routes a plan must avoid:
// 10.0.0.0/12 and 10.89.0.0/24 routed via a gateway, 10.89.1.1/24 assigned, a default route
// through a 1500-byte device.
func hostWithRoutes(t *testing.T) testutil.NS {
	ns := testutil.NewNS(t, "host")
	h := ns.Handle(t)
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "up0", MTU: 1500}, PeerName: "up1"}); err != nil {
		t.Fatal(err)
	}
	l, _ := h.LinkByName("up0")
	for _, a := range []string{"192.0.2.1/24", "10.89.1.1/24"} {
		addr, _ := netlink.ParseAddr(a)
		if err := h.AddrAdd(l, addr); err != nil {
			t.Fatal(err)
		}
	}
	_ = h.LinkSetUp(l)
	if p, err := h.LinkByName("up1"); err == nil {
		_ = h.LinkSetUp(p)
	}
	for _, r := range [][]string{{"10.0.0.0/12", "via", "192.0.2.254"}, {"10.89.0.0/24", "via", "192.0.2.254"}, {"default", "via", "192.0.2.254"}} {
		if out, err := exec.Command("ip", append([]string{"-n", ns.Name, "route", "add"}, r...)...).CombinedOutput(); err != nil {
			t.Fatalf("route %v: %v %s", r, err, out)
		}
	}
	return ns
}

func weft(t *testing.T, ns testutil.NS, args ...string) (string, int) {
	t.Helper()
	cmd := ns.Command(filepath.Join(testutil.Binaries(t), "weft"), args...)
	out, err := cmd.Output()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out) + string(ee.Stderr), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

func TestPlanAndNetworksAvoidTheHost(t *testing.T) {
	testutil.RequireRoot(t)
	ns := hostWithRoutes(t)

	out, code := weft(t, ns, "subnet", "plan", "--nodes", "3", "--pods-per-node", "100", "--services", "50", "--from-host", "-o", "json")
	var plan struct{ ClusterCIDR, ServiceCIDR string }
	if code != 0 || json.Unmarshal([]byte(out), &plan) != nil {
		t.Fatalf("plan: exit %d\n%s", code, out)
	}
	avoid := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/12"), netip.MustParsePrefix("10.89.0.0/24"), netip.MustParsePrefix("10.89.1.0/24")}
	for _, c := range []string{plan.ClusterCIDR, plan.ServiceCIDR} {
		p := netip.MustParsePrefix(c)
		for _, a := range avoid {
			if p.Overlaps(a) {
				t.Errorf("plan chose %s, which overlaps the host's %s", p, a)
			}
		}
	}

	out, code = weft(t, ns, "subnet", "check", "--cluster-cidr", "10.0.0.0/16", "--service-cidr", "10.200.0.0/24", "--from-host", "-o", "json")
	if code != 1 || !strings.Contains(out, `"ok": false`) || !strings.Contains(out, "route via 192.0.2.254 dev up0") {
		t.Fatalf("check: exit %d\n%s", code, out)
	}

	dir := t.TempDir()
	out, code = weft(t, ns, "network", "create", "t1", "--subnet", "auto", "--conf-dir", dir, "-o", "json")
	if code != 0 || !strings.Contains(out, `"10.89.2.0/24"`) {
		t.Fatalf("create auto: exit %d\n%s", code, out)
	}
	out, code = weft(t, ns, "network", "create", "t2", "--subnet", "10.0.5.0/24", "--conf-dir", dir)
	if code == 0 || !strings.Contains(out, "10.0.0.0/12") {
		t.Fatalf("create on a routed subnet: exit %d\n%s", code, out)
	}
	out, code = weft(t, ns, "network", "ls", "--conf-dir", dir)
	if code != 0 || !strings.Contains(out, "t1") || strings.Contains(out, "t2") {
		t.Fatalf("ls: %s", out)
	}
	if out, code = weft(t, ns, "network", "rm", "t1", "--conf-dir", dir); code != 0 {
		t.Fatalf("rm: %s", out)
	}

	out, code = weft(t, ns, "mtu", "--encap", "vxlan", "-o", "json")
	if code != 0 || !strings.Contains(out, `"device": "up0"`) || !strings.Contains(out, `"podMTU": 1450`) {
		t.Fatalf("mtu: exit %d\n%s", code, out)
	}
}
