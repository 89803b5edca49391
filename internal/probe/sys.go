package probe

import (
	"net"
	"syscall"

	"golang.org/x/net/icmp"
	"golang.org/x/sys/unix"
)

func setDontFragment(conn *icmp.PacketConn) error {
	pc, ok := conn.IPv4PacketConn().PacketConn.(*net.IPConn)
	if !ok {
		return nil
	}
	raw, err := pc.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = raw.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DO)
	})
	if err != nil {
		return err
	}
	return serr
}
