package netns_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/netns"
	"github.com/weftnet/weft/internal/testutil"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testutil.CleanupBinaries()
	os.Exit(code)
}

// TestCoexistsWithIPNetns is the fresh-host scenario: /run/netns starts as a plain
// directory; weft's namespaces and iproute2's are made in both orders, all stay usable,
// and deleting them leaves no file behind.
func TestCoexistsWithIPNetns(t *testing.T) {
	if !testutil.InFreshMountNS(t) {
		return
	}
	testutil.RequireTool(t, "ip")
	before, _ := netns.List()
	if testutil.IsMountPoint(netns.Dir) {
		t.Fatalf("%s is a mount point at the start", netns.Dir)
	}
	tag := fmt.Sprintf("wt%d", os.Getpid())
	ipAdd := func(name string) {
		t.Helper()
		if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
			t.Fatalf("ip netns add %s: %v %s", name, err, out)
		}
	}
	ipDel := func(name string) {
		t.Helper()
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v %s", name, err, out)
		}
	}

	// weft first, then iproute2, then weft again.
	first, err := netns.Create(tag + "-a")
	if err != nil {
		t.Fatal(err)
	}
	if !testutil.IsMountPoint(netns.Dir) {
		t.Errorf("%s was not made a mount point", netns.Dir)
	}
	ipAdd(tag + "-b")
	second, err := netns.Create(tag + "-c")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{first, second, filepath.Join(netns.Dir, tag+"-b")} {
		usable(t, p)
		// iproute2 must see weft's namespaces and weft iproute2's.
		if out, err := exec.Command("ip", "netns", "exec", filepath.Base(p), "ip", "link", "show", "lo").CombinedOutput(); err != nil {
			t.Errorf("ip netns exec %s: %v %s", filepath.Base(p), err, out)
		}
	}
	// Both tools delete each other's namespaces too.
	if err := netns.Delete(tag + "-b"); err != nil {
		t.Error(err)
	}
	ipDel(tag + "-a")
	if err := netns.Delete(tag + "-c"); err != nil {
		t.Error(err)
	}
	// Deleting what is gone is fine.
	if err := netns.Delete(tag + "-c"); err != nil {
		t.Error(err)
	}
	after, _ := netns.List()
	if !slices.Equal(before, after) {
		t.Errorf("%s held %v before and %v after", netns.Dir, before, after)
	}
}

// TestHiddenNamespaceIsReported makes the old failure on purpose (a namespace bound into a
// plain /run/netns, then the directory bound onto itself) and checks Delete names it.
func TestHiddenNamespaceIsReported(t *testing.T) {
	if !testutil.InFreshMountNS(t) {
		return
	}
	name := fmt.Sprintf("wt%d-hidden", os.Getpid())
	path := filepath.Join(netns.Dir, name)
	// What a tool that skips the shared-mount step leaves: a plain file bound to a namespace.
	if err := os.WriteFile(path, nil, 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// The self-bind first, then the namespace under it, then the file.
		_ = unix.Unmount(netns.Dir, unix.MNT_DETACH)
		_ = unix.Unmount(path, unix.MNT_DETACH)
		_ = os.Remove(path)
	})
	// This thread moves to a new namespace and stays locked: it dies with the test.
	runtime.LockOSThread()
	h, err := vnetns.New()
	if err != nil {
		t.Fatal(err)
	}
	h.Close()
	if err := unix.Mount(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()), path, "none", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind: %v", err)
	}
	// A later non-recursive self-bind of the directory hides it.
	if err := unix.Mount(netns.Dir, netns.Dir, "none", unix.MS_BIND, ""); err != nil {
		t.Fatalf("self-bind: %v", err)
	}
	err = netns.Delete(name)
	if err == nil || !errors.Is(err, netns.ErrHidden) {
		t.Fatalf("Delete of a hidden namespace: %v, want ErrHidden", err)
	}
	t.Log(err)
}

// TestTestHelpersOnFreshHost runs the test helpers' namespaces beside ip netns.
func TestTestHelpersOnFreshHost(t *testing.T) {
	if !testutil.InFreshMountNS(t) {
		return
	}
	var names []string
	t.Run("make", func(t *testing.T) {
		a := testutil.NewNS(t, "h")
		if out, err := exec.Command("ip", "netns", "add", a.Name+"x").CombinedOutput(); err != nil {
			t.Fatalf("ip netns add: %v %s", err, out)
		}
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", a.Name+"x").Run() })
		b := testutil.NewNS(t, "h")
		names = append(names, a.Name, b.Name, a.Name+"x")
		usable(t, a.Path)
		usable(t, b.Path)
		if out, err := a.Command("ip", "link", "show", "lo").CombinedOutput(); err != nil {
			t.Errorf("nsenter into %s: %v %s", a.Name, err, out)
		}
	})
	// Only this test's names are compared: other test binaries make and remove their
	// own namespaces in the same directory meanwhile.
	after, _ := netns.List()
	for _, n := range names {
		if slices.Contains(after, n) {
			t.Errorf("helpers left %s (made %v)", n, names)
		}
	}
}

// usable checks path is a live network namespace: a link can be made in it.
func usable(t *testing.T, path string) {
	t.Helper()
	nsh, err := vnetns.GetFromPath(path)
	if err != nil {
		t.Errorf("open %s: %v", path, err)
		return
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		t.Errorf("handle in %s: %v", path, err)
		return
	}
	defer h.Close()
	if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "probe0"}}); err != nil {
		t.Errorf("%s is not a usable namespace: %v", path, err)
	}
}
