// Package netlinkx holds the few helpers every netlink user in weft needs: handles bound to
// a namespace, dump retries, and error classification.
package netlinkx

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Route protocols mark the routes weft installs, so they can be recognised and swept:
// pod host routes (ptp mode), fabric routes to other nodes' pod blocks, and routes
// learned over BGP.
const (
	RouteProtocol       netlink.RouteProtocol = 0x77
	RouteProtocolFabric netlink.RouteProtocol = 0x78
	RouteProtocolBGP    netlink.RouteProtocol = 0x79
)

// HandleAt returns a netlink handle whose sockets live in the namespace at path. Calls on
// it need no namespace switching, so no goroutine ever runs in the wrong namespace.
func HandleAt(path string) (*netlink.Handle, error) {
	nsh, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in %s: %w", path, err)
	}
	return h, nil
}

// IsNotFound reports whether err means the object does not exist.
func IsNotFound(err error) bool {
	var lnf netlink.LinkNotFoundError
	return errors.As(err, &lnf) || errors.Is(err, syscall.ENODEV) || errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ESRCH)
}

// IsExist reports whether err means the object already exists.
func IsExist(err error) bool { return errors.Is(err, syscall.EEXIST) }

// Retry runs a dump until it is not interrupted by a concurrent change (at most 5 times).
func Retry[T any](dump func() (T, error)) (T, error) {
	var out T
	var err error
	for range 5 {
		out, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
	}
	return out, err
}
