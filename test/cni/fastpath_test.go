package cni_test

import (
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/dataplane/fastpath"
)

// fastpathState returns the program ID on a host veth (tcx or clsact) and the pod
// addresses in its map.
func (n *node) fastpathState(hostVeth string) (uint32, map[netip.Addr]uint32) {
	n.t.Helper()
	h := n.ns.Handle(n.t)
	link, err := h.LinkByName(hostVeth)
	if err != nil {
		return 0, nil
	}
	var id ebpf.ProgramID
	var ok bool
	// The tcx query takes an ifindex of the calling thread's namespace.
	if err := ns.WithNetNSPath(n.ns.Path, func(ns.NetNS) error {
		id, ok = fastpath.ProgramOn(h, link.Attrs().Index)
		return nil
	}); err != nil {
		n.t.Fatal(err)
	}
	if !ok {
		return 0, nil
	}
	// weftd may replace the program between the query and this open (a restart does):
	// report nothing yet and let the caller poll again.
	prog, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return 0, nil
	}
	defer prog.Close()
	info, _ := prog.Info()
	ids, _ := info.MapIDs()
	var m *ebpf.Map
	for _, mid := range ids {
		cand, err := ebpf.NewMapFromID(mid)
		if err != nil {
			return 0, nil // freed with a replaced program
		}
		if mi, err := cand.Info(); err == nil && mi.Name == "weft_local_pods" {
			m = cand
			break
		}
		cand.Close()
	}
	if m == nil {
		n.t.Fatalf("the program has no weft_local_pods map")
	}
	defer m.Close()
	out := map[netip.Addr]uint32{}
	var k fastpath.Key
	var v fastpath.Value
	for it := m.Iterate(); it.Next(&k, &v); {
		out[netip.AddrFrom16(k).Unmap()] = v.HostIfindex
	}
	return uint32(id), out
}

func (n *node) waitFastpath(hostVeth string, cond func(uint32, map[netip.Addr]uint32) bool) (uint32, map[netip.Addr]uint32) {
	n.t.Helper()
	var id uint32
	var m map[netip.Addr]uint32
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if id, m = n.fastpathState(hostVeth); cond(id, m) {
			return id, m
		}
	}
	n.t.Fatalf("fast path on %s did not converge: program %d, map %v", hostVeth, id, m)
	return 0, nil
}

func TestFastpathFollowsPods(t *testing.T) {
	for _, mode := range []string{"bridge", "ptp"} {
		t.Run(mode, func(t *testing.T) {
			n := newNode(t, "10.94.0.0/24,fd94::/64")
			list := n.conflist("1.1.0", "weft", `"mode":"`+mode+`"`)
			p1, rt1 := n.pod("f1")
			p2, rt2 := n.pod("f2")
			r1, r2 := n.mustAdd(list, rt1), n.mustAdd(list, rt2)
			host1, host2 := r1.Interfaces[len(r1.Interfaces)-2].Name, r2.Interfaces[len(r2.Interfaces)-2].Name
			h := n.ns.Handle(t)
			l2, _ := h.LinkByName(host2)

			prog, entries := n.waitFastpath(host1, func(id uint32, m map[netip.Addr]uint32) bool { return len(m) == 4 })
			// On a kernel with tcx (6.6+, as here) no qdisc is taken: other plugins can add theirs.
			if qs, _ := h.QdiscList(linkNamed(h, host1)); hasQdisc(qs, "clsact") {
				t.Errorf("%s carries a clsact qdisc; want the program attached with tcx", host1)
			}
			for _, ip := range podIPs(r2) {
				if entries[ip] != uint32(l2.Attrs().Index) {
					t.Errorf("map sends %s to ifindex %d, want %s (%d)", ip, entries[ip], host2, l2.Attrs().Index)
				}
			}
			for _, ip := range podIPs(r2) {
				ping(t, p1, ip)
			}
			for _, ip := range podIPs(r1) {
				ping(t, p2, ip)
			}

			// A restart replaces the program in place and keeps traffic flowing.
			n.weftd.Kill()
			ping(t, p1, podIPs(r2)[0]) // the old program still runs without weftd
			n.weftd.Restart(syscall.SIGKILL)
			n.waitFastpath(host1, func(id uint32, m map[netip.Addr]uint32) bool { return id != prog && len(m) == 4 })
			ping(t, p1, podIPs(r2)[0])

			if err := n.del(list, rt2); err != nil {
				t.Fatal(err)
			}
			n.waitFastpath(host1, func(id uint32, m map[netip.Addr]uint32) bool { return len(m) == 2 })
			_ = n.del(list, rt1)
		})
	}
}

func linkNamed(h *netlink.Handle, name string) netlink.Link {
	l, _ := h.LinkByName(name)
	return l
}

func hasQdisc(qs []netlink.Qdisc, kind string) bool {
	for _, q := range qs {
		if q.Type() == kind {
			return true
		}
	}
	return false
}
