// Package netns creates and deletes named network namespaces exactly as `ip netns add` and
// `ip netns del` do, for the lab and the tests, without ever leaving a pooled thread in the
// new namespace.
//
// The iproute2 way matters when weft shares a host with iproute2 or podman: both first make
// /run/netns a shared mount (binding it onto itself when it is not a mount point yet). A
// tool that bind-mounts namespaces into a plain /run/netns has them hidden as soon as the
// other tool makes that mount, and they can then neither be entered nor removed. Doing the
// same step first, whichever tool comes first, keeps every namespace visible to all.
package netns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Dir is where named namespaces are bind-mounted.
const Dir = "/run/netns"

// ErrHidden says a namespace file is no longer a mount point in this mount namespace.
var ErrHidden = errors.New("namespace file is not a mount point")

// dirMu serialises the shared-mount step within this process (ip netns uses no lock; two
// processes racing both end with a shared mount, as with iproute2).
var dirMu sync.Mutex

// Create makes the namespace name, brings its loopback up and returns its path.
func Create(name string) (string, error) {
	if name == "" || name == "." || name == ".." || filepath.Base(name) != name {
		return "", fmt.Errorf("invalid namespace name %q", name)
	}
	if err := prepareDir(); err != nil {
		return "", err
	}
	path := filepath.Join(Dir, name)
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return "", fmt.Errorf("network namespace %s already exists", name)
		}
		return "", fmt.Errorf("create namespace file %s: %w", path, err)
	}
	f.Close()
	if err := bindNew(path); err != nil {
		_ = os.Remove(path)
		return "", fmt.Errorf("create namespace %s: %w", name, err)
	}
	if err := upLoopback(path); err != nil {
		_ = Delete(name)
		return "", fmt.Errorf("create namespace %s: loopback up: %w", name, err)
	}
	return path, nil
}

// prepareDir makes Dir exist and be a shared mount, as iproute2's netns_add does, so that
// bind mounts made below it propagate to every peer and no later self-bind can hide them.
func prepareDir() error {
	dirMu.Lock()
	defer dirMu.Unlock()
	if err := os.MkdirAll(Dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", Dir, err)
	}
	madeBind := false
	for {
		err := unix.Mount("", Dir, "none", unix.MS_SHARED|unix.MS_REC, "")
		if err == nil {
			return nil
		}
		// EINVAL: Dir is not a mount point yet. Bind it onto itself once, then retry.
		if !errors.Is(err, unix.EINVAL) || madeBind {
			return fmt.Errorf("make %s a shared mount: %w", Dir, err)
		}
		if err := unix.Mount(Dir, Dir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s onto itself: %w", Dir, err)
		}
		madeBind = true
	}
}

// bindNew unshares a new network namespace on a thread of its own and bind-mounts it onto
// path. The goroutine never unlocks its thread, so the thread dies with it instead of going
// back to the pool in the wrong namespace.
func bindNew(path string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		src := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		if err := unix.Mount(src, path, "none", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("bind %s: %w", path, err)
			return
		}
		errc <- nil
	}()
	return <-errc
}

// Delete removes a namespace made by Create (or by ip netns add): it detaches the bind
// mount and removes the file. A missing namespace is not an error. A file that is no longer
// a mount point (hidden by a mount made over Dir after it) is removed and reported with
// ErrHidden, since the namespace behind it can no longer be reached from here.
func Delete(name string) error {
	path := filepath.Join(Dir, name)
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	umountErr := unix.Unmount(path, unix.MNT_DETACH)
	rmErr := os.Remove(path)
	if errors.Is(rmErr, os.ErrNotExist) {
		rmErr = nil
	}
	if errors.Is(umountErr, unix.EINVAL) {
		// Not a mount point here. Either it was never bound, or a mount made over Dir after
		// it covers its mount (unlinking it then fails with EBUSY).
		return fmt.Errorf("delete namespace %s: %w (remove: %v): a mount made over %s after the namespace hides it; "+
			"a tool bound %s onto itself without making it a shared mount first", name, ErrHidden, rmErr, Dir, Dir)
	}
	if umountErr != nil {
		return fmt.Errorf("unmount namespace %s: %w", path, umountErr)
	}
	if rmErr != nil {
		return fmt.Errorf("remove namespace file %s: %w", path, rmErr)
	}
	return nil
}

// List returns the names of the files in Dir.
func List() ([]string, error) {
	ents, err := os.ReadDir(Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names, nil
}

func upLoopback(path string) error {
	nsh, err := vnetns.GetFromPath(path)
	if err != nil {
		return err
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return err
	}
	return h.LinkSetUp(lo)
}
