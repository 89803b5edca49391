package lab

import (
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// lockThreadForever pins the calling goroutine to its thread without ever unlocking, so
// the Go runtime destroys the thread when the goroutine ends.
func lockThreadForever() { runtime.LockOSThread() }

func upLoopback(nsPath string) error {
	nsh, err := netns.GetFromPath(nsPath)
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
