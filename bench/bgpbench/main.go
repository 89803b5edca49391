// Command bgpbench measures how fast a node's BGP speaker turns learned routes into kernel
// routes: weftd (fabric bgp, its embedded GoBGP and netlink route installer) against BIRD 2
// with its kernel protocol (Calico's design), on the same topology, in turns. A synthetic
// peer (GoBGP, in a namespace of its own) announces N prefixes at once; the time runs from
// the announcement until the node's kernel holds all N (counted from netlink route
// events, not by dumping the table), then again for their withdrawal. It also measures
// one prefix's way into the kernel (the "new node becomes routable" latency).
//
// Run by bench/bgp.sh, which installs BIRD and builds weft. Needs root; it creates two
// namespaces of its own and removes them.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/bgp"
	wnetns "github.com/weftnet/weft/internal/netns"
)

var (
	peerAddr = netip.MustParseAddr("192.168.77.1")
	nodeAddr = netip.MustParseAddr("192.168.77.2")
)

const (
	peerASN = 65000
	nodeASN = 64512
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "peer" {
		runPeer(os.Args[2:])
		return
	}
	n := flag.Int("n", 10000, "prefixes the peer announces")
	passes := flag.Int("passes", 3, "turns per speaker")
	bin := flag.String("bin", "bin", "folder with weft and weftd")
	peerCPU := flag.String("peer-cpu", "1", "CPU of the synthetic peer")
	nodeCPU := flag.String("node-cpu", "0", "CPU of the node's speaker")
	keep := flag.Bool("keep", false, "keep the speakers' logs (the folder is printed)")
	flag.Parse()
	b := &bench{n: *n, bin: *bin, peerCPU: *peerCPU, nodeCPU: *nodeCPU, keep: *keep}
	if err := b.setup(); err != nil {
		b.teardown()
		log.Fatal(err)
	}
	defer b.teardown()
	// Per speaker and pass: install, withdraw and one-prefix times, then the speaker's CPU
	// time (every thread's) during the install and during the withdrawal.
	results := map[string][][5]time.Duration{}
	for pass := 0; pass < *passes; pass++ {
		for _, sp := range []string{"weft", "bird"} {
			r, err := b.turn(sp)
			if err != nil {
				b.teardown()
				log.Fatalf("%s: %v", sp, err)
			}
			fmt.Printf("pass %d %-5s install %d: %v  withdraw: %v  one prefix: %v  (CPU: install %v, withdraw %v)\n", pass+1, sp, *n,
				r[0].Round(time.Millisecond), r[1].Round(time.Millisecond), r[2].Round(100*time.Microsecond), r[3].Round(time.Millisecond), r[4].Round(time.Millisecond))
			results[sp] = append(results[sp], r)
		}
	}
	fmt.Println()
	for i, what := range []string{"install", "withdraw", "one prefix", "install CPU", "withdraw CPU"} {
		w, bd := median(results["weft"], i), median(results["bird"], i)
		lo, hi := spread(results["weft"], results["bird"], i)
		fmt.Printf("%-12s weft %v  bird %v  weft/bird %.2fx (%.2f-%.2f)\n", what, w.Round(100*time.Microsecond), bd.Round(100*time.Microsecond), float64(w)/float64(bd), lo, hi)
	}
}

// cpuTime is the time a process's threads have run (their schedstat), in nanoseconds.
func cpuTime(pid int) time.Duration {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	var total time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		if f := strings.Fields(string(b)); len(f) > 0 {
			ns, _ := strconv.ParseInt(f[0], 10, 64)
			total += time.Duration(ns)
		}
	}
	return total
}

type bench struct {
	n                int
	bin, dir         string
	peerCPU, nodeCPU string
	peerNS, nodeNS   string
	peer             *exec.Cmd
	peerIn           *bufio.Writer
	peerOut          *bufio.Scanner
	keep             bool
}

func (b *bench) setup() error {
	var err error
	if b.dir, err = os.MkdirTemp("", "bgpbench"); err != nil {
		return err
	}
	tag := fmt.Sprint(os.Getpid())
	if b.peerNS, err = wnetns.Create("bgpb-peer-" + tag); err != nil {
		return err
	}
	if b.nodeNS, err = wnetns.Create("bgpb-node-" + tag); err != nil {
		return err
	}
	ph, err := handleAt(b.peerNS)
	if err != nil {
		return err
	}
	defer ph.Close()
	nf, err := os.Open(b.nodeNS)
	if err != nil {
		return err
	}
	defer nf.Close()
	if err := ph.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "up0"}, PeerName: "up0", PeerNamespace: netlink.NsFd(nf.Fd())}); err != nil {
		return err
	}
	nh, err := handleAt(b.nodeNS)
	if err != nil {
		return err
	}
	defer nh.Close()
	for _, x := range []struct {
		h *netlink.Handle
		a netip.Addr
	}{{ph, peerAddr}, {nh, nodeAddr}} {
		l, err := x.h.LinkByName("up0")
		if err != nil {
			return err
		}
		if err := x.h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: x.a.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
			return err
		}
		if err := x.h.LinkSetUp(l); err != nil {
			return err
		}
		lo, _ := x.h.LinkByName("lo")
		_ = x.h.LinkSetUp(lo)
	}
	self, _ := os.Executable()
	b.peer = exec.Command("nsenter", "--net="+b.peerNS, "--", "taskset", "-c", b.peerCPU, self, "peer", "-n", fmt.Sprint(b.n))
	in, _ := b.peer.StdinPipe()
	out, _ := b.peer.StdoutPipe()
	b.peer.Stderr = os.Stderr
	if err := b.peer.Start(); err != nil {
		return err
	}
	b.peerIn, b.peerOut = bufio.NewWriter(in), bufio.NewScanner(out)
	return nil
}

func (b *bench) teardown() {
	if b.peer != nil && b.peer.Process != nil {
		_ = b.peer.Process.Kill()
		_ = b.peer.Wait()
	}
	for _, ns := range []string{b.peerNS, b.nodeNS} {
		if ns != "" {
			_ = wnetns.Delete(filepath.Base(ns))
		}
	}
	if b.dir != "" && !b.keep {
		_ = os.RemoveAll(b.dir)
	} else if b.dir != "" {
		fmt.Println("logs in", b.dir)
	}
}

// ask sends the peer a command and waits for its "ok".
func (b *bench) ask(cmd string) error {
	fmt.Fprintln(b.peerIn, cmd)
	if err := b.peerIn.Flush(); err != nil {
		return err
	}
	if !b.peerOut.Scan() {
		return fmt.Errorf("peer gone")
	}
	if l := b.peerOut.Text(); l != "ok" {
		return fmt.Errorf("peer: %s", l)
	}
	return nil
}

// turn starts one speaker in the node namespace, measures, and stops it.
func (b *bench) turn(speaker string) ([5]time.Duration, error) {
	var res [5]time.Duration
	stop, proto, pid, err := b.startSpeaker(speaker)
	if err != nil {
		return res, err
	}
	defer stop()
	if err := b.ask("wait-established"); err != nil {
		return res, err
	}
	time.Sleep(500 * time.Millisecond) // End-of-RIB exchanged, speaker idle
	watch, err := b.watchRoutes(proto)
	if err != nil {
		return res, err
	}
	defer watch.close()
	start, cpu := time.Now(), cpuTime(pid)
	if err := b.ask("announce-all"); err != nil {
		return res, err
	}
	if err := watch.until(b.n, 120*time.Second); err != nil {
		return res, err
	}
	res[0], res[3] = time.Since(start), cpuTime(pid)-cpu
	start, cpu = time.Now(), cpuTime(pid)
	if err := b.ask("withdraw-all"); err != nil {
		return res, err
	}
	if err := watch.until(0, 120*time.Second); err != nil {
		return res, err
	}
	res[1], res[4] = time.Since(start), cpuTime(pid)-cpu
	time.Sleep(200 * time.Millisecond)
	start = time.Now()
	if err := b.ask("announce-one"); err != nil {
		return res, err
	}
	if err := watch.until(1, 10*time.Second); err != nil {
		return res, err
	}
	res[2] = time.Since(start)
	return res, b.ask("withdraw-all")
}

// startSpeaker starts a speaker; its pid is the speaker's own (nsenter and taskset exec it).
func (b *bench) startSpeaker(speaker string) (stop func(), proto netlink.RouteProtocol, pid int, err error) {
	dir, err := os.MkdirTemp(b.dir, speaker)
	if err != nil {
		return nil, 0, 0, err
	}
	var cmd *exec.Cmd
	switch speaker {
	case "weft":
		store := "bolt://" + filepath.Join(dir, "store.db")
		weft := filepath.Join(b.bin, "weft")
		for _, args := range [][]string{
			{"cluster", "init", "--store", store, "--cluster-cidr", "10.0.0.0/8", "--node-prefix", "24", "--fabric", "bgp", "--asn", fmt.Sprint(nodeASN)},
			{"bgp", "peer", "add", "synth", "--address", peerAddr.String(), "--asn", fmt.Sprint(peerASN), "--store", store},
		} {
			if out, err := exec.Command(weft, args...).CombinedOutput(); err != nil {
				return nil, 0, 0, fmt.Errorf("weft %v: %v: %s", args, err, out)
			}
		}
		// The node's own block, away from the announced ones.
		_ = os.WriteFile(filepath.Join(dir, "lease.json"), []byte(`{"node":"n1","podCIDRs":["10.1.0.0/24"]}`), 0o600)
		cmd = exec.Command("nsenter", "--net="+b.nodeNS, "--", "taskset", "-c", b.nodeCPU, filepath.Join(b.bin, "weftd"),
			"--node-name", "n1", "--store", store, "--underlay-dev", "up0", "--state-dir", dir, "--run-dir", filepath.Join(dir, "run"),
			"--proxy", "none", "--dns-upstream", "none", "--fastpath=false", "--log-level", "warn")
		cmd.Args = append(cmd.Args, strings.Fields(os.Getenv("WEFTD_ARGS"))...)
		proto = 0x79
	case "bird":
		conf := fmt.Sprintf(`router id %s;
protocol device { }
protocol kernel { merge paths on; ipv4 { import none; export where source = RTS_BGP; }; }
protocol bgp synth {
  local %s as %d; neighbor %s as %d;
  hold time 9; keepalive time 3; connect retry time 1;
  ipv4 { import where net ~ [ 10.0.0.0/8+ ]; export none; };
}
`, nodeAddr, nodeAddr, nodeASN, peerAddr, peerASN)
		if err := os.WriteFile(filepath.Join(dir, "bird.conf"), []byte(conf), 0o644); err != nil {
			return nil, 0, 0, err
		}
		cmd = exec.Command("nsenter", "--net="+b.nodeNS, "--", "taskset", "-c", b.nodeCPU, "bird", "-f", "-c", filepath.Join(dir, "bird.conf"), "-s", filepath.Join(dir, "bird.ctl"))
		proto = unix.RTPROT_BIRD
	}
	logf, _ := os.Create(filepath.Join(b.dir, speaker+".log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, 0, 0, err
	}
	return func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logf.Close()
		// Start the next speaker from an empty table (weftd leaves its routes on purpose).
		if h, err := handleAt(b.nodeNS); err == nil {
			rs, _ := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: proto}, netlink.RT_FILTER_PROTOCOL)
			for i := range rs {
				_ = h.RouteDel(&rs[i])
			}
			h.Close()
		}
	}, proto, cmd.Process.Pid, nil
}

// routeWatch counts the node's routes of one protocol from netlink events.
type routeWatch struct {
	ch   chan netlink.RouteUpdate
	done chan struct{}
	have map[string]bool
	prot netlink.RouteProtocol
}

func (b *bench) watchRoutes(proto netlink.RouteProtocol) (*routeWatch, error) {
	h, err := netns.GetFromPath(b.nodeNS)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	w := &routeWatch{ch: make(chan netlink.RouteUpdate, 65536), done: make(chan struct{}), have: map[string]bool{}, prot: proto}
	if err := netlink.RouteSubscribeWithOptions(w.ch, w.done, netlink.RouteSubscribeOptions{Namespace: &h, ReceiveBufferSize: 64 << 20}); err != nil {
		return nil, err
	}
	return w, nil
}

func (w *routeWatch) close() { close(w.done) }

func (w *routeWatch) until(n int, limit time.Duration) error {
	deadline := time.After(limit)
	for len(w.have) != n {
		select {
		case u := <-w.ch:
			if u.Protocol != w.prot || u.Dst == nil {
				continue
			}
			if u.Type == unix.RTM_NEWROUTE {
				w.have[u.Dst.String()] = true
			} else if u.Type == unix.RTM_DELROUTE {
				delete(w.have, u.Dst.String())
			}
		case <-deadline:
			return fmt.Errorf("%d routes after %v, want %d", len(w.have), limit, n)
		}
	}
	return nil
}

func handleAt(path string) (*netlink.Handle, error) {
	h, err := netns.GetFromPath(path)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	return netlink.NewHandleAt(h)
}

// runPeer is the synthetic peer: GoBGP (through weft's wrapper) in the peer namespace,
// driven line by line on stdin.
func runPeer(args []string) {
	fs := flag.NewFlagSet("peer", flag.ExitOnError)
	n := fs.Int("n", 10000, "prefixes")
	_ = fs.Parse(args)
	ctx := context.Background()
	sp, err := bgp.Start(ctx, bgp.Config{ASN: peerASN, RouterID: peerAddr, ListenAddrs: []netip.Addr{peerAddr},
		Accept: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, Export: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}, nil)
	if err != nil {
		log.Fatal(err)
	}
	if err := sp.SetPeers(ctx, []bgp.Peer{{Name: "node", Address: nodeAddr, ASN: nodeASN, LocalAddress: peerAddr}}); err != nil {
		log.Fatal(err)
	}
	// The i-th /24 of 10.128.0.0/9: inside the node's accept filter, away from its block.
	if *n > 128*256 {
		log.Fatalf("-n %d: at most %d", *n, 128*256)
	}
	all := make([]bgp.Announcement, *n)
	for i := range all {
		all[i] = bgp.Announcement{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(128 + i/256), byte(i % 256), 0}), 24), NextHop: peerAddr}
	}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		var err error
		switch in.Text() {
		case "wait-established":
			for {
				ps, _ := sp.Peers(ctx)
				if len(ps) == 1 && ps[0].State == "established" {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
		case "announce-all":
			err = sp.Announce(ctx, all)
		case "announce-one":
			err = sp.Announce(ctx, all[:1])
		case "withdraw-all":
			err = sp.Announce(ctx, nil)
		default:
			err = fmt.Errorf("unknown command %q", in.Text())
		}
		if err != nil {
			fmt.Println(strings.ReplaceAll(err.Error(), "\n", " "))
		} else {
			fmt.Println("ok")
		}
	}
}

func median(rs [][5]time.Duration, i int) time.Duration {
	v := make([]time.Duration, len(rs))
	for j, r := range rs {
		v[j] = r[i]
	}
	sort.Slice(v, func(a, b int) bool { return v[a] < v[b] })
	return v[len(v)/2]
}

// spread is the lowest and highest per-pass ratio.
func spread(w, b [][5]time.Duration, i int) (lo, hi float64) {
	lo, hi = 1e9, 0
	for j := range w {
		r := float64(w[j][i]) / float64(b[j][i])
		lo, hi = min(lo, r), max(hi, r)
	}
	return lo, hi
}
