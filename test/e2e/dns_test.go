package e2e_test

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/weftnet/weft/internal/probe"
	"github.com/weftnet/weft/internal/testutil"
)

// dnsAddr is the lab's cluster DNS address: the 10th of its service CIDR.
var dnsAddr = netip.MustParseAddrPort("10.96.0.10:53")

// dnsQuery asks server from the namespace at nsPath, over UDP.
func dnsQuery(nsPath string, server netip.AddrPort, name string, qtype uint16) (*mdns.Msg, error) {
	var c net.Conn
	if err := probe.InNS(nsPath, func() error {
		var err error
		c, err = net.Dial("udp", server.String())
		return err
	}); err != nil {
		return nil, err
	}
	defer c.Close()
	req := new(mdns.Msg)
	req.SetQuestion(name, qtype)
	req.SetEdns0(1232, false)
	co := &mdns.Conn{Conn: c}
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if err := co.WriteMsg(req); err != nil {
		return nil, err
	}
	return co.ReadMsg()
}

// parallelAandAAAA does what glibc's resolver does for getaddrinfo: an A and an AAAA
// question sent back to back from one UDP socket (one conntrack tuple), then both replies
// awaited. With DNAT in the path, the second can lose the conntrack insertion race and be
// dropped (kubernetes#56903), which glibc notices only after its 5 s timeout.
func parallelAandAAAA(nsPath string, server netip.AddrPort, name string, wait time.Duration) error {
	var c net.Conn
	if err := probe.InNS(nsPath, func() error {
		var err error
		c, err = net.Dial("udp", server.String())
		return err
	}); err != nil {
		return err
	}
	defer c.Close()
	co := &mdns.Conn{Conn: c}
	a, aaaa := new(mdns.Msg).SetQuestion(name, mdns.TypeA), new(mdns.Msg).SetQuestion(name, mdns.TypeAAAA)
	aaaa.Id = a.Id + 1
	if err := co.WriteMsg(a); err != nil {
		return err
	}
	if err := co.WriteMsg(aaaa); err != nil {
		return err
	}
	_ = c.SetDeadline(time.Now().Add(wait))
	pending := map[uint16]bool{a.Id: true, aaaa.Id: true}
	for len(pending) > 0 {
		m, err := co.ReadMsg()
		if err != nil {
			return fmt.Errorf("replies still missing %v: %w", pending, err)
		}
		delete(pending, m.Id)
	}
	return nil
}

func lastFields(m *mdns.Msg) string {
	var out []string
	for _, rr := range m.Answer {
		f := strings.Fields(rr.String())
		out = append(out, f[len(f)-1])
	}
	return strings.Join(out, " ")
}

// TestDNSInLab: every node answers the cluster DNS address itself; a service created
// through one node's store resolves from pods on every node within a second, and is gone
// (NXDOMAIN) within a second of its deletion; headless services answer their ready pods;
// SRV and PTR; a client outside the pod networks is refused.
func TestDNSInLab(t *testing.T) {
	l := newSvcLab(t, "vxlan")
	web := l.service("web", "--selector", "app=web", "--port", "http=80:9090/tcp", "--dual-stack")
	created := time.Now()
	name := "web.default.svc.cluster.local."
	for _, from := range []string{"p1", "p2", "p3"} {
		var m *mdns.Msg
		var err error
		for {
			m, err = dnsQuery(l.pod[from].Path, dnsAddr, name, mdns.TypeA)
			if err == nil && len(m.Answer) == 1 {
				break
			}
			if time.Since(created) > 2*time.Second {
				t.Fatalf("%s from %s: %v %v", name, from, m, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if got := lastFields(m); got != web.ClusterIPs[0].String() || !m.Authoritative {
			t.Errorf("A from %s: %s, want %s", from, got, web.ClusterIPs[0])
		}
		if m, err := dnsQuery(l.pod[from].Path, dnsAddr, name, mdns.TypeAAAA); err != nil || lastFields(m) != web.ClusterIPs[1].String() {
			t.Errorf("AAAA from %s: %v %v", from, m, err)
		}
	}
	t.Logf("resolvable on every node %v after creation (the CLI included)", time.Since(created).Round(time.Millisecond))
	// A pod's own resolver tools see the cluster DNS through lab exec's resolv.conf.
	out, err := exec.Command(l.bin, "lab", "exec", "--name", l.name, "p2", "--", "nslookup", "web.default.svc.cluster.local").CombinedOutput()
	if err != nil || !strings.Contains(string(out), web.ClusterIPs[0].String()) {
		t.Errorf("lab exec p2 -- nslookup: %v\n%s", err, out)
	}
	// glibc-style A+AAAA pairs from one socket never wait for a retry (no DNAT, no race).
	for _, from := range []string{"p1", "p2", "p3"} {
		for i := range 300 {
			if err := parallelAandAAAA(l.pod[from].Path, dnsAddr, name, time.Second); err != nil {
				t.Fatalf("A+AAAA pair %d from %s: %v", i, from, err)
			}
		}
	}
	if m, err := dnsQuery(l.pod["p2"].Path, dnsAddr, "_http._tcp."+name, mdns.TypeSRV); err != nil || len(m.Answer) != 1 || !strings.Contains(m.Answer[0].String(), " 80 "+name) {
		t.Errorf("SRV: %v %v", m, err)
	}
	rev, _ := mdns.ReverseAddr(web.ClusterIPs[0].String())
	if m, err := dnsQuery(l.pod["p3"].Path, dnsAddr, rev, mdns.TypePTR); err != nil || lastFields(m) != name {
		t.Errorf("PTR: %v %v", m, err)
	}
	// Headless: exactly the ready pods.
	l.service("hl", "--selector", "app=web", "--port", "80", "--headless")
	want := map[string]bool{}
	for _, p := range []string{"p1", "p2", "p3"} {
		want[l.podIPs[p][0].String()] = true
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		m, err := dnsQuery(l.pod["p1"].Path, dnsAddr, "hl.default.svc.cluster.local.", mdns.TypeA)
		got := map[string]bool{}
		if err == nil {
			for _, f := range strings.Fields(lastFields(m)) {
				got[f] = true
			}
		}
		if len(got) == 3 && got[l.podIPs["p1"][0].String()] && got[l.podIPs["p2"][0].String()] && got[l.podIPs["p3"][0].String()] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("headless answered %v, want %v", got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Deleted: NXDOMAIN everywhere within a second.
	l.must("service", "rm", "web")
	gone := time.Now()
	for _, from := range []string{"p1", "p2", "p3"} {
		for {
			m, err := dnsQuery(l.pod[from].Path, dnsAddr, name, mdns.TypeA)
			if err == nil && m.Rcode == mdns.RcodeNameError {
				break
			}
			if time.Since(gone) > 1500*time.Millisecond {
				t.Fatalf("%s still resolves from %s %v after deletion: %v %v", name, from, time.Since(gone), m, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// A client outside the pod networks (the underlay) is refused by a node's server
	// (it reaches node1's DNS address through node1's underlay address route).
	u := l.underlay()
	node1 := l.status.Nodes[0]
	addRoute(t, u, netip.PrefixFrom(dnsAddr.Addr(), 32), node1.Underlay)
	if m, err := dnsQuery(u.Path, dnsAddr, "hl.default.svc.cluster.local.", mdns.TypeA); err != nil || m.Rcode != mdns.RcodeRefused {
		t.Errorf("from the underlay: %v %v, want REFUSED", m, err)
	}
}

// addRoute adds a route in the test's own namespace (the lab's underlay), removed by the
// lab's teardown with the namespace.
func addRoute(t *testing.T, ns testutil.NS, dst netip.Prefix, via netip.Addr) {
	t.Helper()
	if out, err := ns.Command("ip", "route", "replace", dst.String(), "via", via.String()).CombinedOutput(); err != nil {
		t.Fatalf("route: %v %s", err, out)
	}
}
