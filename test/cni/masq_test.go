package cni_test

import (
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/probe"
	"github.com/weftnet/weft/internal/testutil"
)

// TestMasqueradeLeavingTrafficOnly: a pod reaching a host outside the pod network appears
// as the node; a pod reaching another pod keeps its own address.
func TestMasqueradeLeavingTrafficOnly(t *testing.T) {
	n := newNode(t, "10.93.0.0/24")
	outside := testutil.NewNS(t, "out")
	nh, oh := n.ns.Handle(t), outside.Handle(t)
	if err := nh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "up0"}, PeerName: "up1"}); err != nil {
		t.Fatal(err)
	}
	peer, _ := nh.LinkByName("up1")
	if err := nh.LinkSetNsFd(peer, int(outsideFd(t, outside))); err != nil {
		t.Fatal(err)
	}
	for _, s := range []struct {
		h    *netlink.Handle
		name string
		addr string
	}{{nh, "up0", "192.0.2.1/24"}, {oh, "up1", "192.0.2.2/24"}} {
		l, err := s.h.LinkByName(s.name)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := netlink.ParseAddr(s.addr)
		if err := s.h.AddrAdd(l, a); err != nil {
			t.Fatal(err)
		}
		if err := s.h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}

	list := n.conflist("1.1.0", "weft", `"mode":"bridge"`)
	p1, rt1 := n.pod("q1")
	p2, rt2 := n.pod("q2")
	r1 := n.mustAdd(list, rt1)
	r2 := n.mustAdd(list, rt2)

	seen := func(server testutil.NS, listen string, dst netip.AddrPort) netip.Addr {
		t.Helper()
		ln, err := probe.ListenTCP(server.Path, listen)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		got := make(chan netip.Addr, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				got <- netip.Addr{}
				return
			}
			got <- c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
			c.Close()
		}()
		c, err := probe.DialTCP(p1.Path, dst, 3*time.Second)
		if err != nil {
			t.Fatalf("dial %s: %v", dst, err)
		}
		defer c.Close()
		return <-got
	}
	if src := seen(outside, "192.0.2.2:7001", netip.MustParseAddrPort("192.0.2.2:7001")); src.String() != "192.0.2.1" {
		t.Errorf("outside host saw %s, want the node's 192.0.2.1", src)
	}
	pod2 := podIPs(r2)[0]
	if src := seen(p2, pod2.String()+":7002", netip.AddrPortFrom(pod2, 7002)); src != podIPs(r1)[0] {
		t.Errorf("pod saw %s, want the other pod's own %s", src, podIPs(r1)[0])
	}
}

func outsideFd(t *testing.T, ns testutil.NS) uintptr {
	t.Helper()
	f, err := os.Open(ns.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f.Fd()
}
