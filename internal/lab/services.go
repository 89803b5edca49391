package lab

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	mdns "github.com/miekg/dns"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/endpoints"
	"github.com/weftnet/weft/internal/probe"
)

// ClusterCIDRs are the lab cluster's pod networks (a /24 and a /64 per node).
const ClusterCIDRs = "10.244.0.0/16,fd00:244::/56"

// LoadBalancerCIDR is where a racked lab's load balancer addresses come from (given to
// LoadBalancer services' status by whoever plays the load balancer): fabric bgp announces
// them, and the rack routers take them.
const LoadBalancerCIDR = "10.97.0.0/24"

// ServiceCIDRs are the lab cluster's service ranges (the DNS service's 10th address is
// 10.96.0.10, as in Kubernetes).
const ServiceCIDRs = "10.96.0.0/16,fd00:96::/112"

// Weft runs the weft CLI against the lab's store, from the underlay namespace (where etcd
// listens), with the caller's standard streams: `weft lab service ...` and `weft lab
// apply` are `weft service ...` and `weft apply` pointed at the lab.
func (l *Lab) Weft(stdin io.Reader, stdout, stderr io.Writer, args ...string) error {
	cmd := l.weftCmd(args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
	return cmd.Run()
}

// WeftOnNode runs the weft CLI in a node's namespace (what that node's kernel holds).
func (l *Lab) WeftOnNode(node string, stdin io.Reader, stdout, stderr io.Writer, args ...string) error {
	n, err := l.node(node)
	if err != nil {
		return err
	}
	cmd := exec.Command("nsenter", append([]string{"--net=" + n.Netns, "--", filepath.Join(l.opts.BinDir, "weft")}, args...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
	return cmd.Run()
}

// NodeRunDir is a node's weftd run directory (its node contract).
func (l *Lab) NodeRunDir(node string) string {
	n, err := l.node(node)
	if err != nil {
		return ""
	}
	return n.RunDir
}

func (l *Lab) weftCmd(args ...string) *exec.Cmd {
	argv := append([]string{"--net=" + l.State.Underlay, "--", filepath.Join(l.opts.BinDir, "weft")}, args...)
	cmd := exec.Command("nsenter", argv...)
	cmd.Env = append(os.Environ(), "WEFT_STORE="+l.State.Store)
	return cmd
}

// weftJSON runs the weft CLI against the lab's store and decodes its JSON output.
func (l *Lab) weftJSON(out any, args ...string) error {
	var stdout, stderr bytes.Buffer
	cmd := l.weftCmd(append(args, "-o", "json")...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("weft %v: %v: %s", args, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return json.Unmarshal(stdout.Bytes(), out)
}

// Services lists the lab's services and the pods the cluster knows.
func (l *Lab) Services() ([]v1.Service, []v1.Pod, error) {
	var svcs []v1.Service
	if err := l.weftJSON(&svcs, "service", "ls", "-A"); err != nil {
		return nil, nil, err
	}
	var status struct {
		Pods []v1.Pod `json:"pods"`
	}
	if err := l.weftJSON(&status, "cluster", "status"); err != nil {
		return nil, nil, err
	}
	return svcs, status.Pods, nil
}

// checkServices reaches every service port from one pod on every node (TCP and UDP echo,
// each address family), every node port from the underlay namespace (outside every node),
// and checks a service without endpoints refuses at once.
func (l *Lab) checkServices(r *Report, fail func(string, ...any)) {
	svcs, pods, err := l.Services()
	if err != nil {
		fail("services: %v", err)
		return
	}
	serving := map[netip.AddrPort]bool{} // what the lab's echo servers answer
	for _, p := range l.State.Pods {
		for _, ip := range p.IPs {
			if p.Serve != 0 && !p.ServeHTTP {
				serving[netip.AddrPortFrom(ip, uint16(p.Serve))] = true
			}
		}
	}
	clients := map[string]*Pod{} // one pod per node
	for _, p := range l.State.Pods {
		if clients[p.Node] == nil {
			clients[p.Node] = p
		}
	}
	for i := range svcs {
		s := &svcs[i]
		if s.Headless() {
			continue
		}
		for _, port := range endpoints.For(s, pods) {
			ready := endpoints.Serving(port.Endpoints)
			for _, vip := range s.ClusterIPs {
				fam := endpoints.Family(ready, vip.Is4())
				if port.Port == s.Ports[0].Port && port.Protocol == s.Ports[0].Protocol {
					// By name, from a pod on every node: the cluster DNS knows it.
					for _, c := range clients {
						r.Services++
						if err := resolves(c.Netns, s, vip); err != nil {
							fail("DNS %s from %s (%s): %v", s.Key(), c.Name, c.Node, err)
						}
					}
				}
				target := netip.AddrPortFrom(vip, uint16(port.Port))
				if len(fam) == 0 {
					if len(endpoints.Family(port.Endpoints, vip.Is4())) == 0 && port.Protocol == v1.ProtocolTCP {
						for _, c := range clients {
							r.Services++
							if err := refusedFast(c.Netns, target); err != nil {
								fail("service %s %s (no endpoints) from %s: %v", s.Key(), target, c.Name, err)
							}
							break
						}
					}
					continue
				}
				if !allServe(fam, serving) {
					continue // backends the lab does not run echo servers for
				}
				for _, c := range clients {
					r.Services++
					if err := echo(c.Netns, port.Protocol, target); err != nil {
						fail("service %s %s/%s from %s (%s): %v", s.Key(), target, port.Protocol, c.Name, c.Node, err)
					}
				}
			}
			if port.NodePort == 0 || port.Protocol != v1.ProtocolTCP || len(ready) == 0 || !allServe(ready, serving) {
				continue
			}
			for _, n := range l.State.Nodes {
				if s.ExternalTrafficPolicy == v1.TrafficPolicyLocal && len(endpoints.Local(ready, n.Name)) == 0 {
					continue // this node does not forward, by design
				}
				target := netip.AddrPortFrom(n.Underlay, uint16(port.NodePort))
				r.Services++
				if err := echo(l.State.Underlay, port.Protocol, target); err != nil {
					fail("node port %s of %s from the underlay: %v", target, s.Key(), err)
				}
			}
		}
	}
}

func allServe(eps []v1.Endpoint, serving map[netip.AddrPort]bool) bool {
	for _, e := range eps {
		if !serving[netip.AddrPortFrom(e.IP, uint16(e.Port))] {
			return false
		}
	}
	return len(eps) > 0
}

// echo does a TCP or UDP round trip through an echo server at addr.
func echo(nsPath, protocol string, addr netip.AddrPort) error {
	if protocol == v1.ProtocolUDP {
		got, err := probe.AskUDP(nsPath, addr, 2*time.Second)
		if err == nil && got != "?" {
			err = fmt.Errorf("answered %q", got)
		}
		return err
	}
	return probe.TCPEcho(nsPath, addr, 3*time.Second)
}

// refusedFast checks a TCP connect is refused within 100 ms.
func refusedFast(nsPath string, addr netip.AddrPort) error {
	start := time.Now()
	c, err := probe.DialTCP(nsPath, addr, time.Second)
	if err == nil {
		c.Close()
		return errors.New("connected; want refused")
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("%v; want refused", err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		return fmt.Errorf("refused after %v; want under 100 ms", d)
	}
	return nil
}

// ServeEcho runs the lab pods' echo server: TCP and UDP on port, until stop closes.
func ServeEcho(port int, stop <-chan struct{}) error {
	ln, err := net.Listen("tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		return err
	}
	pc, err := net.ListenPacket("udp", fmt.Sprintf(":%d", port))
	if err != nil {
		ln.Close()
		return err
	}
	go func() {
		<-stop
		ln.Close()
		pc.Close()
	}()
	go udpEcho(pc)
	probe.Echo(ln)
	return nil
}

func udpEcho(pc net.PacketConn) {
	buf := make([]byte, 64<<10)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		_, _ = pc.WriteTo(buf[:n], from)
	}
}

// resolves checks the service's name gives vip, asking the cluster DNS from a pod.
func resolves(nsPath string, s *v1.Service, vip netip.Addr) error {
	name := s.Name + "." + s.Namespace + ".svc.cluster.local."
	qtype := mdns.TypeA
	if vip.Is6() {
		qtype = mdns.TypeAAAA
	}
	var c net.Conn
	if err := probe.InNS(nsPath, func() error {
		var err error
		c, err = net.Dial("udp", "10.96.0.10:53")
		return err
	}); err != nil {
		return err
	}
	defer c.Close()
	req := new(mdns.Msg)
	req.SetQuestion(name, qtype)
	co := &mdns.Conn{Conn: c}
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if err := co.WriteMsg(req); err != nil {
		return err
	}
	m, err := co.ReadMsg()
	if err != nil {
		return err
	}
	for _, rr := range m.Answer {
		if a, ok := rr.(*mdns.A); ok && a.A.Equal(net.IP(vip.AsSlice())) {
			return nil
		}
		if a, ok := rr.(*mdns.AAAA); ok && a.AAAA.Equal(net.IP(vip.AsSlice())) {
			return nil
		}
	}
	return fmt.Errorf("%s %s: %s %v, want %s", name, mdns.TypeToString[qtype], mdns.RcodeToString[m.Rcode], m.Answer, vip)
}
