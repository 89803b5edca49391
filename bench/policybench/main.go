// Command policybench measures the cost of network policy on a new connection, side by
// side in one run: a server pod selected by N policies (each allowing one address block on
// TCP 8080, one of them the client's), enforced
//
//   - by weft: policy.Model.Compile and nftpolicy (table inet weft-policy: verdict map,
//     interval sets) beside weft-nat's pod-to-pod notrack, as on a weftd node, and
//   - in the shape Calico and kube-router use with iptables: one ipset and one chain per
//     policy, jumped to in turn from the pod's chain (iptables-legacy + ipset),
//
// against the same topology with weft and no policy (weft-nat alone), with conntrack only,
// and with nothing at all. It reports the time to program the N policies and
// new-connection latency (connect, one byte each way, close) in interleaved rounds. Run by
// bench/policy.sh; needs root; works only in namespaces it creates.
package main

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/bench/internal/nettopo"
	"github.com/weftnet/weft/internal/dataplane/fastpath"
	"github.com/weftnet/weft/internal/dataplane/masq"
	"github.com/weftnet/weft/internal/policy"
	"github.com/weftnet/weft/internal/policy/nftpolicy"
	"github.com/weftnet/weft/internal/probe"
)

var (
	sizes = flag.String("sizes", "0,1,100,1000", "policy counts (0: 1,000 policies selecting another pod of the node)")
	conns = flag.Int("conns", 2000, "connections per latency sample")
)

var topos []*nettopo.Topo

func fail(err error) {
	for _, t := range topos {
		t.Down()
	}
	for _, c := range closers {
		c()
	}
	fmt.Fprintln(os.Stderr, "policybench:", err)
	os.Exit(1)
}

func mustTopo(tag string) *nettopo.Topo {
	t, err := nettopo.New(tag, []int{8080})
	if err != nil {
		fail(err)
	}
	topos = append(topos, t)
	return t
}

// policies are n policies in namespace bench selecting app=server, policy i allowing the
// block 10.(100+i/256).(i%256).0/24 on TCP 8080; the last one allows the client instead.
func policies(n int, app string) []v1.NetworkPolicy {
	out := make([]v1.NetworkPolicy, n)
	for i := range out {
		block := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(100 + i/256), byte(i % 256), 0}), 24)
		if i == n-1 {
			block = netip.MustParsePrefix(nettopo.ClientIP + "/32")
		}
		out[i] = v1.NetworkPolicy{Name: fmt.Sprintf("p%d", i), Namespace: "bench",
			PodSelector: v1.LabelSelector{MatchLabels: map[string]string{"app": app}},
			Ingress: []v1.IngressRule{{From: []v1.PolicyPeer{{IPBlock: &v1.IPBlock{CIDR: block}}},
				Ports: []v1.PolicyPort{{Protocol: v1.ProtocolTCP, Port: 8080}}}}}
	}
	return out
}

// podNetwork holds the client and the server (bench/internal/nettopo).
var podNetwork = netip.MustParsePrefix("10.210.0.0/16")

var server = v1.Pod{Name: "server", Namespace: "bench", IPs: []netip.Addr{netip.MustParseAddr(nettopo.ServerIP)},
	Labels: map[string]string{"app": "server"}, Ready: true}

// neighbour is another pod of the node (an address only: no traffic goes to it), which the
// policies of size 0 select instead of the server.
var neighbour = v1.Pod{Name: "neighbour", Namespace: "bench", IPs: []netip.Addr{netip.MustParseAddr("10.210.2.3")},
	Labels: map[string]string{"app": "neighbour"}, Ready: true}

// setup is N policies selecting the server; N = 0 stands for 1,000 policies that select a
// neighbour of the server on the node instead (the policy machinery present, the server
// open).
func setup(n int) ([]v1.NetworkPolicy, v1.Pod) {
	if n == 0 {
		return policies(1000, "neighbour"), neighbour
	}
	return policies(n, "server"), server
}

// loadNAT programs weft-nat as weftd does: pod-to-pod traffic untracked unless a policy
// needs it tracked. Alone, it is a weft node with no policy.
func loadNAT(t *nettopo.Topo) {
	if err := probe.InNS(t.Node, func() error {
		return masq.Apply(masq.Table{PodCIDRs: []netip.Prefix{podNetwork},
			LocalAddrs: []netip.Addr{netip.MustParseAddr("10.210.1.1"), netip.MustParseAddr("10.210.2.1")}})
	}); err != nil {
		fail(err)
	}
}

// loadWeft programs the node as weftd does: weft-nat, then the compiled policies; the time
// covers compiling and programming the policies.
func loadWeft(t *nettopo.Topo, ps []v1.NetworkPolicy, pod v1.Pod) (time.Duration, map[netip.Addr]policy.PodRules) {
	loadNAT(t)
	f, err := os.Open(t.Node)
	if err != nil {
		fail(err)
	}
	defer f.Close()
	start := time.Now()
	rules := policy.New(ps, nil).Compile(&pod, []v1.Pod{server, neighbour})
	st := nftpolicy.State{Cluster: []netip.Prefix{podNetwork},
		Pods: []nftpolicy.Pod{{ID: pod.Name, IPs: pod.IPs, Rules: rules}}}
	if err := nftpolicy.Apply(st, int(f.Fd())); err != nil {
		fail(err)
	}
	return time.Since(start), map[netip.Addr]policy.PodRules{pod.IPs[0]: rules}
}

// loadIpset programs the iptables + ipset shape: per policy a hash:net set and a chain that
// accepts its members on TCP 8080; the pod's chain jumps to every policy chain in order.
func loadIpset(t *nettopo.Topo, ps []v1.NetworkPolicy, pod v1.Pod) time.Duration {
	var sets, rules strings.Builder
	rules.WriteString("*filter\n:FORWARD ACCEPT [0:0]\n:pod-in - [0:0]\n")
	for i, p := range ps {
		fmt.Fprintf(&sets, "create pol-%d hash:net family inet\nadd pol-%d %s\n", i, i, p.Ingress[0].From[0].IPBlock.CIDR)
		fmt.Fprintf(&rules, ":pol-%d - [0:0]\n", i)
	}
	rules.WriteString("-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n")
	fmt.Fprintf(&rules, "-A FORWARD -d %s/32 -j pod-in\n", pod.IPs[0])
	for i := range ps {
		fmt.Fprintf(&rules, "-A pod-in -j pol-%d\n", i)
		fmt.Fprintf(&rules, "-A pol-%d -p tcp -m set --match-set pol-%d src -m tcp --dport 8080 -j ACCEPT\n", i, i)
	}
	rules.WriteString("-A pod-in -j DROP\nCOMMIT\n")
	start := time.Now()
	for _, c := range []struct {
		in   string
		name string
		args []string
	}{{sets.String(), "ipset", []string{"restore"}}, {rules.String(), "iptables-legacy-restore", nil}} {
		cmd := exec.Command("nsenter", append([]string{"--net=" + t.Node, "--", c.name}, c.args...)...)
		cmd.Stdin = strings.NewReader(c.in)
		if out, err := cmd.CombinedOutput(); err != nil {
			fail(fmt.Errorf("%s: %v: %s", c.name, err, out))
		}
	}
	return time.Since(start)
}

// loadFastpath puts weftd's eBPF fast path on the node's host veths of the client and the
// server, with them in its map, as weftd runs it: a policed pod is in it with its rules
// (rules by address; none: no policy).
func loadFastpath(t *nettopo.Topo, rules map[netip.Addr]policy.PodRules) (trie time.Duration) {
	f, err := fastpath.Load(nil)
	if err != nil {
		fail(err)
	}
	closers = append(closers, f.Close)
	nsh, err := vnetns.GetFromPath(t.Node)
	if err != nil {
		fail(err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		fail(err)
	}
	defer h.Close()
	entries := map[fastpath.Key]fastpath.Value{}
	for _, p := range []struct{ dev, ns, ip string }{{"c0", t.Client, nettopo.ClientIP}, {"s0", t.Server, nettopo.ServerIP}} {
		dev, ns, ip := p.dev, p.ns, p.ip
		host, err := h.LinkByName(dev)
		if err != nil {
			fail(err)
		}
		mac, err := nettopo.MAC(ns, "eth0")
		if err != nil {
			fail(err)
		}
		v := fastpath.ValueOf(host.Attrs().Index, mac)
		v.Flags = fastpath.FlagsOf(rules[netip.MustParseAddr(ip)])
		entries[fastpath.KeyOf(netip.MustParseAddr(ip))] = v
		if err := f.Attach(h, host, fastpath.RolePod); err != nil {
			fail(err)
		}
	}
	start := time.Now()
	if err := f.SyncPolicy(fastpath.PolicyEntries(rules)); err != nil {
		fail(err)
	}
	trie = time.Since(start)
	if err := f.Sync(entries); err != nil {
		fail(err)
	}
	return trie
}

// closers release the fast paths' programs and maps (their filters go with the namespaces).
var closers []func()

// loadTracked turns conntrack on in the node and nothing else (one forward chain passing
// established traffic): the share of the cost that any stateful enforcement pays.
func loadTracked(t *nettopo.Topo) {
	cmd := exec.Command("nsenter", "--net="+t.Node, "--", "nft", "-f", "-")
	cmd.Stdin = strings.NewReader("table inet tracked {\n chain forward { type filter hook forward priority 0; ct state established,related accept; }\n}\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		fail(fmt.Errorf("nft: %v: %s", err, out))
	}
}

func main() {
	flag.Parse()
	tag := fmt.Sprintf("pb%d", os.Getpid()%100000)
	base := mustTopo(tag + "b")
	tracked := mustTopo(tag + "t")
	loadTracked(tracked)
	weftNAT := mustTopo(tag + "n")
	loadNAT(weftNAT)
	// As weftd runs by default: the fast path carries unpoliced pods' traffic.
	weftNATFast := mustTopo(tag + "f")
	loadNAT(weftNATFast)
	loadFastpath(weftNATFast, nil)
	defer func() {
		for _, t := range topos {
			t.Down()
		}
		for _, c := range closers {
			c()
		}
	}()
	dst := netip.MustParseAddrPort(nettopo.ServerIP + ":8080")
	fmt.Printf("%-8s %-13s %-13s %-25s %-25s %-25s %-25s %-16s %s\n", "policies", "weft program", "ipset program", "weft p50/p99 (x none)", "ipset p50/p99 (x none)", "conntrack only (x none)", "weft, no policy (x none)", "weft p50 (x weft, no policy)", "none p50/p99")
	for _, s := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			fail(fmt.Errorf("-sizes: %q", s))
		}
		ps, pod := setup(n)
		w, i := mustTopo(fmt.Sprintf("%sw%d", tag, n%1000)), mustTopo(fmt.Sprintf("%si%d", tag, n%1000))
		wf := mustTopo(fmt.Sprintf("%sx%d", tag, n%1000))
		wt, _ := loadWeft(w, ps, pod)
		it := loadIpset(i, ps, pod)
		_, rules := loadWeft(wf, ps, pod)
		trie := loadFastpath(wf, rules)
		res, err := nettopo.Interleaved([]nettopo.Target{{Topo: w, Addr: dst}, {Topo: i, Addr: dst}, {Topo: tracked, Addr: dst}, {Topo: weftNAT, Addr: dst}, {Topo: base, Addr: dst},
			{Topo: wf, Addr: dst}, {Topo: weftNATFast, Addr: dst}}, *conns)
		if err != nil {
			fail(err)
		}
		r := func(p nettopo.Percentiles) string {
			return fmt.Sprintf("%v/%v (%.3fx)", p.P50, p.P99, float64(p.P50)/float64(res[4].P50))
		}
		fmt.Printf("%-8d %-13v %-13v %-25s %-25s %-25s %-25s %-28s %v/%v\n", n, wt.Round(100*time.Microsecond), it.Round(100*time.Microsecond), r(res[0]), r(res[1]), r(res[2]), r(res[3]),
			fmt.Sprintf("%.3fx", float64(res[0].P50)/float64(res[3].P50)), res[4].P50, res[4].P99)
		fmt.Printf("%-8s with the fast path (weftd's default): weft %s, weft with no policy %s, weft p50 (x weft, no policy) %.3fx; policy trie written in %v\n", "", r(res[5]), r(res[6]),
			float64(res[5].P50)/float64(res[6].P50), trie.Round(100*time.Microsecond))
		w.Down()
		i.Down()
		wf.Down()
	}
}
