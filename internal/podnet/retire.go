package podnet

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/netlinkx"
)

// Deleting a veth costs 15–30 ms on these kernels (RTM_DELLINK waits for an RCU grace
// period), which would dominate DEL. So DEL retires the attachment instead, in a few
// cheap calls: the host end goes down (which takes the pod end's carrier and the node's
// routes through it with it), is renamed out of the way and joins ReapGroup. weftd then
// deletes the whole group with one RTM_DELLINK, which pays the grace period once for every
// veth retired since its last pass.

// ReapGroup is the link group of retired veths. No other software uses it here; a deleted
// group is only ever weft's retired links.
const ReapGroup = 0x77

// retiredPrefix names retired host veths: "weftz" + the ifindex, unique in the namespace.
const retiredPrefix = "weftz"

// Retire makes the attachment's veth inert and queues it for ReapAll. It reports whether
// there was a veth. A missing veth is not an error: DEL is idempotent. When the pod's
// namespace is still there (podman's `network disconnect`, CRI's first DEL) the pod end is
// hidden too: down, addresses gone, renamed, so the pod sees its interface leave at once.
func Retire(node *netlink.Handle, containerID, ifName, podNetns string) (bool, error) {
	name := HostVethName(containerID, ifName)
	link, err := node.LinkByName(name)
	if netlinkx.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("find %s: %w", name, err)
	}
	if err := node.LinkSetDown(link); err != nil {
		return true, fmt.Errorf("set %s down: %w", name, err)
	}
	if podNetns != "" {
		hidePodEnd(link, ifName, podNetns)
	}
	if err := node.LinkSetGroup(link, ReapGroup); err != nil {
		return true, fmt.Errorf("retire %s: %w", name, err)
	}
	if err := node.LinkSetName(link, fmt.Sprintf("%s%d", retiredPrefix, link.Attrs().Index)); err != nil {
		return true, fmt.Errorf("rename retired %s: %w", name, err)
	}
	return true, nil
}

// hidePodEnd renames the pod end of host out of the pod's way, if it is still there and
// still ours. Failing is harmless: the reaper deletes it shortly anyway.
func hidePodEnd(host netlink.Link, ifName, podNetns string) {
	pod, err := netlinkx.HandleAt(podNetns)
	if err != nil {
		return // the namespace is gone, and the pod end with it
	}
	defer pod.Close()
	l, err := pod.LinkByName(ifName)
	if err != nil || l.Attrs().Index != host.Attrs().ParentIndex {
		return
	}
	_ = pod.LinkSetDown(l)
	if addrs, err := netlinkx.Retry(func() ([]netlink.Addr, error) { return pod.AddrList(l, netlink.FAMILY_ALL) }); err == nil {
		for _, a := range addrs {
			_ = pod.AddrDel(l, &a)
		}
	}
	_ = pod.LinkSetName(l, fmt.Sprintf("%s%d", retiredPrefix, l.Attrs().Index))
}

// ReapAll deletes every retired veth of the caller's network namespace in one request.
// weftd calls it from its own namespace, the node's, which it never leaves.
func ReapAll() error {
	req := nl.NewNetlinkRequest(unix.RTM_DELLINK, unix.NLM_F_ACK)
	req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
	req.AddData(nl.NewRtAttr(unix.IFLA_GROUP, nl.Uint32Attr(ReapGroup)))
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	if errors.Is(err, syscall.ENODEV) {
		return nil // nothing retired
	}
	return err
}

// removeRetiredPeer deletes, synchronously, a retired veth whose pod end still holds
// ifName: a re-ADD that came before weftd reaped it.
func removeRetiredPeer(node *netlink.Handle, podLink netlink.Link) (bool, error) {
	if podLink.Type() != "veth" || podLink.Attrs().ParentIndex == 0 {
		return false, nil
	}
	host, err := node.LinkByIndex(podLink.Attrs().ParentIndex)
	if err != nil || host.Attrs().Group != ReapGroup {
		return false, nil
	}
	if err := node.LinkDel(host); err != nil && !netlinkx.IsNotFound(err) {
		return false, fmt.Errorf("delete retired %s: %w", host.Attrs().Name, err)
	}
	return true, nil
}
