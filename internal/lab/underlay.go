package lab

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
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
	b := underlayNet.Addr().As4()
	b[3] = byte(i)
	return netip.AddrFrom4(b)
}

func underlayAddr6(i int) netip.Addr {
	b := underlayNet6.Addr().As16()
	b[15] = byte(i)
	return netip.AddrFrom16(b)
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
	// No multicast snooping: IPv6 neighbour discovery between nodes must not depend on the
	// bridge having heard each node's MLD report (sent as the node's link comes up).
	snoop := false
	if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0", MTU: 1500}, MulticastSnooping: &snoop}); err != nil {
		return fmt.Errorf("underlay bridge: %w", err)
	}
	br, err := h.LinkByName("br0")
	if err != nil {
		return err
	}
	etcdIP := underlayAddr(254)
	if err := h.AddrAdd(br, &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(etcdIP, underlayNet.Bits()))}); err != nil {
		return err
	}
	if err := h.LinkSetUp(br); err != nil {
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
		"--store", l.State.Store, "--cluster-cidr", "10.244.0.0/16,fd00:244::/56", "--node-prefix", "24", "--node-prefix-v6", "64",
		"--service-cidr", ServiceCIDRs,
		"--fabric", l.State.Fabric)
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

// plugIntoUnderlay gives the node namespace an "uplink" veth whose peer is a port of the
// underlay bridge.
func plugIntoUnderlay(underlay, node, port string, addr netip.Addr) error {
	nh, err := netlinkx.HandleAt(node)
	if err != nil {
		return err
	}
	defer nh.Close()
	uf, err := os.Open(underlay)
	if err != nil {
		return err
	}
	defer uf.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "uplink", MTU: 1500}, PeerName: port, PeerMTU: 1500, PeerNamespace: netlink.NsFd(uf.Fd())}
	if err := nh.LinkAdd(veth); err != nil {
		return fmt.Errorf("uplink: %w", err)
	}
	up, err := nh.LinkByName("uplink")
	if err != nil {
		return err
	}
	if err := nh.AddrAdd(up, &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(addr, underlayNet.Bits()))}); err != nil {
		return err
	}
	six := underlayAddr6(int(addr.As4()[3]))
	if err := nh.AddrAdd(up, &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(six, underlayNet6.Bits())), Flags: unix.IFA_F_NODAD}); err != nil {
		return err
	}
	// A node's link-local address is tentative for its first seconds up; while it is,
	// the node resolves next hops for forwarded packets from the unspecified address,
	// which peers take for duplicate address detection and never answer. A host's
	// uplink is long settled; the lab's is new, so it skips DAD.
	if err := probe.InNS(node, func() error {
		return os.WriteFile("/proc/sys/net/ipv6/conf/uplink/accept_dad", []byte("0"), 0o644)
	}); err != nil {
		return fmt.Errorf("uplink accept_dad: %w", err)
	}
	if err := nh.LinkSetUp(up); err != nil {
		return err
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
	br, err := uh.LinkByName("br0")
	if err != nil {
		return err
	}
	if err := uh.LinkSetMaster(p, br); err != nil {
		return err
	}
	return uh.LinkSetUp(p)
}
