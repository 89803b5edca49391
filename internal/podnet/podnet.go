// Package podnet plumbs a pod's interface: a veth pair created straight into the pod's
// namespace, addresses and routes inside it, and the node side either enslaved to a bridge
// or routed point-to-point.
//
// Design notes:
//   - One RTM_NEWLINK creates both ends: the host end already up (and, for bridge mode,
//     already enslaved) and the pod end already in the pod namespace under its final name.
//   - Pod-side work goes through a netlink handle bound to the pod namespace, so no thread
//     ever switches namespace here.
//   - In ptp mode both ends get permanent neighbour entries for each other, so neither side
//     ARPs or runs neighbour discovery, and the node needs no address on the veth.
//   - The host end's name is a hash of (container ID, ifname) and its alias names the
//     network, so DEL and GC can find it from the key alone.
package podnet

import (
	"encoding/hex"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/netlinkx"
)

// Link-local next hops a ptp pod routes through. The node answers for them with the MAC of
// the pod's host-side veth.
var (
	PTPGatewayV4 = netip.MustParseAddr("169.254.1.1")
	PTPGatewayV6 = netip.MustParseAddr("fe80::1")
)

// AliasPrefix starts the alias of every host-side veth weft creates.
const AliasPrefix = "weft:"

// Route is a route to install in the pod.
type Route struct {
	Dst netip.Prefix
	GW  netip.Addr // invalid: the mode's default gateway for the family
}

// Spec is what one attachment should look like.
type Spec struct {
	Network     string
	ContainerID string
	IfName      string
	Netns       string // path of the pod's network namespace
	PTP         bool   // ptp instead of bridge
	Bridge      string
	MTU         int
	MAC         net.HardwareAddr // optional pod-side MAC
	Addrs       []netip.Prefix   // pod addresses with their subnet length
	Gateways    []netip.Addr     // bridge mode: the bridge's address per family
	Routes      []Route
}

// Iface describes one interface for the CNI result.
type Iface struct {
	Name    string
	MAC     string
	Sandbox string
}

// Result is what Link and Configure built.
type Result struct {
	Bridge *Iface // bridge mode only
	Host   Iface
	Pod    Iface
	Routes []Route // the routes installed in the pod, gateways resolved
}

// HostVethName is the node-side name of the veth for (containerID, ifname).
func HostVethName(containerID, ifName string) string {
	h := fnv.New64a()
	h.Write([]byte(containerID + "/" + ifName))
	return fmt.Sprintf("weft%011x", h.Sum64()&(1<<44-1))
}

// Owner is what a host veth's alias records: the attachment it belongs to and the MAC of
// its pod end, so weftd can program the fast path without entering the pod.
type Owner struct {
	Network, ContainerID, IfName string
	PodMAC                       net.HardwareAddr
}

// Alias renders o as "weft:NETWORK:CONTAINERID:IFNAME:MACHEX".
func (o Owner) Alias() string {
	return AliasPrefix + o.Network + ":" + o.ContainerID + ":" + o.IfName + ":" + hex.EncodeToString(o.PodMAC)
}

// ParseAlias reverses Owner.Alias.
func ParseAlias(alias string) (Owner, bool) {
	rest, found := strings.CutPrefix(alias, AliasPrefix)
	if !found {
		return Owner{}, false
	}
	parts := strings.Split(rest, ":")
	if len(parts) != 4 {
		return Owner{}, false
	}
	mac, err := hex.DecodeString(parts[3])
	if err != nil || len(mac) != 6 {
		return Owner{}, false
	}
	return Owner{Network: parts[0], ContainerID: parts[1], IfName: parts[2], PodMAC: mac}, true
}

// Pending is an attachment whose links exist but carry no addresses yet. Splitting the
// two lets weft-cni create links while the agent is still allocating addresses.
type Pending struct {
	node, pod *netlink.Handle
	spec      Spec
	created   bool
	br        *netlink.Bridge
	host      netlink.Link
	podLink   netlink.Link
}

// Link creates (or, for a repeated ADD, adopts) the bridge and the veth pair. It needs no
// addresses; s.Addrs, s.Gateways and s.Routes are ignored.
func Link(node *netlink.Handle, s Spec) (p *Pending, err error) {
	pod, err := netlinkx.HandleAt(s.Netns)
	if err != nil {
		return nil, err
	}
	p = &Pending{node: node, pod: pod, spec: s}
	defer func() {
		if err != nil {
			p.Abort()
			p.Close()
			p = nil
		}
	}()
	if !s.PTP {
		if p.br, err = EnsureBridge(node, s.Bridge, s.MTU, nil); err != nil {
			return p, err
		}
	}
	hostName := HostVethName(s.ContainerID, s.IfName)
	adopted, err := adoptExisting(node, pod, hostName, s.IfName)
	if err != nil {
		return p, fmt.Errorf("%w in %s", err, s.Netns)
	}
	if !adopted {
		podNS, err := netns.GetFromPath(s.Netns)
		if err != nil {
			return p, fmt.Errorf("open pod namespace: %w", err)
		}
		defer podNS.Close()
		podMAC := s.MAC
		if podMAC == nil {
			podMAC = randomMAC()
		}
		req := vethRequest{hostName: hostName, podName: s.IfName, hostMAC: randomMAC(), podMAC: podMAC, mtu: s.MTU, podNSFd: int(podNS)}
		if p.br != nil {
			req.master = p.br.Index
		}
		if err := createVeth(&req); err != nil {
			return p, err
		}
		p.created = true
		owner := Owner{Network: s.Network, ContainerID: s.ContainerID, IfName: s.IfName, PodMAC: podMAC}
		p.host = &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostName, Index: req.index, HardwareAddr: req.hostMAC, Alias: owner.Alias()}}
		if err := node.LinkSetAlias(p.host, owner.Alias()); err != nil {
			return p, fmt.Errorf("mark %s as weft's: %w", hostName, err)
		}
	} else if p.host, err = node.LinkByName(hostName); err != nil {
		return p, fmt.Errorf("find host veth %s: %w", hostName, err)
	}
	if p.br != nil {
		if err := node.LinkSetHairpin(p.host, true); err != nil {
			return p, fmt.Errorf("enable hairpin on %s: %w", hostName, err)
		}
	}
	if p.podLink, err = pod.LinkByName(s.IfName); err != nil {
		return p, fmt.Errorf("find %s in pod: %w", s.IfName, err)
	}
	return p, nil
}

// Configure puts addresses, gateways and routes on the links.
func (p *Pending) Configure(addrs []netip.Prefix, gateways []netip.Addr, routes []Route) (Result, error) {
	s := p.spec
	s.Addrs, s.Gateways, s.Routes = addrs, gateways, routes
	var res Result
	if p.br != nil {
		if _, err := EnsureBridge(p.node, s.Bridge, s.MTU, gatewayPrefixes(s)); err != nil {
			return res, err
		}
		res.Bridge = &Iface{Name: p.br.Name, MAC: p.br.HardwareAddr.String()}
	}
	res.Host = Iface{Name: p.host.Attrs().Name, MAC: p.host.Attrs().HardwareAddr.String()}
	res.Pod = Iface{Name: s.IfName, MAC: p.podLink.Attrs().HardwareAddr.String(), Sandbox: s.Netns}
	installed, err := configurePod(p.pod, p.podLink, p.host.Attrs().HardwareAddr, s)
	if err != nil {
		return res, err
	}
	res.Routes = installed
	if s.PTP {
		if err := routeToPod(p.node, p.host, p.podLink.Attrs().HardwareAddr, s.Addrs); err != nil {
			return res, err
		}
	}
	return res, nil
}

// Abort deletes the veth if Link created it.
func (p *Pending) Abort() {
	if p.created {
		_ = p.node.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: HostVethName(p.spec.ContainerID, p.spec.IfName)}})
		p.created = false
	}
}

// Close releases the pod namespace handle.
func (p *Pending) Close() { p.pod.Close() }

// adoptExisting reports whether the pod already has ifName as the peer of our host veth
// (a repeated ADD), in which case Configure re-applies its configuration to it. An ifName that
// is anything else is an error.
func adoptExisting(node, pod *netlink.Handle, hostName, ifName string) (bool, error) {
	podLink, err := pod.LinkByName(ifName)
	if netlinkx.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up %s: %w", ifName, err)
	}
	host, err := node.LinkByName(hostName)
	if err == nil && podLink.Type() == "veth" && podLink.Attrs().ParentIndex == host.Attrs().Index && host.Attrs().ParentIndex == podLink.Attrs().Index {
		return true, nil
	}
	if removed, err := removeRetiredPeer(node, podLink); err != nil || removed {
		return false, err
	}
	return false, fmt.Errorf("interface %q already exists", ifName)
}

// createVeth creates the pair, replacing a leftover from an attempt that died half-way
// (same container and interface, hence the same host name).
func createVeth(r *vethRequest) error {
	idx, err := newVeth(*r)
	if netlinkx.IsExist(err) {
		if old, lerr := netlink.LinkByName(r.hostName); lerr == nil && old.Type() == "veth" {
			_ = netlink.LinkDel(old)
			idx, err = newVeth(*r)
		}
	}
	if err != nil {
		return fmt.Errorf("create veth %s: %w", r.hostName, err)
	}
	r.index = idx
	return nil
}

func configurePod(pod *netlink.Handle, link netlink.Link, hostMAC net.HardwareAddr, s Spec) ([]Route, error) {
	for _, a := range s.Addrs {
		addr := &netlink.Addr{IPNet: prefixToIPNet(a)}
		if a.Addr().Is6() {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := pod.AddrAdd(link, addr); err != nil && !netlinkx.IsExist(err) {
			return nil, fmt.Errorf("add address %s to %s: %w", a, s.IfName, err)
		}
	}
	if err := pod.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("set %s up: %w", s.IfName, err)
	}
	idx := link.Attrs().Index
	if s.PTP {
		for _, gw := range ptpGateways(s.Addrs) {
			neigh := &netlink.Neigh{LinkIndex: idx, IP: gw.AsSlice(), HardwareAddr: hostMAC, State: netlink.NUD_PERMANENT, Family: family(gw)}
			if err := pod.NeighSet(neigh); err != nil {
				return nil, fmt.Errorf("pin neighbour %s in pod: %w", gw, err)
			}
			if gw.Is4() {
				r := &netlink.Route{LinkIndex: idx, Dst: prefixToIPNet(netip.PrefixFrom(gw, 32)), Scope: netlink.SCOPE_LINK}
				if err := pod.RouteReplace(r); err != nil {
					return nil, fmt.Errorf("route to %s in pod: %w", gw, err)
				}
			}
		}
	}
	var installed []Route
	for _, r := range s.Routes {
		gw := r.GW
		if !gw.IsValid() {
			gw = defaultGateway(s, r.Dst.Addr().Is4())
		}
		if !gw.IsValid() {
			continue // no address of that family: the route cannot apply
		}
		nr := &netlink.Route{LinkIndex: idx, Dst: prefixToIPNet(r.Dst), Gw: gw.AsSlice()}
		if err := pod.RouteReplace(nr); err != nil {
			return nil, fmt.Errorf("add route %s via %s in pod: %w", r.Dst, gw, err)
		}
		installed = append(installed, Route{Dst: r.Dst, GW: gw})
	}
	return installed, nil
}

// routeToPod installs the node's host routes and neighbour entries for a ptp pod.
func routeToPod(node *netlink.Handle, host netlink.Link, podMAC net.HardwareAddr, addrs []netip.Prefix) error {
	idx := host.Attrs().Index
	for _, a := range addrs {
		ip := a.Addr()
		neigh := &netlink.Neigh{LinkIndex: idx, IP: ip.AsSlice(), HardwareAddr: podMAC, State: netlink.NUD_PERMANENT, Family: family(ip)}
		if err := node.NeighSet(neigh); err != nil {
			return fmt.Errorf("pin neighbour %s on node: %w", ip, err)
		}
		r := &netlink.Route{LinkIndex: idx, Dst: prefixToIPNet(netip.PrefixFrom(ip, ip.BitLen())), Scope: netlink.SCOPE_LINK, Protocol: netlinkx.RouteProtocol}
		if err := node.RouteReplace(r); err != nil {
			return fmt.Errorf("host route to %s: %w", ip, err)
		}
	}
	return nil
}

// EnsureBridge returns the named bridge, creating it and adding the gateway addresses it
// lacks. Concurrent callers race safely: whoever loses the create adopts the winner's bridge.
func EnsureBridge(node *netlink.Handle, name string, mtu int, gateways []netip.Prefix) (*netlink.Bridge, error) {
	link, err := node.LinkByName(name)
	if netlinkx.IsNotFound(err) {
		mcastSnoop := false
		br := &netlink.Bridge{
			LinkAttrs:         netlink.LinkAttrs{Name: name, MTU: mtu, HardwareAddr: bridgeMAC(name)},
			MulticastSnooping: &mcastSnoop,
		}
		if err := node.LinkAdd(br); err != nil && !netlinkx.IsExist(err) {
			return nil, fmt.Errorf("create bridge %s: %w", name, err)
		}
		// No duplicate address detection on the bridge's own addresses: its MAC is
		// derived from its name and unique on the node, and while its link-local address
		// is tentative (a second or two) the node cannot resolve pod neighbours to route
		// IPv6 to them. (The plugin runs in the node's namespace, which /proc/sys shows.)
		_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+name+"/accept_dad", []byte("0"), 0o644)
		link, err = node.LinkByName(name)
	}
	if err != nil {
		return nil, fmt.Errorf("find bridge %s: %w", name, err)
	}
	br, ok := link.(*netlink.Bridge)
	if !ok {
		return nil, fmt.Errorf("%s exists and is a %s, not a bridge", name, link.Type())
	}
	if br.Attrs().Flags&net.FlagUp == 0 {
		if err := node.LinkSetUp(br); err != nil {
			return nil, fmt.Errorf("set bridge %s up: %w", name, err)
		}
	}
	if len(gateways) == 0 {
		return br, nil
	}
	have, err := netlinkx.Retry(func() ([]netlink.Addr, error) { return node.AddrList(br, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", name, err)
	}
	for _, gw := range gateways {
		if hasAddr(have, gw) {
			continue
		}
		addr := &netlink.Addr{IPNet: prefixToIPNet(gw)}
		if gw.Addr().Is6() {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := node.AddrAdd(br, addr); err != nil && !netlinkx.IsExist(err) {
			return nil, fmt.Errorf("add gateway %s to %s: %w", gw, name, err)
		}
	}
	return br, nil
}

// Teardown removes the attachment's veth synchronously (the pod end goes with it). DEL
// uses Retire instead; Teardown is for when no weftd will reap.
func Teardown(node *netlink.Handle, containerID, ifName string) error {
	name := HostVethName(containerID, ifName)
	link, err := node.LinkByName(name)
	if netlinkx.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	if err := node.LinkDel(link); err != nil && !netlinkx.IsNotFound(err) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// Orphans lists the (containerID, ifName) of live host veths of network whose attachment
// is not in keep. Retired veths are weftd's to reap and are not listed.
func Orphans(node *netlink.Handle, network string, keep func(containerID, ifName string) bool) ([][2]string, error) {
	links, err := netlinkx.Retry(node.LinkList)
	if err != nil {
		return nil, err
	}
	var out [][2]string
	for _, l := range links {
		o, ok := ParseAlias(l.Attrs().Alias)
		if ok && o.Network == network && l.Type() == "veth" && l.Attrs().Group != ReapGroup && !keep(o.ContainerID, o.IfName) {
			out = append(out, [2]string{o.ContainerID, o.IfName})
		}
	}
	return out, nil
}

// Check verifies that the attachment still looks like s.
func Check(node *netlink.Handle, s Spec) error {
	hostName := HostVethName(s.ContainerID, s.IfName)
	host, err := node.LinkByName(hostName)
	if err != nil {
		return fmt.Errorf("host veth %s is missing: %w", hostName, err)
	}
	if host.Attrs().OperState == netlink.OperDown || host.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("host veth %s is down", hostName)
	}
	if !s.PTP {
		br, err := node.LinkByName(s.Bridge)
		if err != nil {
			return fmt.Errorf("bridge %s is missing", s.Bridge)
		}
		if host.Attrs().MasterIndex != br.Attrs().Index {
			return fmt.Errorf("host veth %s is not attached to bridge %s", hostName, s.Bridge)
		}
	}
	pod, err := netlinkx.HandleAt(s.Netns)
	if err != nil {
		return err
	}
	defer pod.Close()
	link, err := pod.LinkByName(s.IfName)
	if err != nil {
		return fmt.Errorf("interface %s is missing in the pod: %w", s.IfName, err)
	}
	if s.MTU != 0 && link.Attrs().MTU != s.MTU {
		return fmt.Errorf("interface %s has MTU %d, want %d", s.IfName, link.Attrs().MTU, s.MTU)
	}
	have, err := netlinkx.Retry(func() ([]netlink.Addr, error) { return pod.AddrList(link, netlink.FAMILY_ALL) })
	if err != nil {
		return err
	}
	for _, a := range s.Addrs {
		if !hasAddr(have, a) {
			return fmt.Errorf("address %s is missing from %s", a, s.IfName)
		}
	}
	routes, err := netlinkx.Retry(func() ([]netlink.Route, error) { return pod.RouteList(link, netlink.FAMILY_ALL) })
	if err != nil {
		return err
	}
	for _, r := range s.Routes {
		gw := r.GW
		if !gw.IsValid() {
			gw = defaultGateway(s, r.Dst.Addr().Is4())
		}
		if gw.IsValid() && !hasRoute(routes, r.Dst, gw) {
			return fmt.Errorf("route %s via %s is missing in the pod", r.Dst, gw)
		}
	}
	if s.PTP {
		rs, err := netlinkx.Retry(func() ([]netlink.Route, error) { return node.RouteList(host, netlink.FAMILY_ALL) })
		if err != nil {
			return err
		}
		for _, a := range s.Addrs {
			if !hasRoute(rs, netip.PrefixFrom(a.Addr(), a.Addr().BitLen()), netip.Addr{}) {
				return fmt.Errorf("node route to %s is missing", a.Addr())
			}
		}
	}
	return nil
}

func defaultGateway(s Spec, v4 bool) netip.Addr {
	if s.PTP {
		for _, a := range s.Addrs {
			if a.Addr().Is4() == v4 {
				if v4 {
					return PTPGatewayV4
				}
				return PTPGatewayV6
			}
		}
		return netip.Addr{}
	}
	for _, gw := range s.Gateways {
		if gw.Is4() == v4 {
			return gw
		}
	}
	return netip.Addr{}
}

func ptpGateways(addrs []netip.Prefix) []netip.Addr {
	var out []netip.Addr
	var v4, v6 bool
	for _, a := range addrs {
		if a.Addr().Is4() && !v4 {
			out, v4 = append(out, PTPGatewayV4), true
		}
		if a.Addr().Is6() && !v6 {
			out, v6 = append(out, PTPGatewayV6), true
		}
	}
	return out
}

// gatewayPrefixes gives each gateway the prefix length of the pod subnet it serves.
func gatewayPrefixes(s Spec) []netip.Prefix {
	var out []netip.Prefix
	for _, gw := range s.Gateways {
		for _, a := range s.Addrs {
			if p := netip.PrefixFrom(gw, a.Bits()); p.Masked().Contains(a.Addr()) && a.Addr().Is4() == gw.Is4() {
				out = append(out, p)
				break
			}
		}
	}
	return out
}

func hasAddr(have []netlink.Addr, want netip.Prefix) bool {
	for _, h := range have {
		ones, _ := h.Mask.Size()
		if a, ok := netip.AddrFromSlice(h.IP); ok && a.Unmap() == want.Addr() && ones == want.Bits() {
			return true
		}
	}
	return false
}

func hasRoute(have []netlink.Route, dst netip.Prefix, gw netip.Addr) bool {
	for _, r := range have {
		var d netip.Prefix
		if r.Dst == nil {
			if dst.Bits() != 0 {
				continue
			}
			d = dst
		} else {
			a, _ := netip.AddrFromSlice(r.Dst.IP)
			ones, _ := r.Dst.Mask.Size()
			d = netip.PrefixFrom(a.Unmap(), ones)
		}
		if d != dst {
			continue
		}
		if !gw.IsValid() {
			return true
		}
		if g, ok := netip.AddrFromSlice(r.Gw); ok && g.Unmap() == gw {
			return true
		}
	}
	return false
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func family(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// bridgeMAC is a stable locally administered MAC for a bridge, so the gateway's MAC never
// changes as ports come and go (Linux otherwise copies the lowest port MAC).
func bridgeMAC(name string) net.HardwareAddr {
	h := fnv.New64a()
	h.Write([]byte("weft-bridge/" + name))
	v := h.Sum64()
	mac := net.HardwareAddr{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24), byte(v >> 32), byte(v >> 40)}
	mac[0] = (mac[0] | 0x02) &^ 0x01
	return mac
}
