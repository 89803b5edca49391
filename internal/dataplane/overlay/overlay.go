// Package overlay makes a node's kernel match a fabric.State: the VXLAN device, its
// addresses, static FDB and neighbour entries, and the routes to every peer's pod block.
// Routes it owns carry protocol RouteProtocol, so each sync can delete exactly the stale
// ones; everything is replaced in place, so a sync never interrupts traffic that should
// keep flowing.
package overlay

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/fabric"
	"github.com/weftnet/weft/internal/netlinkx"
)

// RouteProtocol marks fabric routes (pod routes of ptp mode use netlinkx.RouteProtocol).
const RouteProtocol = netlinkx.RouteProtocolFabric

// Underlay is the device and address the VXLAN tunnel runs from.
type Underlay struct {
	Device string
	Addr   netip.Addr
}

// Apply reconciles the node (the handle's namespace) to st.
func Apply(h *netlink.Handle, node string, st fabric.State, under Underlay, mtu int) error {
	var vx netlink.Link
	var err error
	if st.VXLAN {
		if vx, err = ensureVXLAN(h, node, st, under, mtu); err != nil {
			return err
		}
	} else if old, err := h.LinkByName(fabric.DeviceName); err == nil {
		if err := h.LinkDel(old); err != nil {
			return fmt.Errorf("remove %s: %w", fabric.DeviceName, err)
		}
	}
	if vx != nil {
		if err := syncAddrs(h, vx, st.VTEPAddrs); err != nil {
			return err
		}
		if err := syncFDB(h, vx, st.FDB); err != nil {
			return err
		}
		if err := syncNeighs(h, vx, st.Neighs); err != nil {
			return err
		}
	}
	return syncRoutes(h, vx, st.Routes)
}

func ensureVXLAN(h *netlink.Handle, node string, st fabric.State, under Underlay, mtu int) (netlink.Link, error) {
	dev, err := h.LinkByName(under.Device)
	if err != nil {
		return nil, fmt.Errorf("underlay device %s: %w", under.Device, err)
	}
	want := &netlink.Vxlan{
		LinkAttrs:      netlink.LinkAttrs{Name: fabric.DeviceName, MTU: mtu, HardwareAddr: fabric.VTEPMAC(node)},
		VxlanId:        st.VNI,
		VtepDevIndex:   dev.Attrs().Index,
		SrcAddr:        under.Addr.AsSlice(),
		Port:           st.Port,
		Learning:       false,
		UDPCSum:        true,
		UDP6ZeroCSumTx: false,
		UDP6ZeroCSumRx: false,
	}
	link, err := h.LinkByName(fabric.DeviceName)
	if err == nil {
		old, ok := link.(*netlink.Vxlan)
		// VNI, port, source and device cannot change in place: recreate on a mismatch.
		if !ok || old.VxlanId != want.VxlanId || old.Port != want.Port || old.VtepDevIndex != want.VtepDevIndex || !old.SrcAddr.Equal(want.SrcAddr) || old.Learning {
			if err := h.LinkDel(link); err != nil {
				return nil, fmt.Errorf("replace %s: %w", fabric.DeviceName, err)
			}
			link = nil
		}
	} else if !netlinkx.IsNotFound(err) {
		return nil, err
	} else {
		link = nil
	}
	if link == nil {
		if err := h.LinkAdd(want); err != nil && !netlinkx.IsExist(err) {
			return nil, fmt.Errorf("create %s: %w", fabric.DeviceName, err)
		}
		if link, err = h.LinkByName(fabric.DeviceName); err != nil {
			return nil, err
		}
	}
	if link.Attrs().MTU != mtu {
		if err := h.LinkSetMTU(link, mtu); err != nil {
			return nil, fmt.Errorf("set %s MTU: %w", fabric.DeviceName, err)
		}
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := h.LinkSetUp(link); err != nil {
			return nil, err
		}
	}
	return link, nil
}

func syncAddrs(h *netlink.Handle, link netlink.Link, want []netip.Prefix) error {
	have, err := netlinkx.Retry(func() ([]netlink.Addr, error) { return h.AddrList(link, netlink.FAMILY_ALL) })
	if err != nil {
		return err
	}
	wanted := map[netip.Prefix]bool{}
	for _, p := range want {
		wanted[p] = true
	}
	present := map[netip.Prefix]bool{}
	for _, a := range have {
		ip, _ := netip.AddrFromSlice(a.IP)
		ones, _ := a.Mask.Size()
		p := netip.PrefixFrom(ip.Unmap(), ones)
		if ip.IsLinkLocalUnicast() {
			continue
		}
		present[p] = true
		if !wanted[p] {
			if err := h.AddrDel(link, &a); err != nil {
				return err
			}
		}
	}
	for _, p := range want {
		if present[p] {
			continue
		}
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
		if p.Addr().Is6() {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrAdd(link, addr); err != nil && !netlinkx.IsExist(err) {
			return fmt.Errorf("add %s to %s: %w", p, fabric.DeviceName, err)
		}
	}
	return nil
}

func syncFDB(h *netlink.Handle, link netlink.Link, want []fabric.FDB) error {
	idx := link.Attrs().Index
	have, err := netlinkx.Retry(func() ([]netlink.Neigh, error) { return h.NeighList(idx, unix.AF_BRIDGE) })
	if err != nil {
		return err
	}
	key := func(mac net.HardwareAddr, ip net.IP) string { return mac.String() + "/" + ip.String() }
	wanted := map[string]bool{}
	for _, f := range want {
		wanted[key(f.MAC, net.IP(f.Dst.AsSlice()))] = true
	}
	for _, n := range have {
		if n.IP != nil && !wanted[key(n.HardwareAddr, n.IP)] {
			if err := h.NeighDel(&n); err != nil && !netlinkx.IsNotFound(err) {
				return fmt.Errorf("delete stale FDB %s: %w", n.HardwareAddr, err)
			}
		}
	}
	for _, f := range want {
		n := &netlink.Neigh{LinkIndex: idx, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF, State: netlink.NUD_PERMANENT,
			HardwareAddr: f.MAC, IP: f.Dst.AsSlice()}
		if err := h.NeighSet(n); err != nil {
			return fmt.Errorf("FDB %s → %s: %w", f.MAC, f.Dst, err)
		}
	}
	return nil
}

func syncNeighs(h *netlink.Handle, link netlink.Link, want []fabric.Neigh) error {
	idx := link.Attrs().Index
	wanted := map[netip.Addr]bool{}
	for _, n := range want {
		wanted[n.IP] = true
		fam := netlink.FAMILY_V4
		if n.IP.Is6() {
			fam = netlink.FAMILY_V6
		}
		if err := h.NeighSet(&netlink.Neigh{LinkIndex: idx, Family: fam, State: netlink.NUD_PERMANENT, IP: n.IP.AsSlice(), HardwareAddr: n.MAC}); err != nil {
			return fmt.Errorf("neighbour %s: %w", n.IP, err)
		}
	}
	have, err := netlinkx.Retry(func() ([]netlink.Neigh, error) { return h.NeighList(idx, netlink.FAMILY_ALL) })
	if err != nil {
		return err
	}
	for _, n := range have {
		ip, _ := netip.AddrFromSlice(n.IP)
		if n.State == netlink.NUD_PERMANENT && !wanted[ip.Unmap()] {
			if err := h.NeighDel(&n); err != nil && !netlinkx.IsNotFound(err) {
				return err
			}
		}
	}
	return nil
}

func syncRoutes(h *netlink.Handle, vx netlink.Link, want []fabric.Route) error {
	wanted := map[netip.Prefix]bool{}
	var errs []error
	for _, r := range want {
		wanted[r.Dst] = true
		rt := &netlink.Route{Dst: &net.IPNet{IP: r.Dst.Addr().AsSlice(), Mask: net.CIDRMask(r.Dst.Bits(), r.Dst.Addr().BitLen())},
			Gw: r.Via.AsSlice(), Protocol: RouteProtocol}
		if r.VXLAN {
			if vx == nil {
				errs = append(errs, fmt.Errorf("route %s needs the VXLAN device", r.Dst))
				continue
			}
			rt.LinkIndex = vx.Attrs().Index
			rt.Flags = int(netlink.FLAG_ONLINK)
		}
		if err := h.RouteReplace(rt); err != nil {
			errs = append(errs, fmt.Errorf("route %s via %s: %w", r.Dst, r.Via, err))
		}
	}
	routes, err := netlinkx.Retry(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
	})
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		ip, _ := netip.AddrFromSlice(r.Dst.IP)
		ones, _ := r.Dst.Mask.Size()
		if !wanted[netip.PrefixFrom(ip.Unmap(), ones)] {
			if err := h.RouteDel(&r); err != nil && !netlinkx.IsNotFound(err) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
