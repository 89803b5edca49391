package e2e_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/probe"
	"github.com/weftnet/weft/internal/testutil"
)

// svcLab is a 3-node lab with pods p1..p3 (one per node, label app=web, echo on 8080) and
// a Whoami server on 9090 (TCP and UDP) in each, run by the test.
type svcLab struct {
	labCLI
	status labStatus
	pod    map[string]testutil.NS // by pod name
	podIPs map[string][]netip.Addr
	stops  map[string]func()
}

func newSvcLab(t *testing.T, fabric string, upArgs ...string) *svcLab {
	testutil.RequireRoot(t)
	l := &svcLab{labCLI: labCLI{t: t, name: fmt.Sprintf("s%d", os.Getpid()%100000), bin: filepath.Join(testutil.Binaries(t), "weft")},
		pod: map[string]testutil.NS{}, podIPs: map[string][]netip.Addr{}, stops: map[string]func(){}}
	t.Cleanup(func() { _, _ = l.run("down") })
	l.must(append([]string{"up", "-d", "--nodes", "3", "--fabric", fabric}, upArgs...)...)
	for i := 1; i <= 3; i++ {
		l.must("pod", "add", fmt.Sprintf("p%d", i), "--node", fmt.Sprint(i), "--serve", "tcp:8080", "--labels", "app=web")
	}
	l.status = l.labCLI.status()
	for _, p := range l.status.Pods {
		ns := testutil.NS{Name: p.Name, Path: p.Netns}
		l.pod[p.Name], l.podIPs[p.Name] = ns, p.IPs
		ln, err := probe.ListenTCP(ns.Path, "[::]:9090")
		if err != nil {
			t.Fatal(err)
		}
		pc, err := probe.ListenUDP(ns.Path, "[::]:9090")
		if err != nil {
			t.Fatal(err)
		}
		go probe.Whoami(ln, p.Name)
		go probe.WhoamiUDP(pc, p.Name)
		l.stops[p.Name] = func() { ln.Close(); pc.Close() }
		t.Cleanup(l.stops[p.Name])
	}
	return l
}

// echoFrom connects from the address from (SO_REUSEADDR: its port may hold a connection
// in TIME_WAIT to another address) inside ns to to, sends a byte, reads it back and closes
// first.
func echoFrom(ns string, from, to netip.AddrPort) error {
	return probe.InNS(ns, func() error {
		d := net.Dialer{Timeout: time.Second, LocalAddr: net.TCPAddrFromAddrPort(from),
			Control: func(_, _ string, c syscall.RawConn) error {
				var serr error
				err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1) })
				return errors.Join(err, serr)
			}}
		c, err := d.Dial("tcp", to.String())
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(time.Second))
		if _, err := c.Write([]byte{1}); err != nil {
			return err
		}
		_, err = io.ReadFull(c, make([]byte, 1))
		return err
	})
}

// service creates a service in the lab and returns it as stored.
func (l *svcLab) service(args ...string) v1.Service {
	l.t.Helper()
	var s v1.Service
	if err := json.Unmarshal([]byte(l.must(append([]string{"service", "add"}, append(args, "-o", "json")...)...)), &s); err != nil {
		l.t.Fatal(err)
	}
	return s
}

// settle waits until the service answers from a pod: every node's proxy syncs within a
// second of the change; the wait only absorbs the CLI's own start.
func (l *svcLab) settle(from string, addr netip.AddrPort) {
	l.t.Helper()
	var err error
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		var c net.Conn
		if c, err = probe.DialTCP(l.pod[from].Path, addr, time.Second); err == nil {
			c.Close()
			return
		}
	}
	l.t.Fatalf("%s never answered from %s: %v", addr, from, err)
}

// underlay is the lab's underlay namespace: outside every node, like a client on the
// network the nodes share.
func (l *svcLab) underlay() testutil.NS {
	l.t.Helper()
	var state struct{ Underlay string }
	b, err := os.ReadFile(filepath.Join("/run/weft-lab", l.name, "lab.json"))
	if err != nil || json.Unmarshal(b, &state) != nil {
		l.t.Fatalf("lab state: %v", err)
	}
	return testutil.NS{Path: state.Underlay}
}

// TestServicesInLab is the services issue's list, in a 3-node lab under each fabric, and
// again with the eBPF socket load balancer in front of nftables.
func TestServicesInLab(t *testing.T) {
	for _, v := range []struct{ name, fabric, proxy string }{
		{"vxlan", "vxlan", "nftables"}, {"direct", "direct", "nftables"}, {"vxlan-ebpf", "vxlan", "ebpf"},
	} {
		fabric := v.fabric
		t.Run(v.name, func(t *testing.T) {
			l := newSvcLab(t, fabric, "--proxy", v.proxy)
			web := l.service("web", "--selector", "app=web", "--port", "http=80:9090/tcp", "--port", "dns=53:9090/udp", "--dual-stack")
			vip4 := netip.AddrPortFrom(web.ClusterIPs[0], 80)
			l.settle("p1", vip4)

			// From pods on every node, TCP and UDP, both families.
			for _, from := range []string{"p1", "p2", "p3"} {
				for _, vip := range web.ClusterIPs {
					if got, err := probe.AskTCP(l.pod[from].Path, netip.AddrPortFrom(vip, 80), 2*time.Second); err != nil || got == "" {
						t.Errorf("TCP %s from %s: %q %v", vip, from, got, err)
						for _, n := range l.status.Nodes {
							for _, args := range [][]string{{"conntrack", "-L", "-f", "ipv6"}, {"ip", "-6", "neigh"}} {
								out, _ := testutil.NS{Path: n.Netns}.Command(args[0], args[1:]...).CombinedOutput()
								t.Logf("DEBUG %s %v:\n%s", n.Name, args, out)
							}
						}
					}
					if got, err := probe.AskUDP(l.pod[from].Path, netip.AddrPortFrom(vip, 53), 2*time.Second); err != nil || got == "" {
						t.Errorf("UDP %s from %s: %q %v", vip, from, got, err)
					}
				}
			}
			if out, err := l.run("check", "-o", "json"); err != nil || !strings.Contains(out, `"ok": true`) {
				t.Errorf("lab check: %v\n%s", err, out)
			}
			if v.name == "direct" {
				return // the rest does not depend on the fabric
			}

			t.Run("spread", func(t *testing.T) {
				counts := map[string]int{}
				for range 600 {
					got, err := probe.AskTCP(l.pod["p1"].Path, vip4, 2*time.Second)
					if err != nil {
						t.Fatal(err)
					}
					counts[probe.Name(got)]++
				}
				for _, p := range []string{"p1", "p2", "p3"} {
					if c := counts[p]; c < 120 || c > 282 {
						t.Errorf("%v: %s got %d of 600, want 20–47 %%", counts, p, c)
					}
				}
			})

			t.Run("affinity", func(t *testing.T) {
				s := l.service("sticky", "--selector", "app=web", "--port", "80:9090", "--affinity", "client-ip:2")
				addr := netip.AddrPortFrom(s.ClusterIPs[0], 80)
				l.settle("p2", addr)
				first := ""
				for i := range 100 {
					got, err := probe.AskTCP(l.pod["p2"].Path, addr, 2*time.Second)
					if err != nil {
						t.Fatal(err)
					}
					if i == 0 {
						first = probe.Name(got)
					} else if probe.Name(got) != first {
						t.Fatalf("connection %d went to %s, the first to %s", i, probe.Name(got), first)
					}
				}
			})

			t.Run("hairpin", func(t *testing.T) {
				s := l.service("self", "--selector", "app=web", "--port", "80:9090")
				addr := netip.AddrPortFrom(s.ClusterIPs[0], 80)
				l.settle("p3", addr)
				seen := map[string]bool{}
				for range 30 {
					got, err := probe.AskTCP(l.pod["p3"].Path, addr, 2*time.Second)
					if err != nil {
						t.Fatalf("hairpin: %v", err)
					}
					seen[probe.Name(got)] = true
				}
				if !seen["p3"] {
					t.Errorf("p3 never reached itself through its service in 30 tries: %v", seen)
				}
			})

			t.Run("straight to an endpoint", func(t *testing.T) {
				// A pod connecting to another pod's endpoint port, not through the
				// service: both directions now take the kernel's path and conntrack (the
				// fast path and the raw chain treat packets to an endpoint as packets from
				// one), and every connection must still be answered at once.
				l.service("echo", "--selector", "app=web", "--port", "8080:8080")
				l.must("pod", "add", "p4", "--node", "1")
				var p4, node1 string
				var p4IP netip.Addr
				st := l.labCLI.status()
				for _, p := range st.Pods {
					if p.Name == "p4" {
						p4, p4IP, node1 = p.Netns, p.IPs[0], p.Node
					}
				}
				for _, n := range st.Nodes {
					if n.Name == node1 {
						node1 = n.Netns
					}
				}
				for _, to := range []string{"p1", "p2"} { // the same node, another node
					addr := netip.AddrPortFrom(l.podIPs[to][0], 8080)
					err := probe.InNS(p4, func() error {
						d, buf := net.Dialer{Timeout: time.Second}, make([]byte, 1)
						for i := range 1000 {
							c, err := d.Dial("tcp", addr.String())
							if err == nil {
								_ = c.SetDeadline(time.Now().Add(time.Second))
								if _, err = c.Write(buf); err == nil {
									_, err = io.ReadFull(c, buf)
								}
								c.Close()
							}
							if err != nil {
								return fmt.Errorf("connection %d: %w", i, err)
							}
						}
						return nil
					})
					if err != nil {
						t.Errorf("to %s (%s): %v", to, addr, err)
					}
				}
				// A connection made now, long after p4 joined the fast path, leaves conntrack
				// nothing on either node: the fast path asked conntrack about its packets,
				// found no flow, and carried both directions.
				nodeOf := map[string]string{}
				for _, p := range st.Pods {
					for _, n := range st.Nodes {
						if n.Name == p.Node {
							nodeOf[p.Name] = n.Netns
						}
					}
				}
				for i, to := range []string{"p1", "p2"} {
					sport := 31123 + i // below the ephemeral range: no earlier connection holds it
					if err := echoFrom(p4, netip.AddrPortFrom(p4IP, uint16(sport)), netip.AddrPortFrom(l.podIPs[to][0], 8080)); err != nil {
						t.Fatalf("from port %d to %s: %v", sport, to, err)
					}
					for _, node := range []string{node1, nodeOf[to]} {
						out, err := testutil.NS{Path: node}.Command("conntrack", "-L", "-p", "tcp",
							"--orig-src", p4IP.String(), "--sport", fmt.Sprint(sport)).CombinedOutput()
						if err != nil || !strings.Contains(string(out), "flow entries have been shown") {
							t.Fatalf("conntrack -L on %s: %v\n%s", node, err, out)
						}
						if strings.Contains(string(out), "src=") {
							t.Errorf("a connection from p4:%d to %s:8080 was tracked:\n%s", sport, to, out)
						}
					}
				}
				if v.proxy == "ebpf" {
					return // the socket LB sends p4's connects to the service straight to p1
				}
				// A closed connection through a service (DNATed to p1:8080, its conntrack
				// entry in TIME_WAIT) and then one straight to p1:8080 from the same client
				// port: their replies look the same. The second must still work: conntrack
				// is asked about its reply too, so it takes the kernel's path, where NAT gives
				// it another source port.
				one := l.service("one", "--port", "8080:8080", "--endpoint", netip.AddrPortFrom(l.podIPs["p1"][0], 8080).String())
				l.pod["p4"] = testutil.NS{Path: p4}
				l.settle("p4", netip.AddrPortFrom(one.ClusterIPs[0], 8080))
				from := netip.AddrPortFrom(p4IP, 31200)
				if err := echoFrom(p4, from, netip.AddrPortFrom(one.ClusterIPs[0], 8080)); err != nil {
					t.Fatalf("through the service from %s: %v", from, err)
				}
				if err := echoFrom(p4, from, netip.AddrPortFrom(l.podIPs["p1"][0], 8080)); err != nil {
					t.Errorf("straight to p1 from %s after a connection through the service: %v", from, err)
				}
			})

			t.Run("no endpoints", func(t *testing.T) {
				s := l.service("empty", "--selector", "app=none", "--port", "80")
				addr := netip.AddrPortFrom(s.ClusterIPs[0], 80)
				time.Sleep(time.Second)
				start := time.Now()
				_, err := probe.DialTCP(l.pod["p1"].Path, addr, 2*time.Second)
				if !errors.Is(err, syscall.ECONNREFUSED) || time.Since(start) > 100*time.Millisecond {
					t.Errorf("%v after %v, want refused in under 100 ms", err, time.Since(start))
				}
			})

			t.Run("node ports", func(t *testing.T) {
				u := l.underlay()
				np := l.service("np", "--selector", "app=web", "--port", "80:9090", "--type", "NodePort")
				local := l.service("local", "--selector", "app=web", "--port", "80:9090", "--type", "NodePort", "--external-traffic-policy", "Local")
				time.Sleep(time.Second)
				client := underlayClientAddr(t, u)
				for _, n := range l.status.Nodes {
					addr := netip.AddrPortFrom(n.Underlay, uint16(np.Ports[0].NodePort))
					if got, err := probe.AskTCP(u.Path, addr, 2*time.Second); err != nil || got == "" {
						t.Errorf("node port %s: %q %v", addr, got, err)
					}
					// Local: the node's own pod answers and sees the client's own address.
					addr = netip.AddrPortFrom(n.Underlay, uint16(local.Ports[0].NodePort))
					got, err := probe.AskTCP(u.Path, addr, 2*time.Second)
					if err != nil {
						t.Errorf("Local node port %s: %v", addr, err)
						continue
					}
					name, seen, _ := strings.Cut(got, " ")
					if want := podOn(l.status, n.Name); name != want || seen != client.String() {
						t.Errorf("Local node port on %s: answered by %s seeing %s, want %s seeing the client %s", n.Name, name, seen, want, client)
					}
				}
			})

			t.Run("node without local endpoints does not forward", func(t *testing.T) {
				u := l.underlay()
				// A Local node port whose only endpoint is p1, on node1.
				onlyP1 := l.service("onlyp1", "--endpoint", netip.AddrPortFrom(l.podIPs["p1"][0], 9090).String(), "--port", "80", "--type", "NodePort", "--external-traffic-policy", "Local")
				time.Sleep(time.Second)
				node2 := l.status.Nodes[1].Underlay
				if _, err := probe.AskTCP(u.Path, netip.AddrPortFrom(node2, uint16(onlyP1.Ports[0].NodePort)), 500*time.Millisecond); err == nil {
					t.Errorf("node2 forwarded a Local node port whose only endpoint is elsewhere")
				}
			})

			t.Run("host-network endpoint", func(t *testing.T) {
				// A server in node2's own namespace (host network), behind a service.
				node2 := l.status.Nodes[1]
				ln, err := probe.ListenTCP(node2.Netns, fmt.Sprintf("%s:9191", node2.Underlay))
				if err != nil {
					t.Fatal(err)
				}
				defer ln.Close()
				go probe.Whoami(ln, "node2-host")
				s := l.service("hostsvc", "--endpoint", fmt.Sprintf("%s:9191", node2.Underlay), "--port", "80")
				addr := netip.AddrPortFrom(s.ClusterIPs[0], 80)
				l.settle("p1", addr)
				if got, err := probe.AskTCP(l.pod["p1"].Path, addr, 2*time.Second); err != nil || probe.Name(got) != "node2-host" {
					t.Errorf("host-network endpoint: %q %v", got, err)
				}
			})

			if v.proxy == "ebpf" {
				t.Run("socket load balancing", func(t *testing.T) {
					node1 := l.status.Nodes[0]
					translated := func() uint64 {
						t.Helper()
						var out struct {
							Sockets []struct {
								Address    string
								Translated uint64
							}
						}
						if err := json.Unmarshal([]byte(l.must("service", "programmed", node1.Name, "-o", "json")), &out); err != nil {
							t.Fatal(err)
						}
						for _, s := range out.Sockets {
							if s.Address == vip4.String() {
								return s.Translated
							}
						}
						t.Fatalf("%s is not in %s's socket LB maps: %+v", vip4, node1.Name, out.Sockets)
						return 0
					}
					before := translated()
					for range 5 {
						c, err := probe.DialTCP(l.pod["p1"].Path, vip4, 2*time.Second)
						if err != nil {
							t.Fatal(err)
						}
						if c.RemoteAddr().String() != vip4.String() {
							t.Errorf("the pod sees its peer as %s, want the VIP %s", c.RemoteAddr(), vip4)
						}
						c.Close()
					}
					mid := translated()
					if mid-before < 5 {
						t.Errorf("5 connections from a pod, %d translated at connect", mid-before)
					}
					// The node's own processes (host network) are not translated. Translated, the
					// connect would go to a pod (routed); not, it finds no route to the service
					// range in the lab's node namespace.
					for range 3 {
						if c, err := probe.DialTCP(node1.Netns, vip4, 2*time.Second); err == nil {
							c.Close()
							t.Errorf("from %s's own namespace, a connect to %s was translated", node1.Name, vip4)
						}
					}
					if after := translated(); after != mid {
						t.Errorf("connections from the node's own namespace were translated (%d)", after-mid)
					}
					// Nor the root namespace's processes, nor a namespace that is no pod of this
					// lab. Their connects are bound to loopback, so none sends a packet
					// anywhere whether translated or not: the counter says which.
					other := testutil.NewNS(t, "nl")
					for _, ns := range []string{"", other.Path} {
						dial := func() error {
							d := net.Dialer{Timeout: time.Second, Control: func(_, _ string, c syscall.RawConn) error {
								var serr error
								err := c.Control(func(fd uintptr) {
									serr = syscall.SetsockoptString(int(fd), syscall.SOL_SOCKET, syscall.SO_BINDTODEVICE, "lo")
								})
								return errors.Join(err, serr)
							}}
							c, err := d.Dial("tcp", vip4.String())
							if err == nil {
								c.Close()
							}
							return nil
						}
						if ns == "" {
							_ = dial()
						} else if err := probe.InNS(ns, dial); err != nil {
							t.Fatal(err)
						}
					}
					if after := translated(); after != mid {
						t.Errorf("a connect from the root namespace or a namespace outside the lab was translated (%d)", after-mid)
					}
				})
			}

			if v.proxy == "ebpf" {
				t.Run("node ports pick the same backend from every node", func(t *testing.T) {
					u := l.underlay()
					client := underlayClientAddr(t, u)
					np := l.service("maglev", "--selector", "app=web", "--port", "80:9090", "--type", "NodePort")
					time.Sleep(time.Second)
					port := uint16(np.Ports[0].NodePort)
					// ask connects from a fixed client port: the same flow but for the node.
					ask := func(node netip.Addr, sport int) (string, error) {
						var got string
						err := probe.InNS(u.Path, func() error {
							d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: client.AsSlice(), Port: sport},
								Control: func(_, _ string, c syscall.RawConn) error {
									var serr error
									err := c.Control(func(fd uintptr) {
										serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
									})
									return errors.Join(err, serr)
								}}
							c, err := d.Dial("tcp", netip.AddrPortFrom(node, port).String())
							if err != nil {
								return err
							}
							defer c.Close()
							_ = c.SetDeadline(time.Now().Add(2 * time.Second))
							b, err := io.ReadAll(c)
							got = probe.Name(string(b))
							return err
						})
						return got, err
					}
					reached := map[string]bool{}
					for i := range 12 {
						// Above the ephemeral range (32768-60999), so no other socket of the
						// namespace can hold the port (bind failed with EADDRINUSE once).
						sport := 61000 + i
						first := ""
						for _, n := range l.status.Nodes {
							got, err := ask(n.Underlay, sport)
							if err != nil || got == "" {
								t.Fatalf("node port on %s from client port %d: %q %v", n.Name, sport, got, err)
							}
							if first == "" {
								first = got
							} else if got != first {
								t.Errorf("the flow from client port %d reached %s through %s, %s through %s", sport, first, l.status.Nodes[0].Name, got, n.Name)
							}
						}
						reached[first] = true
					}
					if len(reached) < 2 {
						t.Errorf("12 flows all reached %v", reached)
					}
					var out struct {
						NodePorts []struct {
							Port   uint16
							Marked uint64
						}
					}
					if err := json.Unmarshal([]byte(l.must("service", "programmed", l.status.Nodes[0].Name, "-o", "json")), &out); err != nil {
						t.Fatal(err)
					}
					marked := uint64(0)
					for _, p := range out.NodePorts {
						if p.Port == port {
							marked = p.Marked
						}
					}
					if marked < 12 {
						t.Errorf("%s's balancer marked %d packets to node port %d, want at least the 12 connections' first ones: %+v", l.status.Nodes[0].Name, marked, port, out.NodePorts)
					}
				})
			}

			t.Run("weftd restart under a connection loop", func(t *testing.T) {
				var ok, failed atomic.Int64
				var firstErr atomic.Value
				stop := make(chan struct{})
				var wg sync.WaitGroup
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						select {
						case <-stop:
							return
						default:
						}
						if _, err := probe.AskTCP(l.pod["p1"].Path, vip4, 2*time.Second); err != nil {
							firstErr.CompareAndSwap(nil, fmt.Sprintf("%s: %v", time.Now().Format("15:04:05.000"), err))
							failed.Add(1)
						} else {
							ok.Add(1)
						}
					}
				}()
				time.Sleep(300 * time.Millisecond)
				t.Logf("%s: restarting node1", time.Now().Format("15:04:05.000"))
				l.must("node", "restart", "node1", "--kill")
				t.Logf("%s: node1 restarted", time.Now().Format("15:04:05.000"))
				time.Sleep(500 * time.Millisecond)
				close(stop)
				wg.Wait()
				if failed.Load() > 0 || ok.Load() < 10 {
					t.Errorf("across a weftd SIGKILL and restart: %d connections failed (first: %v), %d succeeded", failed.Load(), firstErr.Load(), ok.Load())
				}
			})

			t.Run("endpoint removal", func(t *testing.T) {
				// Long-lived servers on 9292: say who they are, then echo, never close.
				for name, ns := range l.pod {
					ln, err := probe.ListenTCP(ns.Path, "[::]:9292")
					if err != nil {
						t.Fatal(err)
					}
					defer ln.Close()
					go serveNamedEcho(ln, name)
				}
				long := l.service("long", "--selector", "app=web", "--port", "80:9292")
				longAddr := netip.AddrPortFrom(long.ClusterIPs[0], 80)
				l.settle("p1", longAddr)
				// A TCP connection through the VIP to a backend other than the client.
				var tcp net.Conn
				victim := ""
				for try := 0; victim == "" || victim == "p1"; try++ {
					if tcp != nil {
						tcp.Close()
					}
					if try == 50 {
						t.Fatal("never reached a backend other than p1")
					}
					var err error
					if tcp, err = probe.DialTCP(l.pod["p1"].Path, longAddr, 2*time.Second); err != nil {
						t.Fatal(err)
					}
					_ = tcp.SetDeadline(time.Now().Add(2 * time.Second))
					line := make([]byte, 3)
					if _, err := io.ReadFull(tcp, line); err != nil {
						t.Fatal(err)
					}
					victim = strings.TrimSpace(string(line))
				}
				defer tcp.Close()
				// A UDP client that sends from one socket, pinned to the same backend.
				var udp net.Conn
				ask := func() string {
					_ = udp.SetDeadline(time.Now().Add(200 * time.Millisecond))
					if _, err := udp.Write([]byte("?")); err != nil {
						return ""
					}
					buf := make([]byte, 256)
					n, err := udp.Read(buf)
					if err != nil {
						return ""
					}
					return probe.Name(string(buf[:n]))
				}
				for try := 0; ; try++ {
					if udp != nil {
						udp.Close()
					}
					if try == 100 {
						t.Fatalf("no UDP socket landed on %s", victim)
					}
					if err := probe.InNS(l.pod["p1"].Path, func() error {
						var err error
						udp, err = net.Dial("udp", netip.AddrPortFrom(web.ClusterIPs[0], 53).String())
						return err
					}); err != nil {
						t.Fatal(err)
					}
					if ask() == victim {
						break
					}
				}
				defer udp.Close()

				l.must("pod", "rm", victim)
				gone := time.Now()
				// UDP: a live endpoint answers the same socket within a second.
				moved := false
				for time.Since(gone) < 1500*time.Millisecond {
					if got := ask(); got != "" && got != victim {
						moved = true
						t.Logf("the UDP client reached %s %v after %s went", got, time.Since(gone).Round(time.Millisecond), victim)
						break
					}
					time.Sleep(100 * time.Millisecond)
				}
				if !moved {
					t.Errorf("the UDP client did not reach a live endpoint within a second of %s going", victim)
				}
				// No new connection reaches the removed endpoint.
				for range 50 {
					if got, _ := probe.AskTCP(l.pod["p1"].Path, vip4, 2*time.Second); probe.Name(got) == victim {
						t.Fatalf("a new connection reached %s after it went", victim)
					}
				}
				// TCP: the connection to the vanished endpoint is reset, not left to time out.
				_ = tcp.SetDeadline(time.Now().Add(3 * time.Second))
				start := time.Now()
				_, werr := tcp.Write([]byte("y"))
				_, err := io.ReadFull(tcp, make([]byte, 1))
				// nftables: the next segment meets a live endpoint, which resets it. The socket
				// LB's connection went straight to the endpoint: weftd aborts the socket, and
				// the first call after that fails.
				aborted := v.proxy == "ebpf" && (errors.Is(werr, syscall.ECONNABORTED) || errors.Is(err, syscall.ECONNABORTED))
				if !errors.Is(err, syscall.ECONNRESET) && !aborted {
					t.Errorf("TCP connection to a removed endpoint: write %v, read %v after %v, want a reset", werr, err, time.Since(start))
				}
			})
		})
	}
}

func podOn(s labStatus, node string) string {
	for _, p := range s.Pods {
		if p.Node == node {
			return p.Name
		}
	}
	return ""
}

// underlayClientAddr is the underlay namespace's address on the lab's underlay subnet.
func underlayClientAddr(t *testing.T, u testutil.NS) netip.Addr {
	t.Helper()
	h := u.Handle(t)
	addrs, err := h.AddrList(nil, syscall.AF_INET)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP)
		if ip.Unmap().IsPrivate() {
			return ip.Unmap()
		}
	}
	t.Fatal("no address on the underlay")
	return netip.Addr{}
}

// serveNamedEcho answers each connection with "name\n" and then echoes until the client
// closes (a long-lived backend).
func serveNamedEcho(ln net.Listener, name string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_, _ = c.Write([]byte(name + "\n"))
			_, _ = io.Copy(c, c)
		}()
	}
}
