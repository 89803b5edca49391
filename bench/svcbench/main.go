// Command svcbench measures weft's nftables service proxy side by side with the rule
// shapes kube-proxy loads, on the same namespaces, in one run:
//
//   - weft: proxy.State programmed by nftproxy over netlink (table inet weft-svc);
//   - fastpath: the weft shape plus weftd's eBPF fast path on the node's veths;
//   - ebpf: weftd's --proxy ebpf, the same table plus the socket load balancer
//     (internal/proxy/sockproxy) translating the client's connects;
//   - ebpf-fastpath: ebpf plus the fast path;
//   - kube-proxy nftables mode's shape, loaded with `nft -f`;
//   - kube-proxy iptables mode's shape, loaded with iptables-restore, legacy and nf_tables
//     backends.
//
// For each it measures the full programming of N services × 5 endpoints, one endpoint
// change at N (until the command that applies it returns), and new-connection latency
// (connect, 1-byte echo, close) through a service address and straight to the backend,
// against the same with no rules at all. Run it pinned to one CPU (bench/services.sh).
// Needs root; it works only in namespaces it creates and deletes.
package main

import (
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	cnins "github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"

	"github.com/weftnet/weft/bench/internal/nettopo"
	"github.com/weftnet/weft/internal/bpffs"
	"github.com/weftnet/weft/internal/dataplane/fastpath"
	"github.com/weftnet/weft/internal/proxy"
	"github.com/weftnet/weft/internal/proxy/nftproxy"
	"github.com/weftnet/weft/internal/proxy/sockproxy"
)

var (
	sizes     = flag.String("sizes", "10,1000,10000", "service counts")
	conns     = flag.Int("conns", 2000, "connections per latency sample")
	shapes    = flag.String("shapes", "weft,nft,iptables-legacy,iptables-nft", "what to measure")
	streamFor = flag.Duration("stream", 500*time.Millisecond, "length of each of 6 rounds of one long stream through the VIP and direct, at the largest size (0: skip)")
	nftIpt10k = flag.Bool("iptables-nft-10k", false, "also load 10,000 services with iptables-nft (minutes)")
)

const (
	serverIP  = nettopo.ServerIP
	basePort  = 8080
	endpoints = 5
)

type topo struct {
	*nettopo.Topo
	undo []func() // what a shape set up outside the namespaces (the socket LB's bpffs)
}

func main() {
	flag.Parse()
	tag := fmt.Sprintf("sb%d", os.Getpid()%100000)
	var ns []int
	for _, s := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			fail(fmt.Errorf("-sizes: %q", s))
		}
		ns = append(ns, n)
	}
	results := map[string]map[string]string{} // shape → metric → value
	record := func(shape, metric, v string) {
		if results[shape] == nil {
			results[shape] = map[string]string{}
		}
		results[shape][metric] = v
		fmt.Printf("%-16s %-28s %s\n", shape, metric, v)
	}
	// The baseline, a topology with no rules at all, stays up for the whole run: every
	// latency sample below is taken in rounds alternating with it, so a ratio compares
	// two measurements of the same moment on this noisy machine.
	base := mustTopo(tag + "b")
	defer base.down()
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
	go func() { <-stop; fail(errors.New("interrupted")) }()

	for _, shape := range strings.Split(*shapes, ",") {
		for _, n := range ns {
			if shape == "iptables-nft" && n > 1000 && !*nftIpt10k {
				record(shape, fmt.Sprintf("full load %d", n), "skipped (minutes; -iptables-nft-10k)")
				continue
			}
			t := mustTopo(fmt.Sprintf("%s%c%d", tag, shape[0], n%100))
			full, change, err := load(t, shape, n)
			if err != nil {
				t.down()
				fail(fmt.Errorf("%s at %d: %w", shape, n, err))
			}
			record(shape, fmt.Sprintf("full load %d", n), full.Round(time.Millisecond).String())
			record(shape, fmt.Sprintf("one change at %d", n), change.Round(time.Microsecond).String())
			vip := netip.AddrPortFrom(vipOf(n-1), 80) // the last service: no early match
			direct := netip.MustParseAddrPort(serverIP + ":8080")
			_ = vip
			if strings.HasPrefix(shape, "empty") {
				vip = direct // nothing to reach through a VIP
			}
			samples := interleaved([]nettopo.Target{{Topo: t.Topo, Addr: vip}, {Topo: t.Topo, Addr: direct}, {Topo: base.Topo, Addr: direct}})
			v, d, none := samples[0], samples[1], samples[2]
			record(shape, fmt.Sprintf("VIP p50/p99 at %d", n), fmt.Sprintf("%v / %v (%.3fx of no rules)", v.P50, v.P99, ratio(v.P50, none.P50)))
			record(shape, fmt.Sprintf("direct p50/p99 at %d", n), fmt.Sprintf("%v / %v (%.3fx of no rules)", d.P50, d.P99, ratio(d.P50, none.P50)))
			record(shape, fmt.Sprintf("no rules p50/p99 at %d", n), fmt.Sprintf("%v / %v", none.P50, none.P99))
			if *streamFor > 0 && n == ns[len(ns)-1] && !strings.HasPrefix(shape, "empty") {
				r, err := nettopo.StreamRates([]nettopo.Target{{Topo: t.Topo, Addr: vip}, {Topo: t.Topo, Addr: direct}}, 6, *streamFor)
				if err != nil {
					t.down()
					fail(err)
				}
				record(shape, fmt.Sprintf("stream via VIP at %d", n), fmt.Sprintf("%.2f Gbit/s (%.3fx of direct %.2f Gbit/s)", r[0]*8/1e9, r[0]/r[1], r[1]*8/1e9))
			}
			t.down()
		}
	}
	fmt.Println("\nratios (weft against each, lower is better for weft):")
	for _, n := range ns {
		w := results["weft"]
		for _, other := range []string{"ebpf", "nft", "iptables-legacy", "iptables-nft"} {
			o := results[other]
			if w == nil || o == nil {
				continue
			}
			for _, m := range []string{"full load", "one change at"} {
				key := fmt.Sprintf("%s %d", m, n)
				a, errA := time.ParseDuration(w[key])
				b, errB := time.ParseDuration(o[key])
				if errA == nil && errB == nil {
					fmt.Printf("  %-22s weft/%-16s %.3fx\n", key, other, float64(a)/float64(b))
				}
			}
		}
	}
}

func ratio(a, b time.Duration) float64 { return float64(a) / float64(b) }

// active lists the topologies up, so a failure still removes them.
var active []*topo

// child is the loader running now (nft, iptables-restore), ended on failure.
var child atomic.Pointer[os.Process]

func fail(err error) {
	fmt.Fprintln(os.Stderr, "svcbench:", err)
	if p := child.Load(); p != nil {
		_ = p.Kill()
		_, _ = p.Wait()
	}
	for _, t := range active {
		t.down()
	}
	os.Exit(1)
}

func vipOf(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})
}

// endpointsOf: service i's 5 backends; the last service's (and the first's) are the real
// server's 5 ports, the others fake addresses.
func endpointsOf(i, n int) []proxy.Backend {
	out := make([]proxy.Backend, endpoints)
	for e := range out {
		if i == n-1 || i == 0 {
			out[e] = proxy.Backend{IP: netip.MustParseAddr(serverIP), Port: uint16(basePort + e)}
		} else {
			out[e] = proxy.Backend{IP: netip.AddrFrom4([4]byte{10, 212, byte(i >> 8), byte(i)}), Port: uint16(9000 + e)}
		}
	}
	return out
}

// load programs n services with shape, then changes one endpoint of the middle service;
// it returns how long each took.
func load(t *topo, shape string, n int) (full, change time.Duration, err error) {
	switch shape {
	case "weft":
		return loadWeft(t, n)
	case "ebpf":
		return loadEbpf(t, n)
	case "fastpath":
		return loadFastpath(t, n, loadWeft)
	case "ebpf-fastpath":
		return loadFastpath(t, n, loadEbpf)
	case "nft":
		return loadNft(t, n)
	case "iptables-legacy", "iptables-nft":
		return loadIptables(t, strings.TrimPrefix(shape, "iptables-"), n)
	case "empty-ip", "empty-inet":
		// Reference points: a NAT hook and nothing else (conntrack on), by family.
		fam := strings.TrimPrefix(shape, "empty-")
		d, err := runTimed(t.Node, []byte("table "+fam+" x {\n chain p { type nat hook prerouting priority dstnat; }\n chain o { type nat hook postrouting priority srcnat; }\n}\n"), "nft", "-f", "-")
		return d, 0, err
	}
	return 0, 0, fmt.Errorf("unknown shape %q", shape)
}

func weftState(n int, changed bool) proxy.State {
	st := proxy.State{Ports: map[string]*proxy.Port{}}
	for i := range n {
		p := &proxy.Port{ID: fmt.Sprintf("%06d4", i), VIP: vipOf(i), Proto: proxy.ProtoTCP, Port: 80, Backends: endpointsOf(i, n)}
		if changed && i == n/2 {
			p.Backends = append([]proxy.Backend(nil), p.Backends...)
			p.Backends[0].Port = 9999
		}
		st.Ports[p.ID] = p
		for _, b := range p.Backends {
			st.Endpoints = append(st.Endpoints, proxy.Key{IP: b.IP, Proto: proxy.ProtoTCP, Port: b.Port})
		}
	}
	sort.Slice(st.Endpoints, func(i, j int) bool {
		a, b := st.Endpoints[i], st.Endpoints[j]
		if a.IP != b.IP {
			return a.IP.Less(b.IP)
		}
		return a.Port < b.Port
	})
	st.Endpoints = dedupe(st.Endpoints)
	return st
}

func dedupe(keys []proxy.Key) []proxy.Key {
	out := keys[:0]
	for i, k := range keys {
		if i == 0 || k != keys[i-1] {
			out = append(out, k)
		}
	}
	return out
}

func loadWeft(t *topo, n int) (full, change time.Duration, err error) {
	// As weftd runs it: from an ordinary goroutine, with its socket in the node's namespace.
	nsh, err := vnetns.GetFromPath(t.Node)
	if err != nil {
		return 0, 0, err
	}
	defer nsh.Close()
	px := nftproxy.NewIn(int(nsh))
	// The cluster's pod networks, as weftd gives them: the client and the server are pods.
	px.PodNetworks([]netip.Prefix{netip.MustParsePrefix("10.210.0.0/16")})
	want, changed := weftState(n, false), weftState(n, true)
	start := time.Now()
	if _, err := px.Sync(want); err != nil {
		return 0, 0, err
	}
	full = time.Since(start)
	change, err = medianChange(want, changed, func(next proxy.State) error {
		st, err := px.Sync(next)
		if err == nil && st.Changed != 1 {
			err = fmt.Errorf("one endpoint change rewrote %d service ports", st.Changed)
		}
		return err
	})
	return full, change, err
}

// medianChange moves one endpoint of one service back and forth with apply (from want to
// changed and back) and returns the median time of 5.
func medianChange(want, changed proxy.State, apply func(proxy.State) error) (time.Duration, error) {
	var changes []time.Duration
	for i := range 5 {
		next := changed
		if i%2 == 1 {
			next = want
		}
		start := time.Now()
		if err := apply(next); err != nil {
			return 0, err
		}
		changes = append(changes, time.Since(start))
	}
	sort.Slice(changes, func(i, j int) bool { return changes[i] < changes[j] })
	return changes[2], nil
}

// loadEbpf is weftd with --proxy ebpf: the nftables proxy, and the socket load balancer
// in front of it translating the client namespace's connects (the cost a pod sees).
func loadEbpf(t *topo, n int) (full, change time.Duration, err error) {
	dir, err := os.MkdirTemp("", "svcbench-bpf")
	if err != nil {
		return 0, 0, err
	}
	t.undo = append(t.undo, func() { _ = bpffs.Unmount(dir); _ = os.RemoveAll(dir) })
	cookie, err := sockproxy.NetnsCookie(t.Client)
	if err != nil {
		return 0, 0, err
	}
	root, err := sockproxy.CgroupRoot()
	if err != nil {
		return 0, 0, err
	}
	start := time.Now()
	sock, err := sockproxy.Load(filepath.Join(dir, "sock"))
	if err != nil {
		return 0, 0, err
	}
	t.undo = append(t.undo, sock.Close)
	if err := sock.Attach(root); err != nil {
		return 0, 0, err
	}
	pods := map[uint64]bool{cookie: true}
	want, changed := weftState(n, false), weftState(n, true)
	if err := sock.Sync(want, pods); err != nil {
		return 0, 0, err
	}
	sockFull := time.Since(start)
	nftFull, nftChange, err := loadWeft(t, n)
	if err != nil {
		return 0, 0, err
	}
	change, err = medianChange(want, changed, func(next proxy.State) error { return sock.Sync(next, pods) })
	if err != nil {
		return 0, 0, err
	}
	// A change reaches pods' new connections when the maps have it (weftd writes them
	// before the table); the table's own change is reported beside it.
	fmt.Printf("%-16s %-28s %s\n", "ebpf", fmt.Sprintf("table change at %d", n), nftChange.Round(100*time.Microsecond))
	return sockFull + nftFull, change, nil
}

// loadFastpath is a proxy shape (weft, or ebpf) plus weftd's eBPF fast path on the node's
// two veths, as weftd runs it for its pods: the client and the server in its pod map,
// every service endpoint in its endpoint map (so the proxy's translated flows take the
// kernel's path).
func loadFastpath(t *topo, n int, proxyShape func(*topo, int) (time.Duration, time.Duration, error)) (full, change time.Duration, err error) {
	if full, change, err = proxyShape(t, n); err != nil {
		return 0, 0, err
	}
	f, err := fastpath.Load(nil)
	if err != nil {
		return 0, 0, err
	}
	t.undo = append(t.undo, f.Close)
	// Attached with tcx, its links pinned in a bpffs of the run's own, as weftd does.
	dir, err := os.MkdirTemp("", "svcbench-fp")
	if err != nil {
		return 0, 0, err
	}
	t.undo = append(t.undo, func() { _ = bpffs.Unmount(dir); _ = os.RemoveAll(dir) })
	if err := f.UseTCX(dir); err != nil {
		return 0, 0, err
	}
	nsh, err := vnetns.GetFromPath(t.Node)
	if err != nil {
		return 0, 0, err
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return 0, 0, err
	}
	defer h.Close()
	pods := map[fastpath.Key]fastpath.Value{}
	for _, p := range []struct{ dev, ns, ip string }{{"c0", t.Client, nettopo.ClientIP}, {"s0", t.Server, serverIP}} {
		host, err := h.LinkByName(p.dev)
		if err != nil {
			return 0, 0, err
		}
		mac, err := nettopo.MAC(p.ns, "eth0")
		if err != nil {
			return 0, 0, err
		}
		pods[fastpath.KeyOf(netip.MustParseAddr(p.ip))] = fastpath.ValueOf(host.Attrs().Index, mac)
		// tcx names the device by its index: attach from inside the node's namespace.
		if err := cnins.WithNetNSPath(t.Node, func(cnins.NetNS) error { return f.Attach(h, host, fastpath.RolePod) }); err != nil {
			return 0, 0, err
		}
	}
	if err := f.Sync(pods); err != nil {
		return 0, 0, err
	}
	eps := map[fastpath.EndpointKey]uint32{}
	for _, k := range weftState(n, false).Endpoints {
		eps[fastpath.EndpointKeyOf(k.IP, k.Proto, k.Port)] = 1
	}
	return full, change, f.SyncEndpoints(eps)
}

// loadNft writes kube-proxy's nftables-mode shape and loads it with `nft -f`; the change
// is the incremental transaction kube-proxy sends for one endpoint.
func loadNft(t *topo, n int) (full, change time.Duration, err error) {
	var b strings.Builder
	b.WriteString(`add table ip kube-proxy
add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority dstnat ; }
add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }
add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority srcnat ; }
add chain ip kube-proxy masquerading
add chain ip kube-proxy mark-for-masquerade
add chain ip kube-proxy services
add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }
add rule ip kube-proxy nat-prerouting jump services
add rule ip kube-proxy nat-output jump services
add rule ip kube-proxy nat-postrouting jump masquerading
add rule ip kube-proxy masquerading meta mark & 0x4000 == 0 return
add rule ip kube-proxy masquerading meta mark set meta mark ^ 0x4000
add rule ip kube-proxy masquerading masquerade fully-random
add rule ip kube-proxy mark-for-masquerade meta mark set meta mark | 0x4000
add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips
`)
	for i := range n {
		nftService(&b, i, endpointsOf(i, n))
	}
	if full, err = runTimed(t.Node, []byte(b.String()), "nft", "-f", "-"); err != nil {
		return 0, 0, err
	}
	// One endpoint of the middle service moves: new endpoint chain, the service chain
	// rewritten, the old endpoint chain deleted.
	i := n / 2
	old := endpointsOf(i, n)
	eps := append([]proxy.Backend(nil), old...)
	eps[0].Port = 9999
	var c strings.Builder
	svc := fmt.Sprintf("service-%06d-tcp", i)
	epChain := func(e proxy.Backend) string { return fmt.Sprintf("endpoint-%06d-%s-%d", i, e.IP, e.Port) }
	fmt.Fprintf(&c, "add chain ip kube-proxy %s\n", epChain(eps[0]))
	fmt.Fprintf(&c, "add rule ip kube-proxy %s ip saddr %s jump mark-for-masquerade\n", epChain(eps[0]), eps[0].IP)
	fmt.Fprintf(&c, "add rule ip kube-proxy %s meta l4proto tcp dnat to %s\n", epChain(eps[0]), eps[0])
	fmt.Fprintf(&c, "flush chain ip kube-proxy %s\n", svc)
	nftServiceRules(&c, svc, i, eps)
	fmt.Fprintf(&c, "flush chain ip kube-proxy %s\ndelete chain ip kube-proxy %s\n", epChain(old[0]), epChain(old[0]))
	change, err = runTimed(t.Node, []byte(c.String()), "nft", "-f", "-")
	return full, change, err
}

func nftService(b *strings.Builder, i int, eps []proxy.Backend) {
	svc := fmt.Sprintf("service-%06d-tcp", i)
	fmt.Fprintf(b, "add chain ip kube-proxy %s\n", svc)
	for _, e := range eps {
		ch := fmt.Sprintf("endpoint-%06d-%s-%d", i, e.IP, e.Port)
		fmt.Fprintf(b, "add chain ip kube-proxy %s\n", ch)
		fmt.Fprintf(b, "add rule ip kube-proxy %s ip saddr %s jump mark-for-masquerade\n", ch, e.IP)
		fmt.Fprintf(b, "add rule ip kube-proxy %s meta l4proto tcp dnat to %s\n", ch, e)
	}
	nftServiceRules(b, svc, i, eps)
	fmt.Fprintf(b, "add element ip kube-proxy service-ips { %s . tcp . 80 : goto %s }\n", vipOf(i), svc)
}

func nftServiceRules(b *strings.Builder, svc string, i int, eps []proxy.Backend) {
	fmt.Fprintf(b, "add rule ip kube-proxy %s ip daddr %s tcp dport 80 ip saddr != 10.210.0.0/16 jump mark-for-masquerade\n", svc, vipOf(i))
	var m []string
	for k, e := range eps {
		m = append(m, fmt.Sprintf("%d : goto endpoint-%06d-%s-%d", k, i, e.IP, e.Port))
	}
	fmt.Fprintf(b, "add rule ip kube-proxy %s numgen random mod %d vmap { %s }\n", svc, len(eps), strings.Join(m, " , "))
}

// loadIptables writes kube-proxy's iptables-mode shape (KUBE-SERVICES, a KUBE-SVC chain
// per service, a KUBE-SEP chain per endpoint, statistic-mode random) and restores it; the
// change is kube-proxy's partial restore: every chain declared, KUBE-SERVICES rewritten,
// and the changed service's chains.
func loadIptables(t *topo, backend string, n int) (full, change time.Duration, err error) {
	bin := "iptables-" + backend + "-restore"
	var b strings.Builder
	iptablesRules(&b, n, -1, true)
	if full, err = runTimed(t.Node, []byte(b.String()), bin); err != nil {
		return 0, 0, err
	}
	var c strings.Builder
	iptablesRules(&c, n, n/2, false)
	change, err = runTimed(t.Node, []byte(c.String()), bin, "--noflush")
	return full, change, err
}

func iptablesRules(b *strings.Builder, n, changed int, all bool) {
	sep := func(i int, e proxy.Backend) string {
		return fmt.Sprintf("KUBE-SEP-%06d%d", i, e.Port)
	}
	// A chain declared in a --noflush restore is flushed: the partial restore declares
	// only what it rewrites (KUBE-SERVICES and the changed service's chains).
	b.WriteString("*nat\n:KUBE-SERVICES - [0:0]\n")
	if all {
		b.WriteString(":KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n")
	}
	for i := range n {
		if !all && i != changed {
			continue
		}
		fmt.Fprintf(b, ":KUBE-SVC-%06d - [0:0]\n", i)
		for _, e := range endpointsOf(i, n) {
			if all {
				fmt.Fprintf(b, ":%s - [0:0]\n", sep(i, e))
			}
		}
	}
	if all {
		b.WriteString("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n")
		b.WriteString("-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n")
		b.WriteString("-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n")
		b.WriteString("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n")
		b.WriteString("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n")
		b.WriteString("-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n")
		b.WriteString("-A KUBE-POSTROUTING -j MASQUERADE --random-fully\n")
	}
	for i := range n {
		fmt.Fprintf(b, "-A KUBE-SERVICES -d %s/32 -p tcp -m comment --comment \"default/svc%d:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-%06d\n", vipOf(i), i, i)
	}
	for i := range n {
		if !all && i != changed {
			continue
		}
		eps := endpointsOf(i, n)
		if i == changed {
			eps[0].Port = 9999
			for _, e := range eps {
				fmt.Fprintf(b, ":%s - [0:0]\n", sep(i, e))
			}
		}
		fmt.Fprintf(b, "-A KUBE-SVC-%06d ! -s 10.210.0.0/16 -d %s/32 -p tcp -m tcp --dport 80 -j KUBE-MARK-MASQ\n", i, vipOf(i))
		for k, e := range eps {
			if left := len(eps) - k; left > 1 {
				fmt.Fprintf(b, "-A KUBE-SVC-%06d -m statistic --mode random --probability %.11f -j %s\n", i, 1/float64(left), sep(i, e))
			} else {
				fmt.Fprintf(b, "-A KUBE-SVC-%06d -j %s\n", i, sep(i, e))
			}
			fmt.Fprintf(b, "-A %s -s %s/32 -j KUBE-MARK-MASQ\n", sep(i, e), e.IP)
			fmt.Fprintf(b, "-A %s -p tcp -m tcp -j DNAT --to-destination %s\n", sep(i, e), e)
		}
	}
	b.WriteString("COMMIT\n")
}

// runTimed runs a command in the namespace with input on stdin, timed.
func runTimed(nsPath string, input []byte, name string, args ...string) (time.Duration, error) {
	cmd := exec.Command("nsenter", append([]string{"--net=" + nsPath, "--", name}, args...)...)
	cmd.Stdin = strings.NewReader(string(input))
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Start()
	if err == nil {
		child.Store(cmd.Process)
		err = cmd.Wait()
		child.Store(nil)
	}
	d := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("%s: %v: %.400s", name, err, out.String())
	}
	return d, nil
}

// mustTopo builds a client — node — server topology (nettopo) with echo servers on the
// server's ports 8080-8084, recorded so that a failure still removes it.
func mustTopo(tag string) *topo {
	ports := make([]int, endpoints)
	for e := range ports {
		ports[e] = basePort + e
	}
	t, err := nettopo.New(tag, ports)
	if err != nil {
		fail(err)
	}
	tp := &topo{Topo: t}
	active = append(active, tp)
	return tp
}

func (t *topo) down() {
	for _, u := range t.undo {
		u()
	}
	t.undo = nil
	t.Down()
}

// interleaved is nettopo.Interleaved over -conns connections per sample.
func interleaved(targets []nettopo.Target) []nettopo.Percentiles {
	out, err := nettopo.Interleaved(targets, *conns)
	if err != nil {
		fail(err)
	}
	return out
}
