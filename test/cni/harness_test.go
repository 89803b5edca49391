// Package cni_test drives the real weft-cni binary through libcni, the way runtimes do,
// against a real weftd in a throwaway node namespace.
package cni_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/weftnet/weft/internal/netlinkx"
	"github.com/weftnet/weft/internal/podnet"
	"github.com/weftnet/weft/internal/probe"
	"github.com/weftnet/weft/internal/testutil"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testutil.CleanupBinaries()
	os.Exit(code)
}

// node is one node namespace with weftd and a libcni runtime in it.
type node struct {
	t     *testing.T
	ns    testutil.NS
	weftd *testutil.Weftd
	cni   *libcni.CNIConfig
}

func newNode(t *testing.T, podCIDRs string, weftdArgs ...string) *node {
	t.Helper()
	testutil.RequireRoot(t)
	bin := testutil.Binaries(t)
	n := &node{t: t, ns: testutil.NewNS(t, "node")}
	n.weftd = testutil.StartWeftd(t, n.ns, podCIDRs, weftdArgs...)
	n.cni = libcni.NewCNIConfigWithCacheDir([]string{bin, "/usr/lib/cni"}, t.TempDir(), nil)
	return n
}

// conflist builds a network list; plugin is the first plugin's JSON body (no braces) and
// gets the agent socket filled in.
func (n *node) conflist(version, name, plugin string, more ...string) *libcni.NetworkConfigList {
	n.t.Helper()
	plugins := fmt.Sprintf(`{"type":"weft-cni","socket":%q,%s}`, n.weftd.Socket(), plugin)
	for _, m := range more {
		plugins += "," + m
	}
	raw := fmt.Sprintf(`{"cniVersion":%q,"name":%q,"plugins":[%s]}`, version, name, plugins)
	list, err := libcni.ConfListFromBytes([]byte(raw))
	if err != nil {
		n.t.Fatalf("conflist %s: %v", raw, err)
	}
	return list
}

// inNode runs fn in the node namespace, where runtimes exec plugins.
func (n *node) inNode(fn func() error) error { return probe.InNS(n.ns.Path, fn) }

func (n *node) add(list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) (*current.Result, error) {
	var res types.Result
	err := n.inNode(func() error {
		var err error
		res, err = n.cni.AddNetworkList(context.Background(), list, rt)
		return err
	})
	if err != nil {
		return nil, err
	}
	return current.NewResultFromResult(res)
}

func (n *node) mustAdd(list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) *current.Result {
	n.t.Helper()
	r, err := n.add(list, rt)
	if err != nil {
		n.t.Fatalf("ADD %s: %v", rt.ContainerID, err)
	}
	return r
}

func (n *node) del(list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	return n.inNode(func() error { return n.cni.DelNetworkList(context.Background(), list, rt) })
}

func (n *node) check(list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	return n.inNode(func() error { return n.cni.CheckNetworkList(context.Background(), list, rt) })
}

func (n *node) gc(list *libcni.NetworkConfigList, valid []types.GCAttachment) error {
	return n.inNode(func() error {
		return n.cni.GCNetworkList(context.Background(), list, &libcni.GCArgs{ValidAttachments: valid})
	})
}

func (n *node) status(list *libcni.NetworkConfigList) error {
	return n.inNode(func() error { return n.cni.GetStatusNetworkList(context.Background(), list) })
}

// pod makes a pod namespace and the runtime config that attaches it.
func (n *node) pod(id string) (testutil.NS, *libcni.RuntimeConf) {
	p := testutil.NewNS(n.t, "pod")
	return p, &libcni.RuntimeConf{ContainerID: id, NetNS: p.Path, IfName: "eth0"}
}

func podIPs(r *current.Result) []netip.Addr {
	var out []netip.Addr
	for _, ip := range r.IPs {
		a, _ := netip.AddrFromSlice(ip.Address.IP)
		out = append(out, a.Unmap())
	}
	return out
}

func ping(t *testing.T, from testutil.NS, to netip.Addr) {
	t.Helper()
	var err error
	for range 3 { // the first echo may wait on neighbour resolution
		if _, err = probe.Ping(from.Path, to, 56, false, time.Second); err == nil {
			return
		}
	}
	t.Errorf("ping %s from %s: %v", to, from.Name, err)
}

func cniCode(err error) uint {
	var e *types.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

// waitReaped waits until weftd has deleted every retired veth in the node namespace and
// fails if any other veth remains beyond want.
func (n *node) waitReaped(want int) {
	n.t.Helper()
	h := n.ns.Handle(n.t)
	var veths, retired int
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		links, err := netlinkx.Retry(h.LinkList)
		if err != nil {
			n.t.Fatal(err)
		}
		veths, retired = 0, 0
		for _, l := range links {
			if l.Type() != "veth" {
				continue
			}
			veths++
			if l.Attrs().Group == podnet.ReapGroup {
				retired++
			}
		}
		if retired == 0 {
			break
		}
	}
	if retired > 0 || veths != want {
		n.t.Errorf("node has %d veths (%d retired, not reaped), want %d live", veths, retired, want)
	}
}
