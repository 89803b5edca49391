package e2e_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/lab"
	"github.com/weftnet/weft/internal/probe"
	"github.com/weftnet/weft/internal/testutil"
	"github.com/weftnet/weft/internal/testutil/kubetest"
)

// TestBGPAcrossRacks runs fabric bgp over two racks joined only by a router running a
// real BGP daemon: cross-rack pod traffic can only follow routes learned over BGP.
func TestBGPAcrossRacks(t *testing.T) {
	for _, tor := range []string{"bird", "frr", "gobgpd"} {
		t.Run(tor, func(t *testing.T) {
			if tor == "gobgpd" {
				useGoBGPv4(t)
			}
			testBGPRacks(t, tor)
		})
	}
}

// useGoBGPv4 points the lab at GoBGP v4's gobgpd (see lab.gobgpBin for why not Debian's),
// building it once into GOPATH when scripts/test.sh has not.
func useGoBGPv4(t *testing.T) {
	if os.Getenv("WEFT_GOBGP_DIR") != "" {
		return
	}
	gopath, err := exec.Command("go", "env", "GOPATH").Output()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(strings.TrimSpace(string(gopath)), "weft-gobgp-v4.8.0")
	if _, err := os.Stat(filepath.Join(dir, "gobgpd")); err != nil {
		cmd := exec.Command("go", "install", "github.com/osrg/gobgp/v4/cmd/gobgpd@v4.8.0", "github.com/osrg/gobgp/v4/cmd/gobgp@v4.8.0")
		cmd.Env = append(os.Environ(), "GOBIN="+dir)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build gobgpd v4.8.0: %v\n%s", err, out)
		}
	}
	t.Setenv("WEFT_GOBGP_DIR", dir)
}

func testBGPRacks(t *testing.T, tor string) {
	l := labFor(t, "g")
	// With gobgpd, the eBPF proxy: the client behind the router reaches service addresses
	// through the Maglev balancer in tc.
	proxyMode := "nftables"
	if tor == "gobgpd" {
		proxyMode = "ebpf"
	}
	l.must("up", "-d", "--nodes", "3", "--fabric", "bgp", "--racks", "2", "--tor", tor, "--proxy", proxyMode)
	for i := 1; i <= 3; i++ { // node1 and node3 in rack 1, node2 in rack 2
		l.must("pod", "add", fmt.Sprintf("p%d", i), "--node", fmt.Sprint(i), "--serve", "tcp:8080")
	}
	s := l.status()

	// The router learned every node's blocks (IPv4 and IPv6) over BGP.
	var view string
	deadline := time.Now().Add(10 * time.Second)
	for {
		view = l.must("bgp", "router")
		missing := ""
		for _, n := range s.Nodes {
			for _, p := range n.PodCIDRs {
				if !strings.Contains(view, p.String()) {
					missing += " " + p.String()
				}
			}
		}
		if missing == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the %s router lacks%s:\n%s", tor, missing, view)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// ... and every node has every other node's blocks in its kernel.
	for _, n := range s.Nodes {
		for {
			routes, _ := exec.Command("ip", "-n", filepath.Base(n.Netns), "route", "show", "table", "all").Output()
			missing := ""
			for _, o := range s.Nodes {
				for _, p := range o.PodCIDRs {
					if o.Name != n.Name && !strings.Contains(string(routes), p.String()) {
						missing += " " + p.String()
					}
				}
			}
			if missing == "" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s lacks routes to%s:\n%s", n.Name, missing, routes)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// Every pod reaches every other (ICMP, TCP, both families) across the racks.
	if out, err := l.run("check"); err != nil {
		t.Fatalf("lab check: %v\n%s", err, out)
	}
	// Each node reports its session with its rack's router as established.
	for _, n := range []string{"node1", "node2"} {
		var peers []struct{ Name, State string }
		if err := json.Unmarshal([]byte(l.must("bgp", "peers", n, "-o", "json")), &peers); err != nil {
			t.Fatal(err)
		}
		if len(peers) != 1 || !strings.HasPrefix(peers[0].Name, "tor-rack") || peers[0].State != "established" {
			t.Errorf("%s peers: %+v", n, peers)
		}
	}

	// Its metrics say the same.
	resp, err := testutil.NS{Path: s.Nodes[0].Netns}.HTTPClient().Get("http://" + lab.MetricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`weft_bgp_session_up{address="192.168.1.254",peer="tor-rack1"} 1`, "weft_bgp_routes_installed "} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("node1's metrics lack %s", want)
		}
	}

	// kill -9 of node2's weftd (rack 2) under a 10 ms ping from rack 1: graceful restart
	// keeps its routes on the router, and the kernel keeps the node's own.
	pinger := probe.StartPinger(s.Pods[0].Netns, s.Pods[1].IPs[0], 10*time.Millisecond)
	time.Sleep(300 * time.Millisecond)
	l.must("node", "restart", "node2", "--kill")
	time.Sleep(3 * time.Second) // past the speakers' reconnection
	if sent, lost := pinger.Stop(); lost > 0 || sent < 200 {
		t.Errorf("lost %d of %d pings across a weftd kill -9 and restart", lost, sent)
	}
	if out, err := l.run("check"); err != nil {
		t.Fatalf("lab check after the restart: %v\n%s", err, out)
	}

	var state struct{ Underlay, Store, Client, Router string }
	b, err := os.ReadFile(filepath.Join("/run/weft-lab", l.name, "lab.json"))
	if err != nil || json.Unmarshal(b, &state) != nil {
		t.Fatalf("lab state: %v", err)
	}

	// A service with externalTrafficPolicy Local: only the node with its endpoint
	// announces its address, so the router sends the client behind it there; when the
	// endpoint moves to another node, the address moves with it within a second.
	l.must("pod", "add", "e1", "--node", "1", "--serve", "tcp:8080", "--labels", "app=ext")
	l.must("service", "add", "ext", "--type", "NodePort", "--selector", "app=ext", "--port", "80:8080/tcp", "--external-traffic-policy", "Local")
	var svc struct{ ClusterIPs []netip.Addr }
	if err := json.Unmarshal([]byte(l.must("service", "get", "ext", "-o", "json")), &svc); err != nil || len(svc.ClusterIPs) == 0 {
		t.Fatalf("service: %v %+v", err, svc)
	}
	vip := svc.ClusterIPs[0]
	// announcedBy waits until the router forwards the address to node alone. Its daemon
	// learning node's route is not enough: while the previous node's withdrawal is on its
	// way, the router spreads flows over both (ECMP), and a connection hashed to the old
	// node moves to the new one mid-stream, where the endpoint answers it with a reset.
	router := testutil.NS{Path: state.Router}
	announcedBy := func(node netip.Addr, within time.Duration) {
		t.Helper()
		start := time.Now()
		for {
			view := l.must("bgp", "router")
			fib, _ := router.Command("ip", "route", "show", vip.String()+"/32").Output()
			if i := strings.Index(view, vip.String()+"/32"); i >= 0 && strings.Contains(view[i:min(len(view), i+300)], node.String()) &&
				strings.Count(string(fib), " via ") == 1 && strings.Contains(string(fib), " via "+node.String()+" ") {
				t.Logf("%s/32 announced by %s, the router's only next hop, after %v", vip, node, time.Since(start).Round(time.Millisecond))
				return
			}
			if time.Since(start) > within {
				t.Fatalf("the router does not route %s/32 via %s alone after %v:\n%s\nits forwarding table: %s", vip, node, within, view, fib)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	reach := func() {
		t.Helper()
		if err := probe.TCPEcho(state.Client, netip.AddrPortFrom(vip, 80), 3*time.Second); err != nil {
			t.Fatalf("the client outside the cluster cannot reach %s:80: %v", vip, err)
		}
	}
	announcedBy(s.Nodes[0].Underlay, 3*time.Second)
	reach()
	l.must("pod", "add", "e2", "--node", "2", "--serve", "tcp:8080", "--labels", "app=ext")
	l.must("pod", "rm", "e1")
	announcedBy(s.Nodes[1].Underlay, time.Second)
	reach()
	if proxyMode == "ebpf" {
		// The route may reach the router before node2's proxy has the address's table
		// (BGP and the proxy are separate loops): connections keep coming until one is
		// marked, or 3 s.
		var out struct {
			NodePorts []struct {
				Address string
				Marked  uint64
			}
		}
		for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			reach()
			if err := json.Unmarshal([]byte(l.must("service", "programmed", "node2", "-o", "json")), &out); err != nil {
				t.Fatal(err)
			}
			marked := uint64(0)
			for _, p := range out.NodePorts {
				if p.Address == vip.String() {
					marked = p.Marked
				}
			}
			if marked > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node2's balancer marked no packet from outside to %s in 3 s: %+v", vip, out.NodePorts)
			}
		}
	}

	// Removing node3 (rack 1) withdraws its block everywhere within a second: its weftd
	// withdraws, the router passes the withdrawal on.
	underlay := testutil.NS{Path: state.Underlay}
	gone := s.Nodes[2].PodCIDRs[0].String()
	start := time.Now()
	if out, err := underlay.Command(l.bin, "cluster", "remove-node", "node3", "--store", state.Store).CombinedOutput(); err != nil {
		t.Fatalf("remove-node: %v\n%s", err, out)
	}
	for _, n := range s.Nodes[:2] {
		for {
			routes, _ := exec.Command("ip", "-n", filepath.Base(n.Netns), "route").Output()
			if !strings.Contains(string(routes), gone) {
				break
			}
			if time.Since(start) > time.Second {
				view, _ := l.run("bgp", "routes", n.Name)
				logb, _ := os.ReadFile(filepath.Join("/run/weft-lab", l.name, n.Name, "weftd.log"))
				lines := strings.Split(strings.TrimSpace(string(logb)), "\n")
				t.Fatalf("%s still routes node3's %s %v after its removal:\n%s\nits speaker:\n%s\nits log (end):\n%s", n.Name, gone, time.Since(start), routes,
					view, strings.Join(lines[max(0, len(lines)-25):], "\n"))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	t.Logf("node3's block withdrawn from every node in %v", time.Since(start).Round(time.Millisecond))
	if view := l.must("bgp", "router"); strings.Contains(view, gone) {
		t.Errorf("the router still has %s:\n%s", gone, view)
	}
}

// TestBGPCrossSubnetVXLAN runs fabric bgp over two racks joined by a router that only
// forwards (no BGP): nodes mesh among themselves, route to their own rack's blocks over
// BGP, unencapsulated, and reach the other rack's pods in VXLAN (Calico's CrossSubnet).
// With a store, and in Kubernetes mode (peers and VTEPs from Node objects).
func TestBGPCrossSubnetVXLAN(t *testing.T) {
	t.Run("store", func(t *testing.T) { testCrossSubnet(t, false) })
	t.Run("kubernetes", func(t *testing.T) { testCrossSubnet(t, true) })
}

func testCrossSubnet(t *testing.T, kube bool) {
	l := labFor(t, "x")
	up := []string{"up", "-d", "--nodes", "3", "--fabric", "bgp", "--racks", "2", "--tor", "none"}
	if kube {
		t.Setenv("WEFT_KUBE_DIR", kubetest.Binaries(t, "kube-apiserver", "kube-controller-manager"))
		up = append(up, "--kubernetes")
	}
	l.must(up...)
	for i := 1; i <= 3; i++ { // node1 and node3 in rack 1, node2 in rack 2
		l.must("pod", "add", fmt.Sprintf("p%d", i), "--node", fmt.Sprint(i), "--serve", "tcp:8080")
	}
	if out, err := l.run("check", "-o", "json"); err != nil || !strings.Contains(out, `"ok": true`) {
		t.Fatalf("check: %v\n%s", err, out)
	}
	// node1's routes: node3's blocks (same rack) learned over BGP via node3 itself; node2's
	// blocks (the other rack) through the VXLAN device, and not over BGP.
	s := l.status()
	routes := func(node string) string {
		out, err := exec.Command("ip", "-n", l.name+"-"+node, "-4", "route", "show").CombinedOutput()
		if err != nil {
			t.Fatalf("ip route: %v: %s", err, out)
		}
		return string(out)
	}
	blocks := map[string]string{}
	for _, n := range s.Nodes {
		for _, p := range n.PodCIDRs {
			if p.Addr().Is4() {
				blocks[n.Name] = p.String()
			}
		}
	}
	var same, other string
	for _, line := range strings.Split(routes("node1"), "\n") {
		switch {
		case strings.HasPrefix(line, blocks["node3"]+" "):
			same = line
		case strings.HasPrefix(line, blocks["node2"]+" "):
			other = line
		}
	}
	if !strings.Contains(same, "dev uplink") || !strings.Contains(same, "proto 121") {
		t.Errorf("node3's block on node1 should be a BGP route on the underlay: %q", same)
	}
	if !strings.Contains(other, "dev weft.vxlan") || !strings.Contains(other, "proto 120") {
		t.Errorf("node2's block on node1 should go through VXLAN: %q", other)
	}
}
