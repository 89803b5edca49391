package cni_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/weftnet/weft/internal/testutil"
)

// TestWeftdConfigFile: the pod CIDR and MTU come from --config; a flag overrides the file.
func TestWeftdConfigFile(t *testing.T) {
	testutil.RequireRoot(t)
	file := filepath.Join(t.TempDir(), "weftd.json")
	if err := os.WriteFile(file, []byte(`{"podCIDRs":["10.97.0.0/24"],"mtu":1400}`), 0o644); err != nil {
		t.Fatal(err)
	}
	n := newNode(t, "", "--config", file, "--mtu", "1380")
	list := n.conflist("1.1.0", "weft", `"mode":"bridge"`)
	p, rt := n.pod("cf")
	r := n.mustAdd(list, rt)
	if got := podIPs(r)[0].String(); got != "10.97.0.2" {
		t.Errorf("address %s, want 10.97.0.2 from the file's pod CIDR", got)
	}
	if l, _ := p.Handle(t).LinkByName("eth0"); l.Attrs().MTU != 1380 {
		t.Errorf("MTU %d, want the flag's 1380 over the file's 1400", l.Attrs().MTU)
	}
}
