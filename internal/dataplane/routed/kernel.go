package routed

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Kernel installs routes in one network namespace. Changes go to the kernel in batches:
// many route messages in one sendmsg instead of one round trip per route (10,000 routes:
// a few dozen system calls, not 20,000). Only a batch's last message asks for an
// acknowledgement: the kernel handles a sendmsg's messages in order, within the call,
// and answers the others only when they fail, so the reply to the last one closes the
// batch and everything before it that failed has been reported by then.
type Kernel struct {
	h    *netlink.Handle
	sock *nl.NetlinkSocket

	current map[netip.Prefix][]hop // what the kernel holds, as of the last dump and changes since
	dumped  time.Time
	// learned are the destinations a sync wanted during this Kernel's life: once one of
	// them is no longer wanted, it was withdrawn, and goes even before the view is
	// complete (only routes from before a restart wait for the sweep). unresolved are
	// those of them no next hop of which resolves.
	learned, unresolved map[netip.Prefix]bool
	rbuf                []byte // replies are read into it
	// resolved caches next hops' resolutions for a little while (resolveFor).
	resolved   map[netip.Addr]hop
	resolvedAt time.Time
}

// dumpEvery bounds how long Sync trusts its record of the kernel: a route someone else
// deleted or changed is repaired within this.
const dumpEvery = 30 * time.Second

// Open returns a Kernel for the namespace at nsPath ("": the caller's).
func Open(nsPath string) (*Kernel, error) {
	target := netns.None()
	if nsPath != "" {
		var err error
		if target, err = netns.GetFromPath(nsPath); err != nil {
			return nil, err
		}
		defer target.Close()
	}
	h, err := netlink.NewHandleAt(target)
	if err != nil {
		return nil, err
	}
	sock, err := nl.GetNetlinkSocketAt(target, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		h.Close()
		return nil, err
	}
	// Room for a whole batch of acknowledgements.
	_ = sock.SetReceiveBufferSize(4<<20, true)
	return &Kernel{h: h, sock: sock}, nil
}

// Close releases the sockets.
func (k *Kernel) Close() {
	k.h.Close()
	k.sock.Close()
}

type op struct {
	dst     netip.Prefix
	hops    []hop
	del     bool
	replace bool // for the count only
}

// batchSize bounds the messages per sendmsg, and so the acknowledgements waiting in the
// socket's receive buffer.
const batchSize = 256

// apply sends ops in batches and returns each one's error.
func (k *Kernel) apply(ops []op) []error {
	errs := make([]error, len(ops))
	var buf []byte
	for start := 0; start < len(ops); start += batchSize {
		end := min(start+batchSize, len(ops))
		buf = buf[:0]
		bySeq := make(map[uint32]int, end-start)
		var last uint32
		for i := start; i < end; i++ {
			req := message(ops[i], i == end-1)
			bySeq[req.Seq], last = i, req.Seq
			buf = append(buf, req.Serialize()...)
		}
		if err := unix.Sendto(k.sock.GetFd(), buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			for i := start; i < end; i++ {
				errs[i] = err
			}
			continue
		}
		if err := k.replies(func(seq uint32, code int32) bool {
			if i, ok := bySeq[seq]; ok && code != 0 {
				errs[i] = syscall.Errno(-code)
			}
			return seq == last
		}); err != nil {
			// Without the closing reply, nothing of the batch is known to have worked.
			for i := start; i < end; i++ {
				errs[i] = fmt.Errorf("reading the kernel's replies: %w", err)
			}
		}
	}
	return errs
}

// replies reads the kernel's replies (NLMSG_ERROR: an error code, 0 for an
// acknowledgement) into one reused buffer, passing each to reply until it returns true.
// The kernel has queued them by the time sendmsg returns; the socket is non-blocking,
// so an empty one is waited for with poll.
func (k *Kernel) replies(reply func(seq uint32, code int32) bool) error {
	if k.rbuf == nil {
		k.rbuf = make([]byte, 64<<10)
	}
	fd := k.sock.GetFd()
	for {
		n, _, err := unix.Recvfrom(fd, k.rbuf, 0)
		if err == unix.EAGAIN || err == unix.EINTR {
			if _, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, int(replyWait/time.Millisecond)); err != nil && err != unix.EINTR {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		for b := k.rbuf[:n]; len(b) >= unix.NLMSG_HDRLEN; {
			l := int(binary.NativeEndian.Uint32(b[0:4]))
			if l < unix.NLMSG_HDRLEN || l > len(b) {
				return fmt.Errorf("malformed netlink reply")
			}
			typ, seq := binary.NativeEndian.Uint16(b[4:6]), binary.NativeEndian.Uint32(b[8:12])
			if typ == unix.NLMSG_ERROR && l >= unix.NLMSG_HDRLEN+4 {
				if reply(seq, int32(binary.NativeEndian.Uint32(b[16:20]))) {
					return nil
				}
			}
			b = b[min(len(b), (l+unix.NLMSG_ALIGNTO-1)&^(unix.NLMSG_ALIGNTO-1)):]
		}
	}
}

// replyWait bounds one wait for the kernel's replies (they are normally there at once).
const replyWait = 5 * time.Second

// message is the RTM_NEWROUTE (replace) or RTM_DELROUTE for an op; ack asks for a reply
// even on success.
func message(o op, ack bool) *nl.NetlinkRequest {
	typ, flags := unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE
	if o.del {
		typ, flags = unix.RTM_DELROUTE, 0
	}
	if ack {
		flags |= unix.NLM_F_ACK
	}
	req := nl.NewNetlinkRequest(typ, flags)
	msg := nl.NewRtMsg()
	msg.Family = unix.AF_INET
	if o.dst.Addr().Is6() {
		msg.Family = unix.AF_INET6
	}
	msg.Dst_len = uint8(o.dst.Bits())
	msg.Table = unix.RT_TABLE_MAIN
	msg.Protocol = uint8(RouteProtocol)
	if o.del {
		msg.Scope = unix.RT_SCOPE_NOWHERE
	}
	req.AddData(msg)
	req.AddData(nl.NewRtAttr(unix.RTA_DST, o.dst.Addr().AsSlice()))
	switch {
	case o.del:
	case len(o.hops) == 1:
		req.AddData(nl.NewRtAttr(unix.RTA_GATEWAY, o.hops[0].gw.AsSlice()))
		req.AddData(nl.NewRtAttr(unix.RTA_OIF, nl.Uint32Attr(uint32(o.hops[0].ifindex))))
	default:
		var buf []byte
		for _, h := range o.hops {
			rtnh := &nl.RtNexthop{RtNexthop: unix.RtNexthop{Ifindex: int32(h.ifindex)},
				Children: []nl.NetlinkRequestData{nl.NewRtAttr(unix.RTA_GATEWAY, h.gw.AsSlice())}}
			buf = append(buf, rtnh.Serialize()...)
		}
		req.AddData(nl.NewRtAttr(unix.RTA_MULTIPATH, buf))
	}
	return req
}
