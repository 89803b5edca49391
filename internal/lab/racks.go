package lab

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
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

// torASN is the rack router's AS: its own (eBGP), or the cluster's for gobgpd, which
// reflects routes inside it.
func (l *Lab) torASN() uint32 {
	if l.State.TOR == "gobgpd" {
		return NodeASN
	}
	return TORASN
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
	for r := 1; r <= l.State.Racks; r++ {
		if _, err := addBridge(uh, rackSegment(r).bridge); err != nil {
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
		if err := plugLeg(l.State.Underlay, path, leg.name, "t"+leg.name, leg.seg, leg.a4, leg.a6, nil); err != nil {
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
	if err := l.upClient(); err != nil {
		return err
	}
	if l.State.TOR == "none" {
		return nil // a router that only forwards: no daemon, no peers
	}
	if err := l.startTOR(); err != nil {
		return err
	}
	for r := 1; r <= l.State.Racks; r++ {
		s := rackSegment(r)
		// Into the store, or, for a Kubernetes lab's store-less weftds, the configuration file.
		where := []string{"--store", l.State.Store}
		if l.State.Kubernetes {
			where = []string{"--config-file", l.clusterConfigFile()}
		}
		if err := l.weftInUnderlay(append([]string{"bgp", "peer", "add", fmt.Sprintf("tor-rack%d", r), "--address", s.gw.String(),
			"--asn", fmt.Sprint(l.torASN()), "--node-subnet", s.net.String()}, where...)...); err != nil {
			return err
		}
	}
	return nil
}

// The client network: one namespace outside the cluster, behind the router, as a user
// reaching services from elsewhere (its only route is the router).
var (
	clientNet  = segment{bridge: "brc", net: netip.MustParsePrefix("192.168.250.0/24"), net6: netip.MustParsePrefix("fd00:255:0:fa::/64")}
	clientAddr = netip.MustParseAddr("192.168.250.1")
)

func (l *Lab) upClient() error {
	uh, err := netlinkx.HandleAt(l.State.Underlay)
	if err != nil {
		return err
	}
	defer uh.Close()
	if _, err := addBridge(uh, clientNet.bridge); err != nil {
		return err
	}
	gw, gw6 := clientNet.host(254)
	if err := plugLeg(l.State.Underlay, l.State.Router, "rc", "trc", clientNet, gw, gw6, nil); err != nil {
		return err
	}
	path, err := createNS(l.nsName("client"))
	if err != nil {
		return err
	}
	l.State.Client = path
	if err := l.save(); err != nil {
		return err
	}
	_, a6 := clientNet.host(1)
	return plugLeg(l.State.Underlay, path, "eth0", "tc", clientNet, clientAddr, a6, []leafRoute{{gw: gw}, {gw: gw6}})
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
	case "frr":
		if err := l.startZebra(); err != nil {
			return err
		}
		return l.startFRRBGP()
	case "gobgpd":
		if err := l.startZebra(); err != nil { // gobgpd programs the FIB through FRR's zebra
			return err
		}
		return l.startGoBGPD()
	}
	return fmt.Errorf("--tor %q: use bird, gobgpd or frr", l.State.TOR)
}

// startDaemon runs program in the router namespace in the foreground (so its PID is its
// own), logging to DIR/name.out, and waits until ready says it serves.
func (l *Lab) startDaemon(name, program string, ready func() bool, args ...string) error {
	cmd := exec.Command("nsenter", append([]string{"--net=" + l.State.Router, "--", program}, args...)...)
	logf, err := os.Create(filepath.Join(l.torDir(), name+".out"))
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	go func() { _ = cmd.Wait() }()
	l.State.TORProcs = append(l.State.TORProcs, Proc{PID: cmd.Process.Pid, Program: filepath.Base(program)})
	if err := l.save(); err != nil {
		return err
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if ready() {
			return nil
		}
		if !pidAlive(cmd.Process.Pid) {
			break
		}
	}
	out, _ := os.ReadFile(logf.Name())
	return fmt.Errorf("%s did not start: %s", name, out)
}

const frrDir = "/usr/lib/frr"

// zserv is the socket of the router's zebra (FRR's FIB manager).
func (l *Lab) zserv() string { return filepath.Join(l.torDir(), "zserv.api") }

func (l *Lab) startZebra() error {
	if _, err := os.Stat(filepath.Join(frrDir, "zebra")); err != nil {
		return fmt.Errorf("--tor %s needs FRR's zebra (apt-get install frr): %w", l.State.TOR, err)
	}
	// FRR's daemons drop to its own user: they need to own their directory.
	if u, err := user.Lookup("frr"); err == nil {
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(l.torDir(), uid, gid); err != nil {
			return err
		}
	}
	conf := filepath.Join(l.torDir(), "zebra.conf")
	if err := os.WriteFile(conf, []byte("hostname tor\n"), 0o644); err != nil {
		return err
	}
	return l.startDaemon("zebra", filepath.Join(frrDir, "zebra"), exists(l.zserv()), "-f", conf, "-i", filepath.Join(l.torDir(), "zebra.pid"),
		"-z", l.zserv(), "--vty_socket", l.torDir(), "-P", "0", "--log", "file:"+filepath.Join(l.torDir(), "zebra.log"))
}

func (l *Lab) startFRRBGP() error {
	var b bytes.Buffer
	fmt.Fprintf(&b, `frr defaults datacenter
hostname tor
ip prefix-list cluster4 seq 5 permit 10.244.0.0/16 le 32
ip prefix-list cluster4 seq 10 permit 10.96.0.0/16 le 32
ip prefix-list cluster4 seq 15 permit 10.97.0.0/24 le 32
ipv6 prefix-list cluster6 seq 5 permit fd00:244::/56 le 128
ipv6 prefix-list cluster6 seq 10 permit fd00:96::/112 le 128
router bgp %d
 bgp router-id %s
 no bgp ebgp-requires-policy
 bgp graceful-restart
 bgp bestpath as-path multipath-relax
 neighbor rack peer-group
 neighbor rack remote-as %d
 neighbor rack timers 3 9
 neighbor rack timers connect 1
`, TORASN, routerMgmt, NodeASN)
	for r := 1; r <= l.State.Racks; r++ {
		fmt.Fprintf(&b, " bgp listen range %s peer-group rack\n", rackSegment(r).net)
	}
	b.WriteString(` address-family ipv4 unicast
  neighbor rack activate
  neighbor rack prefix-list cluster4 in
 exit-address-family
 address-family ipv6 unicast
  neighbor rack activate
  neighbor rack prefix-list cluster6 in
 exit-address-family
`)
	conf := filepath.Join(l.torDir(), "bgpd.conf")
	if err := os.WriteFile(conf, b.Bytes(), 0o644); err != nil {
		return err
	}
	return l.startDaemon("bgpd", filepath.Join(frrDir, "bgpd"), exists(filepath.Join(l.torDir(), "bgpd.vty")), "-f", conf, "-i", filepath.Join(l.torDir(), "bgpd.pid"),
		"-z", l.zserv(), "--vty_socket", l.torDir(), "-P", "0", "--log", "file:"+filepath.Join(l.torDir(), "bgpd.log"))
}

// startGoBGPD runs gobgpd as the racks' route reflector inside the cluster's AS (iBGP;
// nodes resolve a next hop in another rack through the router). Not as an eBGP router
// like the others: with every node in one AS, GoBGP must replace the AS on the way out
// (replace-peer-as), and then it drops the withdrawals (their AS path still loops), so a
// removed node's block would stay routed forever.
func (l *Lab) startGoBGPD() error {
	if _, err := exec.LookPath(gobgpBin("gobgpd")); err != nil {
		return fmt.Errorf("--tor gobgpd needs gobgpd: %w", err)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, `[global.config]
  as = %d
  router-id = "%s"
[global.use-multiple-paths.config]
  enabled = true
[zebra.config]
  enabled = true
  url = "unix:%s"
  version = 6
  software-name = "frr8.4"
  redistribute-route-type-list = []
[[peer-groups]]
  [peer-groups.config]
    peer-group-name = "rack"
    peer-as = %d
  [peer-groups.route-reflector.config]
    route-reflector-client = true
    route-reflector-cluster-id = "%s"
  [peer-groups.timers.config]
    hold-time = 9
    keepalive-interval = 3
    connect-retry = 1
  [peer-groups.graceful-restart.config]
    enabled = true
  [[peer-groups.afi-safis]]
    [peer-groups.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
    [peer-groups.afi-safis.mp-graceful-restart.config]
      enabled = true
  [[peer-groups.afi-safis]]
    [peer-groups.afi-safis.config]
      afi-safi-name = "ipv6-unicast"
    [peer-groups.afi-safis.mp-graceful-restart.config]
      enabled = true
`, NodeASN, routerMgmt, l.zserv(), NodeASN, routerMgmt)
	for r := 1; r <= l.State.Racks; r++ {
		fmt.Fprintf(&b, "[[dynamic-neighbors]]\n  [dynamic-neighbors.config]\n    prefix = \"%s\"\n    peer-group = \"rack\"\n", rackSegment(r).net)
	}
	conf := filepath.Join(l.torDir(), "gobgpd.toml")
	if err := os.WriteFile(conf, b.Bytes(), 0o644); err != nil {
		return err
	}
	return l.startDaemon("gobgpd", gobgpBin("gobgpd"), func() bool {
		return exec.Command("nsenter", "--net="+l.State.Router, "--", gobgpBin("gobgp"), "-u", "127.0.0.1", "-p", "50051", "global").Run() == nil
	}, "-f", conf, "-t", "toml", "--api-hosts", gobgpAPI, "--pprof-disable",
		"--log-plain")
}

// gobgpAPI is where the router's gobgpd serves its gRPC API (inside the router namespace).
const gobgpAPI = "127.0.0.1:50051"

func exists(path string) func() bool {
	return func() bool { _, err := os.Stat(path); return err == nil }
}

// gobgpBin finds gobgpd or gobgp: in $WEFT_GOBGP_DIR when set, else on the PATH.
// Debian 12's gobgpd (3.10) cannot read the interface messages of Debian 12's zebra (FRR
// 8.4: it panics on the longer interface names of FRR >= 8.3), so a racked lab with
// --tor gobgpd uses GoBGP v4 built from its module (scripts/test.sh does: go install
// github.com/osrg/gobgp/v4/cmd/gobgpd@v4.8.0) and points WEFT_GOBGP_DIR at it.
func gobgpBin(name string) string {
	if d := os.Getenv("WEFT_GOBGP_DIR"); d != "" {
		return filepath.Join(d, name)
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	return name
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
  ipv4 { import where net ~ [ 10.244.0.0/16+, 10.96.0.0/16+, 10.97.0.0/24+ ]; export where source = RTS_BGP; };
  ipv6 { import where net ~ [ fd00:244::/56+, fd00:96::/112+ ]; export where source = RTS_BGP; };
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
	case "frr":
		cmd = exec.Command("vtysh", "--vty_socket", l.torDir(), "-c", "show ip bgp", "-c", "show bgp ipv6 unicast")
	case "gobgpd":
		g := gobgpBin("gobgp")
		cmd = exec.Command("nsenter", "--net="+l.State.Router, "--", "sh", "-c",
			g+" -u 127.0.0.1 -p 50051 global rib -a ipv4; "+g+" -u 127.0.0.1 -p 50051 global rib -a ipv6")
	default:
		return "", fmt.Errorf("lab %s has no rack router", l.opts.Name)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s: %v: %s", cmd, err, out)
	}
	return string(out), nil
}
