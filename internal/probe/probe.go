// Package probe checks reachability from inside a network namespace: ICMP echo and TCP.
// Sockets are opened on a thread switched into the namespace and then used from anywhere,
// so no goroutine other than the opener ever runs in the pod's namespace.
package probe

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// InNS runs fn on a locked thread inside the namespace at path.
func InNS(path string, fn func() error) error {
	return ns.WithNetNSPath(path, func(ns.NetNS) error { return fn() })
}

// Ping sends one ICMP echo of payload bytes from the namespace at nsPath to dst and waits
// up to timeout for the reply. With dontFragment set, an IPv4 probe larger than the path
// MTU fails instead of being fragmented.
func Ping(nsPath string, dst netip.Addr, payload int, dontFragment bool, timeout time.Duration) (time.Duration, error) {
	network, proto := "ip4:icmp", 1
	var typ icmp.Type = ipv4.ICMPTypeEcho
	if dst.Is6() {
		network, proto, typ = "ip6:ipv6-icmp", 58, ipv6.ICMPTypeEchoRequest
	}
	var conn *icmp.PacketConn
	err := InNS(nsPath, func() error {
		var err error
		conn, err = icmp.ListenPacket(network, "")
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("open ICMP socket: %w", err)
	}
	defer conn.Close()
	if dontFragment && dst.Is4() {
		if err := setDontFragment(conn); err != nil {
			return 0, err
		}
	}
	id := os.Getpid() & 0xffff
	seq := int(time.Now().UnixNano() & 0xffff)
	msg := icmp.Message{Type: typ, Body: &icmp.Echo{ID: id, Seq: seq, Data: make([]byte, payload)}}
	b, err := msg.Marshal(nil)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	deadline := start.Add(timeout)
	_ = conn.SetDeadline(deadline)
	if _, err := conn.WriteTo(b, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return 0, fmt.Errorf("send echo to %s: %w", dst, err)
	}
	buf := make([]byte, 65536)
	for {
		n, _, err := conn.ReadFrom(buf)
		if err != nil {
			return 0, fmt.Errorf("no echo reply from %s: %w", dst, err)
		}
		reply, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil {
			continue
		}
		switch body := reply.Body.(type) {
		case *icmp.Echo:
			if (reply.Type == ipv4.ICMPTypeEchoReply || reply.Type == ipv6.ICMPTypeEchoReply) && body.Seq == seq {
				return time.Since(start), nil
			}
		case *icmp.DstUnreach:
			return 0, fmt.Errorf("%s unreachable", dst)
		case *icmp.PacketTooBig:
			return 0, fmt.Errorf("%w: path MTU %d", ErrTooBig, body.MTU)
		}
	}
}

// ErrTooBig means the probe exceeded the path MTU.
var ErrTooBig = errors.New("packet too big")

// DialTCP connects from the namespace at nsPath to addr.
func DialTCP(nsPath string, addr netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	var conn net.Conn
	err := InNS(nsPath, func() error {
		var err error
		conn, err = net.DialTimeout("tcp", addr.String(), timeout)
		return err
	})
	return conn, err
}

// ListenTCP opens a listener inside the namespace at nsPath.
func ListenTCP(nsPath string, addr string) (net.Listener, error) {
	var ln net.Listener
	err := InNS(nsPath, func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	})
	return ln, err
}

// Echo serves ln by echoing every connection back until ln closes.
func Echo(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			buf := make([]byte, 32<<10)
			for {
				n, err := c.Read(buf)
				if err != nil {
					return
				}
				if _, err := c.Write(buf[:n]); err != nil {
					return
				}
			}
		}()
	}
}

// TCPEcho checks that a round trip through an echo server at addr works.
func TCPEcho(nsPath string, addr netip.AddrPort, timeout time.Duration) error {
	c, err := DialTCP(nsPath, addr, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	want := []byte("weft-probe")
	if _, err := c.Write(want); err != nil {
		return err
	}
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if string(got) != string(want) {
		return fmt.Errorf("echo returned %q", got)
	}
	return nil
}

// Pinger pings dst from a namespace every interval until Stop, counting what is lost, so a
// test can show that traffic survives a restart.
type Pinger struct {
	sent, lost int64 // written by the pinging goroutine; read after Stop
	stop, done chan struct{}
}

// StartPinger starts pinging.
func StartPinger(nsPath string, dst netip.Addr, interval time.Duration) *Pinger {
	p := &Pinger{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for {
			select {
			case <-p.stop:
				return
			case <-time.After(interval):
			}
			p.sent++
			if _, err := Ping(nsPath, dst, 56, false, 500*time.Millisecond); err != nil {
				p.lost++
			}
		}
	}()
	return p
}

// Stop ends the pinging and returns how many were sent and lost.
func (p *Pinger) Stop() (sent, lost int64) {
	close(p.stop)
	<-p.done
	return p.sent, p.lost
}
