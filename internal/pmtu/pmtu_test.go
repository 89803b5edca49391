package pmtu

import (
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/net/icmp"

	"github.com/weftnet/weft/internal/probe"
	"github.com/weftnet/weft/internal/testutil"
)

// path builds A —(1500)— R —(1400)— B and returns A and, for the black-hole case, R.
func path(t *testing.T) (a, r testutil.NS) {
	a, r, b := testutil.NewNS(t, "pa"), testutil.NewNS(t, "pr"), testutil.NewNS(t, "pb")
	link := func(x, y testutil.NS, xn, yn, xa, ya string, mtu int) {
		hx := x.Handle(t)
		if err := hx.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: xn, MTU: mtu}, PeerName: yn, PeerMTU: uint32(mtu)}); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("ip", "-n", x.Name, "link", "set", yn, "netns", y.Name).CombinedOutput(); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		for _, s := range []struct {
			ns         testutil.NS
			name, addr string
		}{{x, xn, xa}, {y, yn, ya}} {
			h := s.ns.Handle(t)
			l, err := h.LinkByName(s.name)
			if err != nil {
				t.Fatal(err)
			}
			ad, _ := netlink.ParseAddr(s.addr)
			if err := h.AddrAdd(l, ad); err != nil {
				t.Fatal(err)
			}
			if err := h.LinkSetUp(l); err != nil {
				t.Fatal(err)
			}
		}
	}
	link(a, r, "a0", "r0", "192.0.2.1/30", "192.0.2.2/30", 1500)
	link(r, b, "r1", "b0", "198.51.100.1/30", "198.51.100.2/30", 1400)
	run := func(ns testutil.NS, args ...string) {
		if out, err := exec.Command("ip", append([]string{"-n", ns.Name}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
	}
	run(a, "route", "add", "198.51.100.0/30", "via", "192.0.2.2")
	run(b, "route", "add", "192.0.2.0/30", "via", "198.51.100.1")
	if err := probe.InNS(r.Path, func() error {
		return exec.Command("sysctl", "-qw", "net.ipv4.ip_forward=1").Run()
	}); err != nil {
		t.Fatal(err)
	}
	return a, r
}

func openIn(ns testutil.NS) func(string) (*icmp.PacketConn, error) {
	return func(network string) (*icmp.PacketConn, error) {
		var c *icmp.PacketConn
		err := probe.InNS(ns.Path, func() error {
			var err error
			c, err = icmp.ListenPacket(network, "")
			return err
		})
		return c, err
	}
}

func TestProbeFindsReportedPathMTU(t *testing.T) {
	testutil.RequireRoot(t)
	a, _ := path(t)
	res, err := Probe(netip.MustParseAddr("198.51.100.2"), Options{LocalMTU: 1500, Open: openIn(a), Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.PathMTU != 1400 || res.BlackHole {
		t.Fatalf("%+v, want path MTU 1400 and no black hole", res)
	}
}

func TestProbeReportsBlackHole(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "nft")
	a, r := path(t)
	// R stops sending "fragmentation needed": oversized packets now vanish.
	rules := "add table inet bh\nadd chain inet bh out { type filter hook output priority 0; }\nadd rule inet bh out icmp type destination-unreachable drop\n"
	cmd := exec.Command("ip", "netns", "exec", r.Name, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v %s", err, out)
	}
	res, err := Probe(netip.MustParseAddr("198.51.100.2"), Options{LocalMTU: 1500, Open: openIn(a), Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.PathMTU != 1400 || !res.BlackHole || !strings.Contains(res.Verdict, "black hole") {
		t.Fatalf("%+v, want path MTU 1400 reported as a black hole", res)
	}
}
