package e2e_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/lab"
	"github.com/weftnet/weft/internal/probe"
	"github.com/weftnet/weft/internal/testutil"
)

type labStatus struct {
	Nodes []struct {
		Name, Netns, Fabric string
		Underlay            netip.Addr
		PodCIDRs            []netip.Prefix
		MTU, PID            int
	}
	Pods []struct {
		Name, Node, Netns string
		IPs               []netip.Addr `json:"addresses"`
		MTU               int
	}
}

// lab drives `weft lab` for one test.
type labCLI struct {
	t    *testing.T
	name string
	bin  string
}

func (l labCLI) run(args ...string) (string, error) {
	out, err := exec.Command(l.bin, append(append([]string{"lab"}, args...), "--name", l.name)...).CombinedOutput()
	return string(out), err
}

func (l labCLI) must(args ...string) string {
	l.t.Helper()
	out, err := l.run(args...)
	if err != nil {
		l.t.Fatalf("weft lab %v: %v\n%s", args, err, out)
	}
	return out
}

func (l labCLI) status() labStatus {
	l.t.Helper()
	var s labStatus
	if err := json.Unmarshal([]byte(l.must("status", "-o", "json")), &s); err != nil {
		l.t.Fatal(err)
	}
	return s
}

// labFor is a lab CLI for t, named prefix and the test binary's PID (parallel test
// binaries never share a lab); the lab is brought down when t ends, and that must leave
// no namespace behind.
func labFor(t *testing.T, prefix string) labCLI {
	testutil.RequireRoot(t)
	l := labCLI{t: t, name: fmt.Sprintf("%s%d", prefix, os.Getpid()%100000), bin: filepath.Join(testutil.Binaries(t), "weft")}
	t.Cleanup(func() {
		_, _ = l.run("down")
		if left, _ := filepath.Glob("/run/netns/" + l.name + "-*"); len(left) > 0 {
			t.Errorf("lab down left namespaces: %v", left)
		}
	})
	return l
}

func newLab(t *testing.T, fabric string) labCLI {
	l := labFor(t, "l")
	l.must("up", "-d", "--nodes", "3", "--fabric", fabric)
	for i := 1; i <= 3; i++ {
		l.must("pod", "add", fmt.Sprintf("p%d", i), "--node", fmt.Sprint(i), "--serve", "tcp:8080")
	}
	return l
}

func TestLabThreeNodes(t *testing.T) {
	for _, fabric := range []string{"vxlan", "direct", "bgp"} { // bgp: one segment, iBGP full mesh
		t.Run(fabric, func(t *testing.T) {
			l := newLab(t, fabric)
			out, err := l.run("check", "-o", "json")
			if err != nil || !strings.Contains(out, `"ok": true`) {
				t.Fatalf("check: %v\n%s", err, out)
			}
			s := l.status()
			wantMTU := 1500
			if fabric == "vxlan" {
				wantMTU = 1450
			}
			if len(s.Nodes) != 3 || len(s.Pods) != 3 {
				t.Fatalf("status: %+v", s)
			}
			seen := map[netip.Prefix]bool{}
			for _, n := range s.Nodes {
				if !strings.HasPrefix(filepath.Base(n.Netns), l.name+"-") || n.Fabric != fabric || len(n.PodCIDRs) != 2 || seen[n.PodCIDRs[0]] {
					t.Errorf("node %+v", n)
				}
				seen[n.PodCIDRs[0]] = true
			}
			for _, p := range s.Pods {
				if p.MTU != wantMTU || len(p.IPs) != 2 {
					t.Errorf("pod %+v, want MTU %d and two addresses", p, wantMTU)
				}
			}
			if fabric == "vxlan" {
				checkUplinkDecap(t, s)
			}
		})
	}
}

// checkUplinkDecap sends bulk TCP (GSO aggregates) and pings across the tunnel, both
// families, checks every byte arrives intact, and that the receiving node's VXLAN device
// saw none of it: the uplink's fast path decapsulated it all into the pod.
func checkUplinkDecap(t *testing.T, s labStatus) {
	from, to := s.Pods[0], s.Pods[1]
	var node string
	for _, n := range s.Nodes {
		if n.Name == to.Node {
			node = n.Netns
		}
	}
	h := testutil.NS{Path: node}.Handle(t)
	rxPackets := func() uint64 {
		l, err := h.LinkByName("weft.vxlan")
		if err != nil {
			t.Fatal(err)
		}
		return l.Attrs().Statistics.RxPackets
	}
	before, decapBefore := rxPackets(), decapCounter(t, node)
	ln, err := probe.ListenTCP(to.Netns, ":9090")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go probe.Echo(ln)
	for _, ip := range to.IPs {
		if _, err := probe.Ping(from.Netns, ip, 1000, false, 2*time.Second); err != nil {
			t.Errorf("ping %s: %v", ip, err)
		}
		conn, err := probe.DialTCP(from.Netns, netip.AddrPortFrom(ip, 9090), 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		want := make([]byte, 8<<20)
		for i := range want {
			want[i] = byte(i*7 + i>>9)
		}
		go func() { _, _ = conn.Write(want) }()
		got := make([]byte, len(want))
		_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
		_, err = io.ReadFull(conn, got)
		conn.Close()
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("8 MiB echo through %s: %v (intact: %v)", ip, err, bytes.Equal(got, want))
		}
	}
	if n := rxPackets() - before; n != 0 {
		t.Errorf("%s's VXLAN device received %d packets; want all decapsulated on the uplink", to.Node, n)
	}
	// 16 MiB in at most 64 KiB aggregates, and the pings.
	if n := decapCounter(t, node) - decapBefore; n < 256 {
		t.Errorf("weftd on %s counted %d decapsulated packets, want at least 256", to.Node, n)
	}
}

// decapCounter reads weft_fastpath_packets_total{path="decap"} from the weftd of the node
// namespace at nsPath.
func decapCounter(t *testing.T, nsPath string) int {
	t.Helper()
	resp, err := testutil.NS{Path: nsPath}.HTTPClient().Get("http://" + lab.MetricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, `weft_fastpath_packets_total{path="decap"} `); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return int(n)
		}
	}
	t.Fatalf("no decap counter in /metrics:\n%s", body)
	return 0
}

// TestLabNodeRemovalAndEtcdRestart: routes to a removed node vanish from its peers; an
// etcd restart neither stops traffic nor keeps the agents from seeing later changes.
func TestLabNodeRemovalAndEtcdRestart(t *testing.T) {
	l := newLab(t, "vxlan")
	s := l.status()
	var state struct {
		EtcdPID  int    `json:"etcdPID"`
		Underlay string `json:"underlay"`
		Store    string `json:"store"`
	}
	b, err := os.ReadFile(filepath.Join("/run/weft-lab", l.name, "lab.json"))
	if err != nil || json.Unmarshal(b, &state) != nil {
		t.Fatalf("lab state: %v", err)
	}
	underlay := testutil.NS{Name: filepath.Base(state.Underlay), Path: state.Underlay}
	p1 := testutil.NS{Path: s.Pods[0].Netns}
	dst := s.Pods[1].IPs[0]

	// etcd goes down and comes back while pod1 pings pod2 every 10 ms.
	pinger := probe.StartPinger(p1.Path, dst, 10*time.Millisecond)
	if err := syscall.Kill(state.EtcdPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	listen := strings.TrimPrefix(state.Store, "etcd://")
	etcd := underlay.Command(l.bin, "lab", "etcd", "--data-dir", filepath.Join("/run/weft-lab", l.name, "etcd"), "--listen", listen)
	if err := etcd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = etcd.Process.Kill(); _ = etcd.Wait() })
	time.Sleep(2 * time.Second)
	sent, lost := pinger.Stop()
	if lost > 0 {
		t.Errorf("lost %d of %d pings across an etcd restart", lost, sent)
	}

	// The agents watch again: removing node3 takes its routes off node1 and node2.
	out, err := underlay.Command(l.bin, "cluster", "remove-node", "node3", "--store", state.Store).CombinedOutput()
	if err != nil {
		t.Fatalf("remove-node: %v\n%s", err, out)
	}
	gone := s.Nodes[2].PodCIDRs[0].String()
	for _, n := range s.Nodes[:2] {
		deadline := time.Now().Add(15 * time.Second)
		for {
			routes, _ := exec.Command("ip", "-n", filepath.Base(n.Netns), "route").Output()
			if !strings.Contains(string(routes), gone) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s still routes node3's %s:\n%s", n.Name, gone, routes)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// TestLabOnFreshHost is the fresh-machine scenario of weft lab: /run/netns starts as a
// plain directory; the lab comes up, then `ip netns add` makes a namespace of its own (the
// step that used to hide the lab's namespaces), and the lab still adds a pod, checks every
// path and goes down leaving no file in /run/netns.
func TestLabOnFreshHost(t *testing.T) {
	if !testutil.InFreshMountNS(t) {
		return
	}
	bin := filepath.Join(testutil.Binaries(t), "weft")
	name := fmt.Sprintf("f%d", os.Getpid()%100000)
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(bin, append(append([]string{"lab"}, args...), "--name", name)...).CombinedOutput()
		if err != nil {
			t.Fatalf("weft lab %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	t.Cleanup(func() { _, _ = exec.Command(bin, "lab", "down", "--name", name).CombinedOutput() })
	run("up", "-d", "--nodes", "2", "--fabric", "vxlan")
	run("pod", "add", "a", "--node", "node1", "--serve", "tcp:8080")
	other := name + "-iproute2"
	if out, err := exec.Command("ip", "netns", "add", other).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	run("pod", "add", "b", "--node", "2", "--serve", "tcp:8080")
	if out := run("check", "-o", "json"); !strings.Contains(out, `"ok": true`) {
		t.Fatalf("check:\n%s", out)
	}
	if out, err := exec.Command("ip", "netns", "exec", name+"-node1", "ip", "link", "show", "lo").CombinedOutput(); err != nil {
		t.Errorf("iproute2 cannot enter the lab's node: %v %s", err, out)
	}
	run("down")
	if out, err := exec.Command("ip", "netns", "del", other).CombinedOutput(); err != nil {
		t.Errorf("ip netns del: %v %s", err, out)
	}
	// Only this lab's names: other test binaries add and remove theirs meanwhile.
	after, _ := os.ReadDir("/run/netns")
	var left []string
	for _, e := range after {
		if strings.HasPrefix(e.Name(), name+"-") {
			left = append(left, e.Name())
		}
	}
	if len(left) > 0 {
		t.Errorf("/run/netns still holds %v after lab down", left)
	}
}
