package sockproxy

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/bpffs"
	"github.com/weftnet/weft/internal/probe"
	"github.com/weftnet/weft/internal/proxy"
	"github.com/weftnet/weft/internal/testutil"
)

// lbTest is a pod namespace whose sockets the programs translate, another that they must
// not touch, and the proxy loaded on a bpffs of the test's own.
type lbTest struct {
	pod, other testutil.NS
	cookie     uint64
	dir        string
	p          *Proxy
}

func newLBTest(t *testing.T) *lbTest {
	testutil.RequireRoot(t)
	lt := &lbTest{pod: testutil.NewNS(t, "sk"), other: testutil.NewNS(t, "so")}
	var err error
	if lt.cookie, err = NetnsCookie(lt.pod.Path); err != nil {
		t.Fatal(err)
	}
	bpf := t.TempDir()
	t.Cleanup(func() { _ = bpffs.Unmount(bpf) }) // detaches the pinned links
	lt.dir = filepath.Join(bpf, "sock")
	lt.p = lt.load(t)
	return lt
}

func (lt *lbTest) load(t *testing.T) *Proxy {
	t.Helper()
	p, err := Load(lt.dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	root, err := CgroupRoot()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Attach(root); err != nil {
		t.Fatal(err)
	}
	return p
}

// servers starts a TCP and a UDP server in the pod namespace on addr, each answering
// with its name; the UDP one answers to whatever source it is sent from.
func (lt *lbTest) servers(t *testing.T, name, addr string) {
	t.Helper()
	ln, err := probe.ListenTCP(lt.pod.Path, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, name)
			c.Close()
		}
	}()
	var pc net.PacketConn
	if err := probe.InNS(lt.pod.Path, func() (err error) { pc, err = net.ListenPacket("udp", addr); return }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 64)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo([]byte(name), from)
		}
	}()
}

func service(vip string, port uint16, proto uint8, affinity time.Duration, backends ...string) *proxy.Port {
	p := &proxy.Port{Service: "default/" + vip, VIP: netip.MustParseAddr(vip), Port: port, Proto: proto, Affinity: affinity}
	for _, b := range backends {
		ap := netip.MustParseAddrPort(b)
		p.Backends = append(p.Backends, proxy.Backend{IP: ap.Addr(), Port: ap.Port()})
	}
	return p
}

func (lt *lbTest) sync(t *testing.T, ports ...*proxy.Port) {
	t.Helper()
	st := proxy.State{Ports: map[string]*proxy.Port{}}
	for i, p := range ports {
		st.Ports[string(rune('a'+i))] = p
	}
	if err := lt.p.Sync(st, map[uint64]bool{lt.cookie: true}); err != nil {
		t.Fatal(err)
	}
}

// ask connects from ns to addr over TCP and returns who answered and the peer address
// the socket reports.
func ask(ns testutil.NS, addr string) (name string, peer string, err error) {
	err = probe.InNS(ns.Path, func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		peer = c.RemoteAddr().String() // Go reads it with getpeername
		b, err := io.ReadAll(c)
		name = string(b)
		return err
	})
	return
}

// askUDP sends one datagram from an unconnected socket and returns the answer and where
// recvmsg says it came from.
func askUDP(ns testutil.NS, addr string) (name, from string, err error) {
	err = probe.InNS(ns.Path, func() error {
		pc, err := net.ListenPacket("udp", ":0")
		if err != nil {
			return err
		}
		defer pc.Close()
		ua, err := net.ResolveUDPAddr("udp", addr)
		if err != nil {
			return err
		}
		if _, err := pc.WriteTo([]byte("?"), ua); err != nil {
			return err
		}
		_ = pc.SetReadDeadline(time.Now().Add(time.Second))
		buf := make([]byte, 64)
		n, src, err := pc.ReadFrom(buf)
		if err != nil {
			return err
		}
		name, from = string(buf[:n]), src.String()
		return nil
	})
	return
}

func TestConnectIsPointedAtABackendAndSeesTheVIP(t *testing.T) {
	lt := newLBTest(t)
	lt.servers(t, "b4", "127.0.0.1:8080")
	lt.servers(t, "b6", "[::1]:8080")
	lt.sync(t,
		service("10.96.0.10", 80, proxy.ProtoTCP, 0, "127.0.0.1:8080"),
		service("10.96.0.10", 53, proxy.ProtoUDP, 0, "127.0.0.1:8080"),
		service("fd00:96::10", 80, proxy.ProtoTCP, 0, "[::1]:8080"),
		service("fd00:96::10", 53, proxy.ProtoUDP, 0, "[::1]:8080"),
	)
	for _, c := range []struct{ vip, want string }{{"10.96.0.10", "b4"}, {"[fd00:96::10]", "b6"}} {
		name, peer, err := ask(lt.pod, c.vip+":80")
		if err != nil || name != c.want || peer != c.vip+":80" {
			t.Errorf("TCP to %s:80: answered by %q, peer %q, %v; want %s with the VIP as peer", c.vip, name, peer, err, c.want)
		}
		name, from, err := askUDP(lt.pod, c.vip+":53")
		if err != nil || name != c.want || from != c.vip+":53" {
			t.Errorf("UDP to %s:53: answered by %q from %q, %v; want %s from the VIP", c.vip, name, from, err, c.want)
		}
	}
	// An IPv6 socket to a mapped IPv4 service is translated too.
	if name, _, err := ask(lt.pod, "[::ffff:10.96.0.10]:80"); err != nil || name != "b4" {
		t.Errorf("dual-stack socket to a mapped IPv4 VIP: %q %v", name, err)
	}
	// A namespace not listed is never translated: with no route to the VIP, it fails.
	if name, _, err := ask(lt.other, "10.96.0.10:80"); err == nil {
		t.Errorf("a socket outside weft's pods was translated (answered by %q)", name)
	}
	ports, err := lt.p.Programmed()
	if err != nil {
		t.Fatal(err)
	}
	if len(ports) != 4 || ports[0].Address != "10.96.0.10:53" || len(ports[0].Backends) != 1 || ports[0].Translated == 0 {
		t.Errorf("programmed: %+v", ports)
	}
}

func TestNoEndpointsRefusesAtOnce(t *testing.T) {
	lt := newLBTest(t)
	lt.sync(t, service("10.96.0.11", 80, proxy.ProtoTCP, 0))
	start := time.Now()
	_, _, err := ask(lt.pod, "10.96.0.11:80")
	if !errors.Is(err, syscall.ECONNREFUSED) || time.Since(start) > 500*time.Millisecond {
		t.Errorf("connect to a service without endpoints: %v after %v, want ECONNREFUSED at once", err, time.Since(start))
	}
	ports, _ := lt.p.Programmed()
	if len(ports) != 1 || ports[0].Refused != 1 {
		t.Errorf("refusals not counted: %+v", ports)
	}
}

func TestSpreadAndAffinity(t *testing.T) {
	lt := newLBTest(t)
	lt.servers(t, "one", "127.0.0.1:8081")
	lt.servers(t, "two", "127.0.0.1:8082")
	lt.sync(t,
		service("10.96.0.12", 80, proxy.ProtoTCP, 0, "127.0.0.1:8081", "127.0.0.1:8082"),
		service("10.96.0.13", 80, proxy.ProtoTCP, time.Hour, "127.0.0.1:8081", "127.0.0.1:8082"),
	)
	seen := map[string]int{}
	sticky := map[string]int{}
	for range 40 {
		name, _, err := ask(lt.pod, "10.96.0.12:80")
		if err != nil {
			t.Fatal(err)
		}
		seen[name]++
		if name, _, err = ask(lt.pod, "10.96.0.13:80"); err != nil {
			t.Fatal(err)
		}
		sticky[name]++
	}
	if len(seen) != 2 {
		t.Errorf("no affinity: all 40 connections went to %v", seen)
	}
	if len(sticky) != 1 {
		t.Errorf("affinity: connections spread over %v", sticky)
	}
	// The pinned backend goes away: the pod moves to the one left.
	var gone, left string
	for name := range sticky {
		gone = name
	}
	left = map[string]string{"one": "127.0.0.1:8082", "two": "127.0.0.1:8081"}[gone]
	lt.sync(t,
		service("10.96.0.12", 80, proxy.ProtoTCP, 0, "127.0.0.1:8081", "127.0.0.1:8082"),
		service("10.96.0.13", 80, proxy.ProtoTCP, time.Hour, left),
	)
	for range 5 {
		if name, _, err := ask(lt.pod, "10.96.0.13:80"); err != nil || name == gone {
			t.Fatalf("after its backend left, affinity still sends to %q (%v)", name, err)
		}
	}
}

// TestRestartAdoptsTheMaps is a weftd restart: a new load adopts the pinned maps and
// links, translation never stops, and the first sync rewrites in place.
func TestRestartAdoptsTheMaps(t *testing.T) {
	lt := newLBTest(t)
	lt.servers(t, "b", "127.0.0.1:8080")
	lt.sync(t, service("10.96.0.14", 80, proxy.ProtoTCP, 0, "127.0.0.1:8080"), service("10.96.0.15", 80, proxy.ProtoTCP, 0, "127.0.0.1:8080"))
	lt.p.Close()
	lt.p = lt.load(t) // no Sync yet: the pinned maps still translate
	if name, _, err := ask(lt.pod, "10.96.0.14:80"); err != nil || name != "b" {
		t.Fatalf("after a reload, before its first sync: %q %v", name, err)
	}
	lt.sync(t, service("10.96.0.14", 80, proxy.ProtoTCP, 0, "127.0.0.1:8080"))
	if name, _, err := ask(lt.pod, "10.96.0.14:80"); err != nil || name != "b" {
		t.Errorf("after the first sync: %q %v", name, err)
	}
	if _, _, err := ask(lt.pod, "10.96.0.15:80"); err == nil {
		t.Errorf("a service withdrawn at the first sync after a reload is still translated")
	}
	ports, _ := lt.p.Programmed()
	if len(ports) != 1 {
		t.Errorf("programmed after the sweep: %+v", ports)
	}
}

// TestUDPFlows: datagrams of one unconnected socket to a service stay with one backend
// while it lasts and move when it goes; a connected UDP socket is left to nftables.
func TestUDPFlows(t *testing.T) {
	lt := newLBTest(t)
	lt.servers(t, "one", "127.0.0.1:8081")
	lt.servers(t, "two", "127.0.0.1:8082")
	both := service("10.96.0.16", 53, proxy.ProtoUDP, 0, "127.0.0.1:8081", "127.0.0.1:8082")
	lt.sync(t, both)
	err := probe.InNS(lt.pod.Path, func() error {
		pc, err := net.ListenPacket("udp", ":0")
		if err != nil {
			return err
		}
		defer pc.Close()
		vip := &net.UDPAddr{IP: net.ParseIP("10.96.0.16"), Port: 53}
		askOnce := func() string {
			if _, err := pc.WriteTo([]byte("?"), vip); err != nil {
				return err.Error()
			}
			_ = pc.SetReadDeadline(time.Now().Add(time.Second))
			buf := make([]byte, 16)
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return err.Error()
			}
			return string(buf[:n])
		}
		first := askOnce()
		for range 20 {
			if got := askOnce(); got != first {
				t.Errorf("one socket's datagrams spread: %q then %q", first, got)
				break
			}
		}
		left := map[string]string{"one": "127.0.0.1:8082", "two": "127.0.0.1:8081"}[first]
		lt.sync(t, service("10.96.0.16", 53, proxy.ProtoUDP, 0, left))
		if got := askOnce(); got == first {
			t.Errorf("the flow stayed with %s after it left", first)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Connected: not translated, and with no route to the VIP in the namespace, refused.
	err = probe.InNS(lt.pod.Path, func() error {
		c, err := net.Dial("udp", "10.96.0.16:53")
		if err == nil {
			c.Close()
			return errors.New("a connected UDP socket was translated")
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}

// TestDestroyConnectionsTo: a connection to an endpoint that went away is aborted at
// once, both families; others stay.
func TestDestroyConnectionsTo(t *testing.T) {
	testutil.RequireRoot(t)
	pod := testutil.NewNS(t, "sd")
	conns := map[string]net.Conn{}
	for _, addr := range []string{"127.0.0.1:7001", "127.0.0.1:7002", "[::1]:7001"} {
		ln, err := probe.ListenTCP(pod.Path, addr)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
			}
		}()
		c, err := probe.DialTCP(pod.Path, netip.MustParseAddrPort(addr), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[addr] = c
	}
	n, err := DestroyConnectionsTo(pod.Path, map[netip.AddrPort]bool{
		netip.MustParseAddrPort("127.0.0.1:7001"): true, netip.MustParseAddrPort("[::1]:7001"): true,
	})
	if err != nil || n != 2 {
		t.Fatalf("destroyed %d, %v; want the 2 client sockets", n, err)
	}
	for addr, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		_, err := c.Read(make([]byte, 1))
		aborted := errors.Is(err, syscall.ECONNABORTED)
		if want := addr != "127.0.0.1:7002"; aborted != want {
			t.Errorf("connection to %s: read %v, aborted %v, want %v", addr, err, aborted, want)
		}
	}
}

// BenchmarkSyncOneChange is the cost of a one-endpoint change at 10,000 services: how long
// until a pod's next connect sees it.
func BenchmarkSyncOneChange(b *testing.B) {
	testutil.RequireRoot(b)
	bpf := b.TempDir()
	b.Cleanup(func() { _ = bpffs.Unmount(bpf) })
	p, err := Load(filepath.Join(bpf, "sock"))
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	state := func(changed bool) proxy.State {
		st := proxy.State{Ports: map[string]*proxy.Port{}}
		for i := range 10000 {
			vip := netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})
			port := &proxy.Port{Service: "default/s", VIP: vip, Port: 80, Proto: proxy.ProtoTCP}
			for e := range 5 {
				port.Backends = append(port.Backends, proxy.Backend{IP: netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), Port: uint16(8080 + e)})
			}
			if changed && i == 5000 {
				port.Backends[0].Port = 9999
			}
			st.Ports[vip.String()] = port
		}
		return st
	}
	a, c := state(false), state(true)
	if err := p.Sync(a, nil); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := range b.N {
		next := a
		if i%2 == 0 {
			next = c
		}
		if err := p.Sync(next, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// TestLoadBalancerAddressGoesToThePodBackends: a pod's connect to a load balancer
// address goes to the service's internal backends (kube-proxy's short-circuit), even when
// its external backends (policy Local, none on this node) are none.
func TestLoadBalancerAddressGoesToThePodBackends(t *testing.T) {
	lt := newLBTest(t)
	lt.servers(t, "internal", "127.0.0.1:8081")
	lb := service("203.0.113.7", 80, proxy.ProtoTCP, 0)
	lb.LoadBalancer, lb.DropIfEmpty = true, true
	lb.PodBackends = []proxy.Backend{{IP: netip.MustParseAddr("127.0.0.1"), Port: 8081}}
	lt.sync(t, lb)
	if name, peer, err := ask(lt.pod, "203.0.113.7:80"); err != nil || name != "internal" || peer != "203.0.113.7:80" {
		t.Errorf("a pod to a load balancer address: answered by %q, peer %q, %v; want internal, with the address as peer", name, peer, err)
	}
}
