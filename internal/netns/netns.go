// Package netns creates and deletes named network namespaces (as `ip netns add` does) for
// the lab and the tests, without ever leaving a pooled thread in the new namespace.
package netns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
)

// Dir is where named namespaces are bind-mounted.
const Dir = "/run/netns"

// Create makes the namespace name, brings its loopback up and returns its path.
func Create(name string) (string, error) {
	path := filepath.Join(Dir, name)
	if _, err := os.Stat(path); err == nil {
		return "", fmt.Errorf("network namespace %s already exists", name)
	}
	errc := make(chan error, 1)
	// netns.NewNamed switches the calling thread into the new namespace. It runs on a
	// goroutine of its own that never unlocks its thread, so the thread dies with it
	// instead of going back to the pool in the wrong namespace.
	go func() {
		runtime.LockOSThread()
		h, err := vnetns.NewNamed(name)
		if err == nil {
			h.Close()
			err = upLoopback(path)
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		return "", fmt.Errorf("create namespace %s: %w", name, err)
	}
	return path, nil
}

// Delete removes a namespace made by Create; a missing one is not an error.
func Delete(name string) error {
	if _, err := os.Stat(filepath.Join(Dir, name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return vnetns.DeleteNamed(name)
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
