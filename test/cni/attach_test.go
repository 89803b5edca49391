package cni_test

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"
)

func TestBridgeDualStackPodsPingEachOtherAndGateway(t *testing.T) {
	n := newNode(t, "10.70.0.0/24,fd70::/64")
	list := n.conflist("1.1.0", "weft", `"mode":"bridge"`)
	p1, rt1 := n.pod("c1")
	p2, rt2 := n.pod("c2")
	r1 := n.mustAdd(list, rt1)
	r2 := n.mustAdd(list, rt2)

	ips1, ips2 := podIPs(r1), podIPs(r2)
	if len(ips1) != 2 || !ips1[0].Is4() || !ips1[1].Is6() {
		t.Fatalf("want one IPv4 and one IPv6 address, got %v", ips1)
	}
	if r1.IPs[0].Gateway.String() != "10.70.0.1" || r1.IPs[1].Gateway.String() != "fd70::1" {
		t.Fatalf("gateways %v %v", r1.IPs[0].Gateway, r1.IPs[1].Gateway)
	}
	if len(r1.Interfaces) != 3 || r1.Interfaces[2].Sandbox != p1.Path || r1.Interfaces[0].Name != "weft0" {
		t.Fatalf("interfaces %+v", r1.Interfaces)
	}
	if *r1.IPs[0].Interface != 2 {
		t.Fatalf("ips must point at the pod interface, got index %d", *r1.IPs[0].Interface)
	}
	for _, ip := range ips2 {
		ping(t, p1, ip)
	}
	for _, ip := range ips1 {
		ping(t, p2, ip)
	}
	ping(t, p1, netip.MustParseAddr("10.70.0.1"))
	ping(t, p1, netip.MustParseAddr("fd70::1"))

	// Hairpin is on for every bridge port.
	h := n.ns.Handle(t)
	host, err := h.LinkByName(r1.Interfaces[1].Name)
	if err != nil {
		t.Fatal(err)
	}
	if pi := host.Attrs().Protinfo; pi != nil && !pi.Hairpin {
		t.Errorf("hairpin off on %s", host.Attrs().Name)
	}
	if err := n.check(list, rt1); err != nil {
		t.Errorf("CHECK of a healthy pod: %v", err)
	}
	for _, rt := range []*libcni.RuntimeConf{rt1, rt2} {
		if err := n.del(list, rt); err != nil {
			t.Fatalf("DEL: %v", err)
		}
	}
	if _, err := h.LinkByName(r1.Interfaces[1].Name); err == nil {
		t.Errorf("host veth %s survived DEL", r1.Interfaces[1].Name)
	}
	if allocs, _ := n.weftd.Allocations(); len(allocs) != 0 {
		t.Errorf("allocations left after DEL: %v", allocs)
	}
	n.waitReaped(0)
}

// TestReAddRightAfterDel is podman's network disconnect + connect: the same interface
// name in the same pod, before weftd has reaped the old veth.
func TestReAddRightAfterDel(t *testing.T) {
	n := newNode(t, "10.75.0.0/24")
	list := n.conflist("1.1.0", "weft", `"mode":"bridge"`)
	p, rt := n.pod("re")
	_, rt2 := n.pod("peer")
	peer := n.mustAdd(list, rt2)
	for i := range 5 {
		n.mustAdd(list, rt)
		if err := n.del(list, rt); err != nil {
			t.Fatalf("DEL %d: %v", i, err)
		}
	}
	n.mustAdd(list, rt)
	ping(t, p, podIPs(peer)[0])
	n.waitReaped(2)
}

func TestPTPPodsRouteThroughTheNode(t *testing.T) {
	n := newNode(t, "10.71.0.0/24,fd71::/64")
	list := n.conflist("1.1.0", "weftptp", `"mode":"ptp"`)
	p1, rt1 := n.pod("p1")
	p2, rt2 := n.pod("p2")
	r1 := n.mustAdd(list, rt1)
	r2 := n.mustAdd(list, rt2)
	for _, ip := range r1.IPs {
		if ones, bits := ip.Address.Mask.Size(); ones != bits {
			t.Errorf("ptp address %s is not a host address", ip.Address.String())
		}
	}
	if r1.Routes[0].GW.String() != "169.254.1.1" {
		t.Errorf("ptp default gateway %v, want 169.254.1.1", r1.Routes[0].GW)
	}
	for _, ip := range podIPs(r2) {
		ping(t, p1, ip)
	}
	for _, ip := range podIPs(r1) {
		ping(t, p2, ip)
	}
	// No bridge: the node holds one host route per pod address, marked as weft's.
	h := n.ns.Handle(t)
	if _, err := h.LinkByName("weft0"); err == nil {
		t.Errorf("ptp mode created a bridge")
	}
	routes, _ := h.RouteList(nil, netlink.FAMILY_ALL)
	var weftRoutes int
	for _, r := range routes {
		if r.Protocol == 0x77 {
			weftRoutes++
		}
	}
	if weftRoutes != 4 {
		t.Errorf("node has %d weft host routes, want 4 (2 pods × 2 families)", weftRoutes)
	}
	if err := n.check(list, rt1); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	_ = n.del(list, rt1)
	_ = n.del(list, rt2)
}

func TestCheckDetectsRemovedAddress(t *testing.T) {
	n := newNode(t, "10.72.0.0/24")
	list := n.conflist("1.1.0", "weft", `"mode":"bridge"`)
	p, rt := n.pod("c1")
	r := n.mustAdd(list, rt)
	if err := n.check(list, rt); err != nil {
		t.Fatalf("CHECK before tampering: %v", err)
	}
	h := p.Handle(t)
	link, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	addr := r.IPs[0].Address
	if err := h.AddrDel(link, &netlink.Addr{IPNet: &addr}); err != nil {
		t.Fatal(err)
	}
	err = n.check(list, rt)
	if err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("CHECK after removing %s: got %v, want an error naming the missing address", addr.String(), err)
	}
}

func TestGCFreesStaleAllocations(t *testing.T) {
	n := newNode(t, "10.73.0.0/24")
	list := n.conflist("1.1.0", "weft", `"mode":"bridge"`)
	var keep []types.GCAttachment
	var vethStale string
	for i := range 4 {
		_, rt := n.pod(fmt.Sprintf("gc%d", i))
		r := n.mustAdd(list, rt)
		if i%2 == 0 {
			keep = append(keep, types.GCAttachment{ContainerID: rt.ContainerID, IfName: "eth0"})
		} else {
			vethStale = r.Interfaces[1].Name
		}
	}
	if err := n.gc(list, keep); err != nil {
		t.Fatalf("GC: %v", err)
	}
	allocs, err := n.weftd.Allocations()
	if err != nil {
		t.Fatal(err)
	}
	if len(allocs) != 2 || !strings.Contains(strings.Join(allocs, " "), "gc0") || !strings.Contains(strings.Join(allocs, " "), "gc2") {
		t.Fatalf("after GC: %v, want exactly gc0 and gc2", allocs)
	}
	if _, err := n.ns.Handle(t).LinkByName(vethStale); err == nil {
		t.Errorf("GC left the veth %s of a stale attachment", vethStale)
	}
}

func TestFiftyConcurrentAddsGetDistinctAddresses(t *testing.T) {
	n := newNode(t, "10.74.0.0/24")
	list := n.conflist("1.1.0", "weft", `"mode":"bridge"`)
	var mu sync.Mutex
	seen := map[netip.Addr]string{}
	var wg sync.WaitGroup
	rts := make([]*libcni.RuntimeConf, 50)
	for i := range rts {
		_, rts[i] = n.pod(fmt.Sprintf("con%d", i))
	}
	for _, rt := range rts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := n.add(list, rt)
			if err != nil {
				t.Errorf("ADD %s: %v", rt.ContainerID, err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			ip := podIPs(r)[0]
			if other, dup := seen[ip]; dup {
				t.Errorf("%s and %s both got %s", other, rt.ContainerID, ip)
			}
			seen[ip] = rt.ContainerID
		}()
	}
	wg.Wait()
	if len(seen) != 50 {
		t.Fatalf("%d distinct addresses, want 50", len(seen))
	}
	for _, rt := range rts {
		if err := n.del(list, rt); err != nil {
			t.Errorf("DEL: %v", err)
		}
	}
}

// TestDelHidesThePodEndAtOnce: after DEL returns, the pod no longer has the interface,
// though the kernel deletes it later.
func TestDelHidesThePodEndAtOnce(t *testing.T) {
	n := newNode(t, "10.76.0.0/24")
	list := n.conflist("1.1.0", "weft", `"mode":"bridge"`)
	p, rt := n.pod("hide")
	rt.IfName = "eth1"
	n.mustAdd(list, rt)
	if err := n.del(list, rt); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Handle(t).LinkByName("eth1"); err == nil {
		t.Fatal("eth1 is still in the pod right after DEL")
	}
	n.waitReaped(0)
}
