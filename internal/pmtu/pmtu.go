// Package pmtu finds the path MTU to an address with don't-fragment ICMP echo probes and a
// binary search, and tells an honest path MTU from a black hole: a hop that silently drops
// packets larger than its MTU instead of answering "fragmentation needed" / "packet too big".
package pmtu

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// Result is what a probe found.
type Result struct {
	Address   string `json:"address"`
	LocalMTU  int    `json:"localMTU"`
	PathMTU   int    `json:"pathMTU"`
	BlackHole bool   `json:"blackHole"`
	Probes    int    `json:"probes"`
	Verdict   string `json:"verdict"`
}

// Options tune a probe.
type Options struct {
	LocalMTU int           // the upper bound: the MTU of the device towards the address
	Timeout  time.Duration // per probe; default 500 ms
	Tries    int           // probes per size before a silence counts; default 2
	// Open opens the ICMP socket; nil opens it in the current network namespace. Tests
	// pass one that opens it inside a namespace of theirs.
	Open func(network string) (*icmp.PacketConn, error)
}

type outcome int

const (
	answered    outcome = iota
	tooBig              // a hop said so, with its MTU
	tooBigLocal         // our own device refused it
	silent              // no answer at all
)

// Probe runs the search.
func Probe(dst netip.Addr, o Options) (Result, error) {
	if o.Timeout == 0 {
		o.Timeout = 500 * time.Millisecond
	}
	if o.Tries == 0 {
		o.Tries = 2
	}
	if o.Open == nil {
		o.Open = func(network string) (*icmp.PacketConn, error) { return icmp.ListenPacket(network, "") }
	}
	p, err := newProber(dst, o)
	if err != nil {
		return Result{}, err
	}
	defer p.conn.Close()
	res := Result{Address: dst.String(), LocalMTU: o.LocalMTU}
	lo := 68
	if dst.Is6() {
		lo = 1280
	}
	if o.LocalMTU < lo {
		return res, fmt.Errorf("local MTU %d is below the minimum %d", o.LocalMTU, lo)
	}
	if out, _ := p.try(lo); out != answered {
		return res, fmt.Errorf("%s does not answer echo requests of %d bytes", dst, lo)
	}
	best, hi := lo, o.LocalMTU
	// Whichever answer last lowered hi set the boundary the search converges on: if that
	// was silence, the path drops larger packets without saying so.
	boundaryBySilence := false
	for best < hi {
		mid := (best + hi + 1) / 2
		out, hopMTU := p.try(mid)
		switch out {
		case answered:
			best = mid
			continue
		case tooBig:
			hi = mid - 1
			if hopMTU >= best && hopMTU < hi {
				hi = hopMTU
			}
		case tooBigLocal, silent:
			hi = mid - 1
		}
		boundaryBySilence = out == silent
	}
	res.PathMTU, res.Probes = best, p.sent
	switch {
	case boundaryBySilence:
		res.BlackHole = true
		res.Verdict = fmt.Sprintf("black hole: packets over %d bytes vanish with no \"fragmentation needed\" or \"packet too big\" coming back", best)
	case best == o.LocalMTU:
		res.Verdict = "the whole path carries the local MTU"
	default:
		res.Verdict = fmt.Sprintf("a hop limits the path to %d bytes and says so", best)
	}
	return res, nil
}

type prober struct {
	dst   netip.Addr
	conn  *icmp.PacketConn
	o     Options
	id    int
	seq   int
	sent  int
	proto int
}

func newProber(dst netip.Addr, o Options) (*prober, error) {
	network, proto := "ip4:icmp", 1
	if dst.Is6() {
		network, proto = "ip6:ipv6-icmp", 58
	}
	conn, err := o.Open(network)
	if err != nil {
		return nil, fmt.Errorf("open ICMP socket (needs root): %w", err)
	}
	if err := setDF(conn, dst.Is6()); err != nil {
		conn.Close()
		return nil, err
	}
	return &prober{dst: dst, conn: conn, o: o, id: os.Getpid() & 0xffff, proto: proto}, nil
}

// setDF sets don't-fragment and makes the socket ignore the kernel's cached path MTU, so
// every size is really put on the wire.
func setDF(conn *icmp.PacketConn, v6 bool) error {
	var pc net.PacketConn
	if v6 {
		pc = conn.IPv6PacketConn().PacketConn
	} else {
		pc = conn.IPv4PacketConn().PacketConn
	}
	sc, ok := pc.(syscall.Conn)
	if !ok {
		return errors.New("ICMP socket has no file descriptor")
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = raw.Control(func(fd uintptr) {
		if v6 {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_PROBE)
			if serr == nil {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_DONTFRAG, 1)
			}
		} else {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_PROBE)
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// try sends up to Tries probes of size bytes (IP header included) and classifies the answer.
func (p *prober) try(size int) (outcome, int) {
	for range p.o.Tries {
		out, mtu := p.once(size)
		if out != silent {
			return out, mtu
		}
	}
	return silent, 0
}

func (p *prober) once(size int) (outcome, int) {
	hdr := 20 + 8
	var typ icmp.Type = ipv4.ICMPTypeEcho
	if p.dst.Is6() {
		hdr, typ = 40+8, ipv6.ICMPTypeEchoRequest
	}
	p.seq = (p.seq + 1) & 0xffff
	msg := icmp.Message{Type: typ, Body: &icmp.Echo{ID: p.id, Seq: p.seq, Data: make([]byte, size-hdr)}}
	b, err := msg.Marshal(nil)
	if err != nil {
		return silent, 0
	}
	p.sent++
	if _, err := p.conn.WriteTo(b, &net.IPAddr{IP: p.dst.AsSlice()}); err != nil {
		if errors.Is(err, syscall.EMSGSIZE) {
			return tooBigLocal, 0
		}
		return silent, 0
	}
	deadline := time.Now().Add(p.o.Timeout)
	_ = p.conn.SetReadDeadline(deadline)
	buf := make([]byte, 65536)
	for {
		n, _, err := p.conn.ReadFrom(buf)
		if err != nil {
			return silent, 0
		}
		if out, mtu, ok := p.classify(buf[:n]); ok {
			return out, mtu
		}
	}
}

// classify reads one ICMP message and says whether it answers the current probe.
func (p *prober) classify(b []byte) (outcome, int, bool) {
	m, err := icmp.ParseMessage(p.proto, b)
	if err != nil {
		return 0, 0, false
	}
	switch body := m.Body.(type) {
	case *icmp.Echo:
		if (m.Type == ipv4.ICMPTypeEchoReply || m.Type == ipv6.ICMPTypeEchoReply) && body.ID == p.id && body.Seq == p.seq {
			return answered, 0, true
		}
	case *icmp.DstUnreach:
		// Type 3 code 4: fragmentation needed; the next-hop MTU is in bytes 6-7.
		if m.Type == ipv4.ICMPTypeDestinationUnreachable && m.Code == 4 && len(b) >= 8 && p.quotes(body.Data) {
			return tooBig, int(binary.BigEndian.Uint16(b[6:8])), true
		}
	case *icmp.PacketTooBig:
		if p.quotes(body.Data) {
			return tooBig, body.MTU, true
		}
	}
	return 0, 0, false
}

// quotes reports whether an ICMP error quotes our current probe (its echo ID and sequence).
func (p *prober) quotes(orig []byte) bool {
	var ihl int
	if p.dst.Is6() {
		ihl = 40
	} else if len(orig) > 0 {
		ihl = int(orig[0]&0x0f) * 4
	}
	if len(orig) < ihl+8 {
		return false
	}
	echo := orig[ihl:]
	return int(binary.BigEndian.Uint16(echo[4:6])) == p.id && int(binary.BigEndian.Uint16(echo[6:8])) == p.seq
}
