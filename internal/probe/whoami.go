package probe

import (
	"io"
	"net"
	"net/netip"
	"strings"
	"time"
)

// ListenUDP opens a UDP socket inside the namespace at nsPath.
func ListenUDP(nsPath string, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := InNS(nsPath, func() error {
		var err error
		pc, err = net.ListenPacket("udp", addr)
		return err
	})
	return pc, err
}

// Whoami answers every TCP connection on ln with "name client-address", then closes it:
// a backend that says which one it is and whom it saw (load balancing and source
// preservation checks).
func Whoami(ln net.Listener, name string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		_, _ = c.Write([]byte(name + " " + c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap().String()))
		c.Close()
	}
}

// WhoamiUDP answers every datagram on pc with "name client-address".
func WhoamiUDP(pc net.PacketConn, name string) {
	buf := make([]byte, 2048)
	for {
		_, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		_, _ = pc.WriteTo([]byte(name+" "+from.(*net.UDPAddr).AddrPort().Addr().Unmap().String()), from)
	}
}

// Name is the backend name of a Whoami answer.
func Name(answer string) string {
	name, _, _ := strings.Cut(answer, " ")
	return name
}

// AskTCP connects from the namespace at nsPath to addr and returns what the server says
// before it closes.
func AskTCP(nsPath string, addr netip.AddrPort, timeout time.Duration) (string, error) {
	c, err := DialTCP(nsPath, addr, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	b, err := io.ReadAll(c)
	return string(b), err
}

// AskUDP sends one datagram from the namespace at nsPath to addr and returns the answer.
func AskUDP(nsPath string, addr netip.AddrPort, timeout time.Duration) (string, error) {
	var c net.Conn
	if err := InNS(nsPath, func() error {
		var err error
		c, err = net.Dial("udp", addr.String())
		return err
	}); err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("?")); err != nil {
		return "", err
	}
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	return string(buf[:n]), err
}
