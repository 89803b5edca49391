// Package arch_test enforces the dependency rules of docs/architecture.md over `go list -deps`.
package arch_test

import (
	"os/exec"
	"strings"
	"testing"
)

func deps(t *testing.T, pkg string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", pkg).Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", pkg, err)
	}
	return strings.Fields(string(out))
}

func forbid(t *testing.T, pkg string, prefixes ...string) {
	t.Helper()
	for _, d := range deps(t, pkg) {
		for _, p := range prefixes {
			if d == p || strings.HasPrefix(d, p+"/") {
				t.Errorf("%s depends on %s (forbidden: %s)", pkg, d, p)
			}
		}
	}
}

var kernelAndStores = []string{
	"github.com/vishvananda/netlink", "github.com/vishvananda/netns", "github.com/google/nftables",
	"github.com/cilium/ebpf", "go.etcd.io/bbolt", "go.etcd.io/etcd", "github.com/osrg/gobgp",
}

// weft-cni is exec'd on every pod start: nothing heavy may be linked in.
func TestWeftCNIStaysLean(t *testing.T) {
	forbid(t, "github.com/weftnet/weft/cmd/weft-cni",
		"go.etcd.io/etcd", "go.etcd.io/bbolt", "github.com/osrg/gobgp", "google.golang.org/grpc",
		"github.com/prometheus", "net/http", "go.opentelemetry.io", "github.com/spf13/cobra",
		"github.com/google/nftables", "github.com/cilium/ebpf")
}

// weft-ingress proxies HTTP in user space: it links no library that programs the kernel
// (routes, nftables, eBPF) nor the BGP speaker.
func TestIngressTouchesNoKernel(t *testing.T) {
	forbid(t, "github.com/weftnet/weft/cmd/weft-ingress",
		"github.com/vishvananda/netlink", "github.com/vishvananda/netns", "github.com/google/nftables",
		"github.com/cilium/ebpf", "github.com/osrg/gobgp")
}

// Level 0 and 1 packages are pure: no kernel or datastore library.
func TestPurePackagesTouchNoKernel(t *testing.T) {
	for _, pkg := range []string{"netcalc", "ipam", "config", "cniapi", "mtu", "network", "reconcile", "lease", "store", "resources", "endpoints", "proxy", "proxy/maglev", "manifest", "dataplane", "dns", "policy", "ingress/route"} {
		forbid(t, "github.com/weftnet/weft/internal/"+pkg, kernelAndStores...)
	}
}

// Adapters do not import each other, nor the composition layer.
func TestAdaptersStayApart(t *testing.T) {
	adapters := []string{"podnet", "dataplane/masq", "dataplane/fastpath", "dataplane/routed", "bgp", "policy/nftpolicy", "store/boltstore", "hostnet", "pmtu", "netns"}
	for _, a := range adapters {
		var others []string
		for _, b := range adapters {
			if b != a {
				others = append(others, "github.com/weftnet/weft/internal/"+b)
			}
		}
		others = append(others, "github.com/weftnet/weft/internal/agent", "github.com/weftnet/weft/internal/cni",
			"github.com/weftnet/weft/internal/cli", "github.com/weftnet/weft/internal/lab")
		forbid(t, "github.com/weftnet/weft/internal/"+a, others...)
	}
}

// GoBGP (and its protobuf types) stay inside internal/bgp: no other package imports it.
func TestGoBGPStaysInItsAdapter(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, "github.com/weftnet/weft/...").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		for _, imp := range f[1:] {
			if strings.HasPrefix(imp, "github.com/osrg/gobgp") && f[0] != "github.com/weftnet/weft/internal/bgp" {
				t.Errorf("%s imports %s: only internal/bgp may", f[0], imp)
			}
		}
	}
}
