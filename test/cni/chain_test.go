package cni_test

import (
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/probe"
	"github.com/weftnet/weft/internal/testutil"
)

// TestChainWithReferencePlugins: weft-cni first, then the reference portmap, bandwidth,
// tuning and firewall plugins; ADD passes prevResult along, DEL runs in reverse.
func TestChainWithReferencePlugins(t *testing.T) {
	testutil.RequireTool(t, "iptables") // portmap and firewall program iptables (in the node namespace)
	for _, p := range []string{"portmap", "bandwidth", "tuning", "firewall"} {
		if _, err := os.Stat("/usr/lib/cni/" + p); err != nil {
			testutil.RequireTool(t, "/usr/lib/cni/"+p)
		}
	}
	n := newNode(t, "10.101.0.0/24")
	outside := uplink(t, n)
	list := n.conflist("1.0.0", "chain", `"mode":"bridge"`,
		`{"type":"portmap","capabilities":{"portMappings":true},"snat":true}`,
		`{"type":"bandwidth","ingressRate":100000000,"ingressBurst":1000000}`,
		`{"type":"tuning","sysctl":{"net.ipv4.conf.eth0.rp_filter":"2"}}`,
		`{"type":"firewall","backend":"iptables"}`)
	p, rt := n.pod("ch")
	rt.CapabilityArgs = map[string]any{"portMappings": []map[string]any{{"hostPort": 19090, "containerPort": 90, "protocol": "tcp"}}}
	r := n.mustAdd(list, rt)
	if len(podIPs(r)) != 1 || r.Interfaces[len(r.Interfaces)-1].Sandbox != p.Path {
		t.Fatalf("final result lost weft's interfaces or addresses: %+v", r)
	}

	// tuning ran in the pod with the right interface.
	var rp []byte
	_ = probe.InNS(p.Path, func() error {
		var err error
		rp, err = os.ReadFile("/proc/sys/net/ipv4/conf/eth0/rp_filter")
		return err
	})
	if strings.TrimSpace(string(rp)) != "2" {
		t.Errorf("tuning did not apply: rp_filter=%q", rp)
	}
	// bandwidth shaped the host veth weft reported.
	host := r.Interfaces[1].Name
	l, _ := n.ns.Handle(t).LinkByName(host)
	qdiscs, _ := n.ns.Handle(t).QdiscList(l)
	shaped := false
	for _, q := range qdiscs {
		if q.Type() == "tbf" {
			shaped = true
		}
	}
	if !shaped {
		t.Errorf("bandwidth put no tbf on %s: %v", host, qdiscs)
	}
	// portmap published the port: reachable from another host.
	ln, err := probe.ListenTCP(p.Path, ":90")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go probe.Echo(ln)
	if err := probe.TCPEcho(outside.Path, netip.MustParseAddrPort("192.0.2.1:19090"), 3*time.Second); err != nil {
		t.Errorf("portmap: %v", err)
	}
	// Debian's portmap 1.1.1 fails CHECK on its own rules (it looks for IPv4 rules in the
	// ip6tables table), so the chain is CHECKed without it.
	noPortmap := *list
	noPortmap.Plugins = append(list.Plugins[:1:1], list.Plugins[2:]...)
	if err := n.check(&noPortmap, rt); err != nil {
		t.Errorf("CHECK of the chain: %v", err)
	}
	if err := n.del(list, rt); err != nil {
		t.Fatalf("DEL of the chain: %v", err)
	}
	if allocs, _ := n.weftd.Allocations(); len(allocs) != 0 {
		t.Errorf("allocations after DEL: %v", allocs)
	}
	// portmap removed its rules on DEL.
	out, _ := exec.Command("ip", "netns", "exec", n.ns.Name, "iptables-save", "-t", "nat").CombinedOutput()
	if strings.Contains(string(out), "19090") {
		t.Errorf("portmap rules left after DEL:\n%s", out)
	}
}
