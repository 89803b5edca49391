package lab

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/netlinkx"
	"github.com/weftnet/weft/internal/probe"
)

// A racked lab (fabric bgp, --racks N): rack r is the L2 segment 192.168.r.0/24 and
// fd00:255:0:r::/64 on bridge br<r> of the underlay namespace. The router namespace has a
// leg in every rack (.254, ::fe) and one in the management segment br0 (etcd); it runs a
// real BGP daemon (BIRD 2, gobgpd with FRR's zebra, or FRR) as every rack's top-of-rack
// router. Nodes reach other racks' and the management addresses through it, and pod
// networks only through routes learned over BGP: nothing else routes 10.244.0.0/16.
const (
	NodeASN = 64512 // the cluster's AS
	TORASN  = 64513 // the rack router's AS
)

var (
	underlayWide  = netip.MustParsePrefix("192.168.0.0/16")
	underlayWide6 = netip.MustParsePrefix("fd00:255::/48")
	routerMgmt    = netip.MustParseAddr("192.168.255.253")
	routerMgmt6   = netip.MustParseAddr("fd00:255::fd")
)

func rackSegment(r int) segment {
	net6 := [16]byte{0xfd, 0x00, 0x02, 0x55, 0, 0, 0, byte(r)}
	gw6 := net6
	gw6[15] = 0xfe
	return segment{
		bridge: fmt.Sprintf("br%d", r),
		net:    netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 168, byte(r), 0}), 24),
		net6:   netip.PrefixFrom(netip.AddrFrom16(net6), 64),
		gw:     netip.AddrFrom4([4]byte{192, 168, byte(r), 254}),
		gw6:    netip.AddrFrom16(gw6),
	}
}

// rackOf spreads nodes over racks round-robin: node 1 in rack 1, node 2 in rack 2, ...
func (l *Lab) rackOf(i int) int {
	if l.State.Racks < 2 {
		return 0
	}
	return (i-1)%l.State.Racks + 1
}

func (l *Lab) segmentOf(i int) segment {
	if r := l.rackOf(i); r > 0 {
		return rackSegment(r)
	}
	return flat
}

// upRacks builds the rack bridges and the router namespace, starts the router's BGP
// daemon and tells the cluster about it (one external peer per rack).
func (l *Lab) upRacks() error {
	uh, err := netlinkx.HandleAt(l.State.Underlay)
	if err != nil {
		return err
	}
	defer uh.Close()
	snoop := false
	for r := 1; r <= l.State.Racks; r++ {
		if err := uh.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: rackSegment(r).bridge, MTU: 1500}, MulticastSnooping: &snoop}); err != nil {
			return fmt.Errorf("rack bridge: %w", err)
		}
		br, err := uh.LinkByName(rackSegment(r).bridge)
		if err != nil {
			return err
		}
		if err := uh.LinkSetUp(br); err != nil {
			return err
		}
	}
	path, err := createNS(l.nsName("tor"))
	if err != nil {
		return err
	}
	l.State.Router = path
	if err := l.save(); err != nil {
		return err
	}
	if err := probe.InNS(path, func() error {
		for _, k := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"} {
			if err := os.WriteFile(k, []byte("1"), 0o644); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return fmt.Errorf("router forwarding: %w", err)
	}
	legs := []struct {
		name   string
		seg    segment
		a4, a6 netip.Addr
	}{{"r0", flat, routerMgmt, routerMgmt6}}
	for r := 1; r <= l.State.Racks; r++ {
		s := rackSegment(r)
		legs = append(legs, struct {
			name   string
			seg    segment
			a4, a6 netip.Addr
		}{fmt.Sprintf("r%d", r), s, s.gw, s.gw6})
	}
	for _, leg := range legs {
		if err := plugRouterLeg(l.State.Underlay, path, leg.name, "t"+leg.name, leg.seg, leg.a4, leg.a6); err != nil {
			return err
		}
	}
	// The management segment (etcd) answers the racks through the router.
	br0, err := uh.LinkByName("br0")
	if err != nil {
		return err
	}
	for _, r := range []struct {
		dst netip.Prefix
		gw  netip.Addr
	}{{underlayWide, routerMgmt}, {underlayWide6, routerMgmt6}} {
		if r.gw.Is6() {
			if err := uh.AddrAdd(br0, &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(netip.MustParseAddr("fd00:255::fe"), 64)), Flags: unix.IFA_F_NODAD}); err != nil {
				return err
			}
		}
		if err := uh.RouteAdd(&netlink.Route{Dst: prefixNet(r.dst), Gw: r.gw.AsSlice(), LinkIndex: br0.Attrs().Index}); err != nil {
			return fmt.Errorf("underlay route %s: %w", r.dst, err)
		}
	}
	if err := l.startTOR(); err != nil {
		return err
	}
	for r := 1; r <= l.State.Racks; r++ {
		s := rackSegment(r)
		if err := l.weftInUnderlay("bgp", "peer", "add", fmt.Sprintf("tor-rack%d", r), "--address", s.gw.String(),
			"--asn", fmt.Sprint(TORASN), "--node-subnet", s.net.String(), "--store", l.State.Store); err != nil {
			return err
		}
	}
	return nil
}

func plugRouterLeg(underlay, router, name, port string, seg segment, a4, a6 netip.Addr) error {
	rh, err := netlinkx.HandleAt(router)
	if err != nil {
		return err
	}
	defer rh.Close()
	uf, err := os.Open(underlay)
	if err != nil {
		return err
	}
	defer uf.Close()
	if err := rh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: 1500}, PeerName: port, PeerMTU: 1500, PeerNamespace: netlink.NsFd(uf.Fd())}); err != nil {
		return fmt.Errorf("router leg %s: %w", name, err)
	}
	leg, err := rh.LinkByName(name)
	if err != nil {
		return err
	}
	if err := rh.AddrAdd(leg, &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(a4, seg.net.Bits()))}); err != nil {
		return err
	}
	if err := rh.AddrAdd(leg, &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(a6, seg.net6.Bits())), Flags: unix.IFA_F_NODAD}); err != nil {
		return err
	}
	if err := rh.LinkSetUp(leg); err != nil {
		return err
	}
	if lo, err := rh.LinkByName("lo"); err == nil {
		_ = rh.LinkSetUp(lo)
	}
	uh, err := netlinkx.HandleAt(underlay)
	if err != nil {
		return err
	}
	defer uh.Close()
	p, err := uh.LinkByName(port)
	if err != nil {
		return err
	}
	br, err := uh.LinkByName(seg.bridge)
	if err != nil {
		return err
	}
	if err := uh.LinkSetMaster(p, br); err != nil {
		return err
	}
	return uh.LinkSetUp(p)
}

// weftInUnderlay runs the weft CLI in the underlay namespace (where etcd listens).
func (l *Lab) weftInUnderlay(args ...string) error {
	out, err := exec.Command("nsenter", append([]string{"--net=" + l.State.Underlay, "--", filepath.Join(l.opts.BinDir, "weft")}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("weft %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

func (l *Lab) torDir() string { return filepath.Join(l.dir(), "tor") }

// startTOR starts the router's BGP daemon in the router namespace.
func (l *Lab) startTOR() error {
	if err := os.MkdirAll(l.torDir(), 0o755); err != nil {
		return err
	}
	switch l.State.TOR {
	case "bird":
		return l.startBIRD()
	}
	return fmt.Errorf("--tor %s: not built yet", l.State.TOR)
}

func (l *Lab) startBIRD() error {
	if _, err := exec.LookPath("bird"); err != nil {
		return fmt.Errorf("--tor bird needs BIRD 2 (apt-get install bird2): %w", err)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, `log "%s/bird.log" { info, remote, warning, error, auth, fatal, bug };
router id %s;
protocol device { scan time 10; }
protocol kernel kernel4 { merge paths on; ipv4 { import none; export where source = RTS_BGP; }; }
protocol kernel kernel6 { merge paths on; ipv6 { import none; export where source = RTS_BGP; }; }
template bgp rack {
  local as %d;
  hold time 9; keepalive time 3; connect retry time 1;
  graceful restart on;
  ipv4 { import where net ~ [ 10.244.0.0/16+ ]; export where source = RTS_BGP; };
  ipv6 { import where net ~ [ fd00:244::/56+ ]; export where source = RTS_BGP; };
}
`, l.torDir(), routerMgmt, TORASN)
	for r := 1; r <= l.State.Racks; r++ {
		s := rackSegment(r)
		// Dynamic neighbours: any node of the rack may open a session.
		fmt.Fprintf(&b, "protocol bgp rack%d from rack {\n  neighbor range %s as %d;\n  dynamic name \"rack%d_\";\n  source address %s;\n  ipv6 { next hop address %s; };\n}\n",
			r, s.net, NodeASN, r, s.gw, s.gw6)
	}
	conf := filepath.Join(l.torDir(), "bird.conf")
	if err := os.WriteFile(conf, b.Bytes(), 0o644); err != nil {
		return err
	}
	// -f: stay in the foreground, so the PID is bird's own and it ends with its process group.
	cmd := exec.Command("nsenter", "--net="+l.State.Router, "--", "bird", "-f", "-c", conf, "-s", l.BIRDSocket())
	logf, err := os.Create(filepath.Join(l.torDir(), "bird.out"))
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start bird: %w", err)
	}
	go func() { _ = cmd.Wait() }()
	l.State.TORProcs = append(l.State.TORProcs, Proc{PID: cmd.Process.Pid, Program: "bird"})
	if err := l.save(); err != nil {
		return err
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(l.BIRDSocket()); err == nil {
			return nil
		}
		if !pidAlive(cmd.Process.Pid) {
			break
		}
	}
	out, _ := os.ReadFile(logf.Name())
	return fmt.Errorf("bird did not start: %s", out)
}

// BIRDSocket is the control socket of a racked lab's BIRD (birdc -s).
func (l *Lab) BIRDSocket() string { return filepath.Join(l.torDir(), "bird.ctl") }

// RouterView is what the rack router's own BGP daemon says about its routes, as its CLI
// prints it.
func (l *Lab) RouterView() (string, error) {
	var cmd *exec.Cmd
	switch l.State.TOR {
	case "bird":
		cmd = exec.Command("birdc", "-s", l.BIRDSocket(), "show", "route")
	default:
		return "", fmt.Errorf("lab %s has no rack router", l.opts.Name)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s: %v: %s", cmd, err, out)
	}
	return string(out), nil
}
