package podnet

import (
	"fmt"
	"math/rand/v2"
	"net"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// vethRequest is everything a veth pair is created with, in one RTM_NEWLINK.
type vethRequest struct {
	hostName, podName string
	hostMAC, podMAC   net.HardwareAddr
	mtu               int
	master            int // bridge ifindex, 0 for none
	podNSFd           int
	index             int // filled in: the host end's ifindex
}

// newVeth makes the pair in the caller's namespace (the node's) with its peer already in
// the pod's, the host end up and enslaved, and returns the host end's ifindex. The library's
// LinkAdd takes four round trips for the same (create, look the index up, set the master,
// look up again); the kernel accepts IFLA_MASTER at creation and echoes the new link back.
func newVeth(r vethRequest) (int, error) {
	req := nl.NewNetlinkRequest(unix.RTM_NEWLINK, unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ACK|unix.NLM_F_ECHO)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Flags, msg.Change = unix.IFF_UP, unix.IFF_UP
	req.AddData(msg)
	req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(r.hostName)))
	req.AddData(nl.NewRtAttr(unix.IFLA_MTU, nl.Uint32Attr(uint32(r.mtu))))
	req.AddData(nl.NewRtAttr(unix.IFLA_ADDRESS, r.hostMAC))
	if r.master != 0 {
		req.AddData(nl.NewRtAttr(unix.IFLA_MASTER, nl.Uint32Attr(uint32(r.master))))
	}
	info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("veth"))
	data := info.AddRtAttr(nl.IFLA_INFO_DATA, nil)
	peer := data.AddRtAttr(nl.VETH_INFO_PEER, nil)
	nl.NewIfInfomsgChild(peer, unix.AF_UNSPEC)
	peer.AddRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(r.podName))
	peer.AddRtAttr(unix.IFLA_MTU, nl.Uint32Attr(uint32(r.mtu)))
	peer.AddRtAttr(unix.IFLA_ADDRESS, r.podMAC)
	peer.AddRtAttr(unix.IFLA_NET_NS_FD, nl.Uint32Attr(uint32(r.podNSFd)))
	req.AddData(info)

	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
	if err != nil {
		return 0, err
	}
	for _, m := range msgs {
		if ifi := nl.DeserializeIfInfomsg(m); ifi.Index > 0 {
			return int(ifi.Index), nil
		}
	}
	return 0, fmt.Errorf("kernel did not echo the new link %s", r.hostName)
}

// randomMAC returns a random locally administered unicast MAC, as the kernel would pick.
// weft picks it itself so it knows both ends' MACs without asking the kernel.
func randomMAC() net.HardwareAddr {
	v := rand.Uint64()
	mac := net.HardwareAddr{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24), byte(v >> 32), byte(v >> 40)}
	mac[0] = (mac[0] | 0x02) &^ 0x01
	return mac
}
