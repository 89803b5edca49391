package lab

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/netlinkx"
	"github.com/weftnet/weft/internal/probe"
)

// The underlay network of a lab: a bridge in its own namespace, 1500 bytes like a real
// Ethernet segment, with etcd on .254 and node i on .i.
var (
	underlayNet  = netip.MustParsePrefix("192.168.255.0/24")
	underlayNet6 = netip.MustParsePrefix("fd00:255::/64")
)

const etcdPort = 2379

func underlayAddr(i int) netip.Addr {
	a, _ := flat.host(i)
	return a
}

func (l *Lab) upUnderlay() error {
	path, err := createNS(l.nsName("underlay"))
	if err != nil {
		return err
	}
	l.State.Underlay = path
	if err := l.save(); err != nil {
		return err
	}
	h, err := netlinkx.HandleAt(path)
	if err != nil {
		return err
	}
	defer h.Close()
	br, err := addBridge(h, flat.bridge)
	if err != nil {
		return err
	}
	etcdIP := underlayAddr(254)
	if err := h.AddrAdd(br, &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(etcdIP, underlayNet.Bits()))}); err != nil {
		return err
	}

	// etcd, embedded in the weft binary, runs as a process of its own in the underlay.
	logf, err := os.Create(filepath.Join(l.dir(), "etcd.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	client := fmt.Sprintf("%s:%d", etcdIP, etcdPort)
	cmd := exec.Command("nsenter", "--net="+path, "--", filepath.Join(l.opts.BinDir, "weft"), "lab", "etcd",
		"--data-dir", filepath.Join(l.dir(), "etcd"), "--listen", client)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	l.State.EtcdPID = cmd.Process.Pid
	l.State.Store = "etcd://" + client
	go func() { _ = cmd.Wait() }()
	if err := l.save(); err != nil {
		return err
	}
	ready := false
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if c, err := probe.DialTCP(path, netip.MustParseAddrPort(client), time.Second); err == nil {
			c.Close()
			ready = true
			break
		}
	}
	if !ready {
		return fmt.Errorf("etcd did not come up; see %s", logf.Name())
	}
	init := exec.Command("nsenter", "--net="+path, "--", filepath.Join(l.opts.BinDir, "weft"), "cluster", "init",
		"--store", l.State.Store, "--cluster-cidr", ClusterCIDRs, "--node-prefix", "24", "--node-prefix-v6", "64",
		"--service-cidr", ServiceCIDRs,
		"--fabric", l.State.Fabric)
	if l.State.Fabric == "bgp" {
		init.Args = append(init.Args, "--asn", fmt.Sprint(NodeASN))
		switch {
		case l.State.Racks > 1 && l.State.TOR == "none":
			// The router only forwards: the nodes mesh among themselves and carry pod
			// traffic to other racks in VXLAN (Calico's CrossSubnet).
			init.Args = append(init.Args, "--bgp-cross-subnet-vxlan")
		case l.State.Racks > 1:
			// Each node peers with its rack's router, which also learns the service
			// addresses (the lab's client behind it reaches services through them).
			init.Args = append(init.Args, "--bgp-no-node-mesh", "--bgp-announce-services", "--bgp-lb-cidr", LoadBalancerCIDR)
		}
	}
	if l.State.Kubernetes {
		// The same configuration as a file, for weftds that keep no store.
		file := exec.Command(init.Path, append(slices.Clone(init.Args[1:]), "--config-file", l.clusterConfigFile())...)
		if out, err := file.CombinedOutput(); err != nil {
			return fmt.Errorf("weft cluster init --config-file: %v: %s", err, out)
		}
	}
	var out []byte
	for range 50 {
		if out, err = init.CombinedOutput(); err == nil {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
		init = exec.Command(init.Path, init.Args[1:]...)
	}
	return fmt.Errorf("weft cluster init: %v: %s", err, out)
}

// clusterConfigFile is the cluster configuration as a file (Kubernetes labs' weftds).
func (l *Lab) clusterConfigFile() string { return filepath.Join(l.dir(), "cluster.json") }

// segment is an L2 segment of the underlay: a bridge in the underlay namespace with its
// networks. The flat lab has one (br0); a racked lab has one per rack, joined only by the
// router namespace (gw, gw6 are its addresses there).
type segment struct {
	bridge    string
	net, net6 netip.Prefix
	gw, gw6   netip.Addr
}

var flat = segment{bridge: "br0", net: underlayNet, net6: underlayNet6}

// host is address i of the segment's networks.
func (s segment) host(i int) (netip.Addr, netip.Addr) {
	b := s.net.Addr().As4()
	b[3] = byte(i)
	b6 := s.net6.Addr().As16()
	b6[15] = byte(i)
	return netip.AddrFrom4(b), netip.AddrFrom16(b6)
}

// plugIntoUnderlay gives the node namespace an "uplink" veth whose peer is a port of the
// segment's bridge, with address i of the segment; in a rack, the other racks and the
// management segment (etcd) are reached through the rack's router, pod networks only
// through what BGP teaches.
func plugIntoUnderlay(underlay, node, port string, seg segment, i int) error {
	addr, six := seg.host(i)
	var routes []leafRoute
	if seg.gw.IsValid() {
		routes = []leafRoute{{underlayWide, seg.gw}, {underlayWide6, seg.gw6}}
	}
	return plugLeg(underlay, node, "uplink", port, seg, addr, six, routes)
}

// leafRoute is a route a leg's namespace sends through the segment (Dst zero: default).
type leafRoute struct {
	dst netip.Prefix
	gw  netip.Addr
}

// plugLeg gives namespace ns a veth called name, whose peer (port) is a port of the
// segment's bridge in the underlay namespace, with addresses a4 and a6 on the segment and
// the routes given.
func plugLeg(underlay, ns, name, port string, seg segment, a4, a6 netip.Addr, routes []leafRoute) error {
	nh, err := netlinkx.HandleAt(ns)
	if err != nil {
		return err
	}
	defer nh.Close()
	uf, err := os.Open(underlay)
	if err != nil {
		return err
	}
	defer uf.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: 1500}, PeerName: port, PeerMTU: 1500, PeerNamespace: netlink.NsFd(uf.Fd())}
	if err := nh.LinkAdd(veth); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	leg, err := nh.LinkByName(name)
	if err != nil {
		return err
	}
	if err := nh.AddrAdd(leg, &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(a4, seg.net.Bits()))}); err != nil {
		return err
	}
	if err := nh.AddrAdd(leg, &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(a6, seg.net6.Bits())), Flags: unix.IFA_F_NODAD}); err != nil {
		return err
	}
	// A new link-local address is tentative for its first seconds up; while it is, the
	// namespace resolves next hops for forwarded packets from the unspecified address,
	// which peers take for duplicate address detection and never answer. A real host's
	// link is long settled; the lab's is new, so it skips DAD.
	if err := probe.InNS(ns, func() error {
		return os.WriteFile("/proc/sys/net/ipv6/conf/"+name+"/accept_dad", []byte("0"), 0o644)
	}); err != nil {
		return fmt.Errorf("%s accept_dad: %w", name, err)
	}
	if err := nh.LinkSetUp(leg); err != nil {
		return err
	}
	if lo, err := nh.LinkByName("lo"); err == nil {
		_ = nh.LinkSetUp(lo)
	}
	for _, r := range routes {
		rt := &netlink.Route{Gw: r.gw.AsSlice(), LinkIndex: leg.Attrs().Index}
		if r.dst.IsValid() {
			rt.Dst = prefixNet(r.dst)
		}
		if err := nh.RouteAdd(rt); err != nil {
			return fmt.Errorf("route %s via %s: %w", r.dst, r.gw, err)
		}
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

// addBridge makes and brings up a bridge of the underlay (no multicast snooping: IPv6
// neighbour discovery between namespaces must not depend on the bridge having heard each
// one's MLD report).
func addBridge(h *netlink.Handle, name string) (netlink.Link, error) {
	snoop := false
	if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: 1500}, MulticastSnooping: &snoop}); err != nil {
		return nil, fmt.Errorf("bridge %s: %w", name, err)
	}
	br, err := h.LinkByName(name)
	if err != nil {
		return nil, err
	}
	return br, h.LinkSetUp(br)
}
