package cni_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/vishvananda/netlink"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/probe"
	"github.com/weftnet/weft/internal/testutil"
)

// underlayWithEtcd makes an underlay namespace with a bridge (192.168.60.254/24) and
// Debian's etcd listening there, and returns a function that plugs a node into it.
func underlayWithEtcd(t *testing.T) (testutil.NS, string, func(node testutil.NS, ip string)) {
	etcdBin := testutil.RequireTool(t, "etcd")
	u := testutil.NewNS(t, "und")
	h := u.Handle(t)
	if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0", MTU: 1500}}); err != nil {
		t.Fatal(err)
	}
	br, _ := h.LinkByName("br0")
	a, _ := netlink.ParseAddr("192.168.60.254/24")
	_ = h.AddrAdd(br, a)
	_ = h.LinkSetUp(br)
	dir := t.TempDir()
	cmd := u.Command(etcdBin, "--name", "weft", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", "http://192.168.60.254:2379", "--advertise-client-urls", "http://192.168.60.254:2379",
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "weft=http://127.0.0.1:2380", "--listen-metrics-urls", "http://127.0.0.1:2381")
	log, _ := os.Create(filepath.Join(dir, "etcd.log"))
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		log.Close()
	})
	seq := 0
	plug := func(node testutil.NS, ip string) {
		seq++
		host := fmt.Sprintf("p%d", seq)
		nh := node.Handle(t)
		if err := nh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "uplink", MTU: 1500}, PeerName: host, PeerMTU: 1500}); err != nil {
			t.Fatal(err)
		}
		peer, _ := nh.LinkByName(host)
		f, _ := os.Open(u.Path)
		if err := nh.LinkSetNsFd(peer, int(f.Fd())); err != nil {
			t.Fatal(err)
		}
		f.Close()
		hp, _ := h.LinkByName(host)
		_ = h.LinkSetMaster(hp, br)
		_ = h.LinkSetUp(hp)
		l, _ := nh.LinkByName("uplink")
		ad, _ := netlink.ParseAddr(ip + "/24")
		_ = nh.AddrAdd(l, ad)
		_ = nh.LinkSetUp(l)
	}
	return u, "etcd://192.168.60.254:2379", plug
}

func weftCLI(t *testing.T, ns testutil.NS, args ...string) string {
	t.Helper()
	out, err := ns.Command(filepath.Join(testutil.Binaries(t), "weft"), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("weft %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// TestClusterOverEtcd: two weftds lease their pod CIDRs from etcd, find each other and
// build the VXLAN fabric; pods on different nodes talk; a weftd killed with SIGKILL and
// restarted keeps its block and disturbs no traffic.
func TestClusterOverEtcd(t *testing.T) {
	testutil.RequireRoot(t)
	u, storeURL, plug := underlayWithEtcd(t)
	for i := 0; ; i++ {
		if _, err := u.Command(filepath.Join(testutil.Binaries(t), "weft"), "cluster", "init", "--store", storeURL,
			"--cluster-cidr", "10.130.0.0/16", "--fabric", "vxlan").CombinedOutput(); err == nil {
			break
		} else if i > 50 {
			t.Fatal("weft cluster init never succeeded (etcd not up?)")
		}
		time.Sleep(200 * time.Millisecond)
	}
	bin := testutil.Binaries(t)
	var nodes []*node
	var pods []testutil.NS
	var ips []netip.Addr
	for i, ip := range []string{"192.168.60.1", "192.168.60.2"} {
		n := &node{t: t, ns: testutil.NewNS(t, "cn")}
		plug(n.ns, ip)
		n.weftd = testutil.StartWeftd(t, n.ns, "", "--store", storeURL, "--underlay-dev", "uplink")
		n.cni = libcni.NewCNIConfigWithCacheDir([]string{bin}, t.TempDir(), nil)
		list := n.conflist("1.1.0", "weft", `"mode":"bridge"`)
		p, rt := n.pod(fmt.Sprintf("c%d", i))
		r := n.mustAdd(list, rt)
		nodes, pods, ips = append(nodes, n), append(pods, p), append(ips, podIPs(r)[0])
	}
	if l, _ := pods[0].Handle(t).LinkByName("eth0"); l.Attrs().MTU != 1450 {
		t.Errorf("pod MTU %d, want 1450", l.Attrs().MTU)
	}
	// Each node programs the other once it sees it in the store.
	for _, n := range nodes {
		deadline := time.Now().Add(10 * time.Second)
		for {
			routes, _ := n.ns.Handle(t).RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: 0x78}, netlink.RT_FILTER_PROTOCOL)
			if len(routes) == 1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never got a route to its peer", n.ns.Name)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	ping(t, pods[0], ips[1])
	ping(t, pods[1], ips[0])
	if t.Failed() {
		for _, n := range nodes {
			for _, args := range [][]string{{"ip", "-d", "link", "show", "weft.vxlan"}, {"ip", "route"}, {"ip", "neigh"}, {"bridge", "fdb", "show", "dev", "weft.vxlan"}, {"ip", "-s", "link"}} {
				out, _ := n.ns.Command(args[0], args[1:]...).CombinedOutput()
				t.Logf("%s: %v\n%s", n.ns.Name, args, out)
			}
		}
	}

	var status struct {
		Nodes  []v1.Node
		Leases []v1.Lease
	}
	if err := json.Unmarshal([]byte(weftCLI(t, u, "cluster", "status", "--store", storeURL, "-o", "json")), &status); err != nil {
		t.Fatal(err)
	}
	if len(status.Nodes) != 2 || len(status.Leases) != 2 || status.Leases[0].PodCIDRs[0] == status.Leases[1].PodCIDRs[0] {
		t.Fatalf("cluster status: %+v", status)
	}
	before := status.Leases
	// Each weftd publishes its pods for the whole cluster to see.
	published := func() map[netip.Addr]string {
		var st struct{ Pods []v1.Pod }
		if err := json.Unmarshal([]byte(weftCLI(t, u, "cluster", "status", "--store", storeURL, "-o", "json")), &st); err != nil {
			t.Fatal(err)
		}
		out := map[netip.Addr]string{}
		for _, p := range st.Pods {
			for _, ip := range p.IPs {
				out[ip] = p.Node + "/" + p.ContainerID
			}
		}
		return out
	}
	if got := published(); len(got) != 2 || got[ips[0]] != nodes[0].ns.Name+"/c0" || got[ips[1]] != nodes[1].ns.Name+"/c1" {
		t.Errorf("published pods %v, want %s on %s and %s on %s", got, ips[0], nodes[0].ns.Name, ips[1], nodes[1].ns.Name)
	}

	// A continuous 10 ms ping across the nodes while node 2's weftd is killed and restarted.
	pinger := probe.StartPinger(pods[0].Path, ips[1], 10*time.Millisecond)
	time.Sleep(200 * time.Millisecond)
	nodes[1].weftd.Restart(syscall.SIGKILL)
	time.Sleep(500 * time.Millisecond)
	sent, lost := pinger.Stop()
	if lost > 0 {
		t.Errorf("lost %d of %d pings while weftd restarted", lost, sent)
	}
	if err := json.Unmarshal([]byte(weftCLI(t, u, "cluster", "status", "--store", storeURL, "-o", "json")), &status); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, l := range status.Leases {
		got[l.Node] = fmt.Sprint(l.PodCIDRs)
	}
	for _, l := range before {
		if got[l.Node] != fmt.Sprint(l.PodCIDRs) {
			t.Errorf("%s's block changed across the restart: %s → %s", l.Node, fmt.Sprint(l.PodCIDRs), got[l.Node])
		}
	}
	// A DEL withdraws the pod from the cluster within a second.
	list := nodes[0].conflist("1.1.0", "weft", `"mode":"bridge"`)
	if err := nodes[0].del(list, &libcni.RuntimeConf{ContainerID: "c0", NetNS: pods[0].Path, IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Second)
	for {
		got := published()
		if _, ok := got[ips[0]]; !ok && len(got) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod still published a second after its DEL: %v", got)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
