package sockproxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// DestroyConnectionsTo aborts the TCP sockets in the network namespace at path that are
// connected to one of gone (endpoints that went away): a connection the socket LB pointed
// straight at a backend never meets the conntrack cleanup that moves NATed flows, so the
// application would otherwise wait out a timeout. The kernel resets the peer and the
// application's next call fails with ECONNABORTED.
func DestroyConnectionsTo(path string, gone map[netip.AddrPort]bool) (int, error) {
	n := 0
	err := ns.WithNetNSPath(path, func(ns.NetNS) error {
		var errs []error
		for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
			socks, err := netlink.SocketDiagTCP(fam)
			if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
				errs = append(errs, err)
				continue
			}
			for _, s := range socks {
				dst, _ := netip.AddrFromSlice(s.ID.Destination)
				if !gone[netip.AddrPortFrom(dst.Unmap(), s.ID.DestinationPort)] {
					continue
				}
				if err := destroy(fam, s.ID); err != nil && !errors.Is(err, unix.ENOENT) {
					errs = append(errs, err)
					continue
				}
				n++
			}
		}
		return errors.Join(errs...)
	})
	if err != nil {
		return n, fmt.Errorf("abort connections in %s: %w", path, err)
	}
	return n, nil
}

// destroyRequest is an inet_diag_req_v2 naming one socket exactly (its cookie included).
type destroyRequest struct {
	family uint8
	id     netlink.SocketID
}

func (r *destroyRequest) Len() int { return 56 }

func (r *destroyRequest) Serialize() []byte {
	b := make([]byte, 56)
	b[0], b[1] = r.family, unix.IPPROTO_TCP
	binary.NativeEndian.PutUint32(b[4:], 0xfff) // any state
	binary.BigEndian.PutUint16(b[8:], r.id.SourcePort)
	binary.BigEndian.PutUint16(b[10:], r.id.DestinationPort)
	put := func(off int, ip []byte) {
		if a, ok := netip.AddrFromSlice(ip); ok {
			if r.family == unix.AF_INET {
				v4 := a.Unmap().As4()
				copy(b[off:], v4[:])
			} else {
				v6 := a.As16()
				copy(b[off:], v6[:])
			}
		}
	}
	put(12, r.id.Source)
	put(28, r.id.Destination)
	binary.NativeEndian.PutUint32(b[44:], r.id.Interface)
	binary.NativeEndian.PutUint32(b[48:], r.id.Cookie[0])
	binary.NativeEndian.PutUint32(b[52:], r.id.Cookie[1])
	return b
}

func destroy(family uint8, id netlink.SocketID) error {
	req := nl.NewNetlinkRequest(nl.SOCK_DESTROY, unix.NLM_F_ACK)
	req.AddData(&destroyRequest{family: family, id: id})
	_, err := req.Execute(unix.NETLINK_INET_DIAG, 0)
	return err
}
