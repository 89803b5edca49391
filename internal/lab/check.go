package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/weftnet/weft/internal/netlinkx"
	"github.com/weftnet/weft/internal/probe"
)

// Report is `weft lab check`: the connectivity matrix, MTUs and DF probes.
type Report struct {
	OK       bool     `json:"ok"`
	Failures []string `json:"failures"`
	Pings    int      `json:"pings"`
	TCP      int      `json:"tcp"`
	MTUs     int      `json:"mtus"`
	DF       int      `json:"dfProbes"`
	Services int      `json:"services"` // service and node port probes
	BGP      int      `json:"bgp"`      // fabric bgp: sessions and router entries checked
	Ingress  int      `json:"ingress"`  // ingress routes reached from outside the nodes
}

// Check tests every pod pair (ICMP, and TCP to pods that serve), each pod's MTU against its
// node's, a don't-fragment probe of exactly the pod MTU (which must pass) and one byte
// more (which must be refused) between pods on different nodes, and every service from a
// pod on every node (node ports from the underlay).
func (l *Lab) Check() Report {
	r := Report{Failures: []string{}}
	fail := func(format string, a ...any) { r.Failures = append(r.Failures, fmt.Sprintf(format, a...)) }
	for _, res := range l.PingMatrix() {
		r.Pings++
		if res.Err != nil {
			fail("ping %s -> %s (%s): %v", res.From, res.To, res.Dst, res.Err)
		}
	}
	for _, src := range l.State.Pods {
		for _, dst := range l.State.Pods {
			if src == dst || dst.Serve == 0 || dst.ServeHTTP {
				continue
			}
			for _, ip := range dst.IPs {
				r.TCP++
				if err := probe.TCPEcho(src.Netns, netip.AddrPortFrom(ip, uint16(dst.Serve)), 3*time.Second); err != nil {
					fail("tcp %s -> %s (%s:%d): %v", src.Name, dst.Name, ip, dst.Serve, err)
				}
			}
		}
	}
	for _, p := range l.State.Pods {
		r.MTUs++
		if got, err := podMTU(p); err != nil || got != p.MTU {
			fail("pod %s: MTU %d (%v), want %d", p.Name, got, err, p.MTU)
		}
	}
	for _, src := range l.State.Pods {
		for _, dst := range l.State.Pods {
			if src.Node == dst.Node || len(dst.IPs) == 0 || !dst.IPs[0].Is4() {
				continue
			}
			r.DF += 2
			payload := src.MTU - 28 // IPv4 + ICMP headers
			if _, err := probe.Ping(src.Netns, dst.IPs[0], payload, true, 2*time.Second); err != nil {
				fail("DF probe of %d bytes %s -> %s: %v", src.MTU, src.Name, dst.Name, err)
			}
			if _, err := probe.Ping(src.Netns, dst.IPs[0], payload+1, true, 2*time.Second); err == nil || !strings.Contains(err.Error(), "message too long") {
				fail("DF probe of %d bytes %s -> %s was not refused: %v", src.MTU+1, src.Name, dst.Name, err)
			}
			break
		}
	}
	l.checkServices(&r, fail)
	l.checkIngress(&r, fail)
	checked, problems := l.bgpProblems()
	r.BGP += checked
	for _, p := range problems {
		fail("%s", p)
	}
	r.OK = len(r.Failures) == 0
	return r
}

// bgpProblems, under fabric bgp: every node's sessions are established, and in a racked
// lab the rack router's own view holds every node's blocks. It also says how many things
// it checked.
func (l *Lab) bgpProblems() (checked int, problems []string) {
	if l.State.Fabric != "bgp" {
		return 0, nil
	}
	for _, n := range l.State.Nodes {
		var out strings.Builder
		if err := l.WeftOnNode(n.Name, nil, &out, &out, "bgp", "peers", "-o", "json", "--socket", filepath.Join(n.RunDir, "weft.sock")); err != nil {
			problems = append(problems, fmt.Sprintf("bgp peers of %s: %v: %s", n.Name, err, out.String()))
			continue
		}
		var peers []struct{ Name, Address, State string }
		if err := json.Unmarshal([]byte(out.String()), &peers); err != nil {
			problems = append(problems, fmt.Sprintf("bgp peers of %s: %v", n.Name, err))
			continue
		}
		for _, p := range peers {
			checked++
			if p.State != "established" {
				problems = append(problems, fmt.Sprintf("bgp session %s -> %s (%s): %s", n.Name, p.Name, p.Address, p.State))
			}
		}
	}
	if l.State.Router == "" || l.State.TOR == "none" {
		return checked, problems
	}
	view, err := l.RouterView()
	if err != nil {
		return checked, append(problems, fmt.Sprintf("rack router: %v", err))
	}
	for _, n := range l.State.Nodes {
		for _, b := range n.PodCIDRs {
			checked++
			if !strings.Contains(view, b.String()) {
				problems = append(problems, fmt.Sprintf("the rack router (%s) has no route to %s's %s", l.State.TOR, n.Name, b))
			}
		}
	}
	return checked, problems
}

func podMTU(p *Pod) (int, error) {
	h, err := netlinkx.HandleAt(p.Netns)
	if err != nil {
		return 0, err
	}
	defer h.Close()
	l, err := h.LinkByName("eth0")
	if err != nil {
		return 0, err
	}
	return l.Attrs().MTU, nil
}

// startServe runs `weft lab serve` (a TCP echo server) inside the pod.
func (l *Lab) startServe(p *Pod, port int) error {
	logf, err := os.Create(filepath.Join(l.dir(), "serve-"+p.Name+".log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	args := []string{"--net=" + p.Netns, "--", filepath.Join(l.opts.BinDir, "weft"), "lab", "serve", "--port", fmt.Sprint(port)}
	if p.ServeHTTP {
		args = append(args, "--http", "--pod", p.Name)
	}
	cmd := exec.Command("nsenter", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	p.Serve, p.ServePID = port, cmd.Process.Pid
	go func() { _ = cmd.Wait() }()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c, err := probe.DialTCP(p.Netns, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port)), time.Second); err == nil {
			c.Close()
			return l.save()
		}
	}
	return fmt.Errorf("echo server in %s did not start", p.Name)
}

// RemovePod detaches a pod (DEL through weft-cni) and deletes its namespace.
func (l *Lab) RemovePod(name string) error {
	for i, p := range l.State.Pods {
		if p.Name != name {
			continue
		}
		stopPID(p.ServePID, "weft")
		var errs []error
		if l.State.Kubernetes {
			errs = append(errs, l.unpublishPod(p))
		}
		if n, err := l.node(p.Node); err == nil {
			if list, err := l.netconf(n); err == nil {
				_ = probe.InNS(n.Netns, func() error {
					return l.cni().DelNetworkList(context.Background(), list, l.runtimeConf(p))
				})
			}
		}
		errs = append(errs, deleteNS(p.Netns))
		l.State.Pods = append(l.State.Pods[:i], l.State.Pods[i+1:]...)
		return errors.Join(append(errs, l.save())...)
	}
	return fmt.Errorf("no pod %q in lab %s", name, l.opts.Name)
}

// Exec runs argv in the pod's network namespace, attached to the caller's terminal.
// The command sees the pod's resolv.conf (the cluster DNS, Kubernetes' search path), as a
// container would: it runs in a private mount namespace with that file bound over
// /etc/resolv.conf.
func (l *Lab) Exec(pod string, argv []string) error {
	for _, p := range l.State.Pods {
		if p.Name == pod {
			resolv := filepath.Join(l.dir(), "resolv.conf")
			if err := os.WriteFile(resolv, []byte(ResolvConf), 0o644); err != nil {
				return err
			}
			args := append([]string{"--net=" + p.Netns, "--", "unshare", "--mount", "--propagation", "private", "--",
				"sh", "-c", `mount --bind "$0" /etc/resolv.conf && exec "$@"`, resolv}, argv...)
			cmd := exec.Command("nsenter", args...)
			cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
			return cmd.Run()
		}
	}
	return fmt.Errorf("no pod %q in lab %s", pod, l.opts.Name)
}

// ResolvConf is a lab pod's resolv.conf (its pods are in namespace default).
const ResolvConf = "nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
