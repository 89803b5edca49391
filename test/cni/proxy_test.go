package cni_test

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"testing"
	"time"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/probe"
	"github.com/weftnet/weft/internal/proxy"
	"github.com/weftnet/weft/internal/proxy/nftproxy"
	"github.com/weftnet/weft/internal/testutil"
)

// proxyNode is a node with backend pods and a client pod, and the nftables proxy driven
// from the test in the node's namespace.
type proxyNode struct {
	*node
	px       *nftproxy.Proxy
	backends []v1.Pod
	nsOf     map[string]testutil.NS
	client   testutil.NS
	clientIP []netip.Addr
}

func newProxyNode(t *testing.T, weftdArgs ...string) *proxyNode {
	n := newNode(t, "10.103.0.0/24,fd03::/64", weftdArgs...)
	list := n.conflist("1.1.0", "weft", `"mode":"bridge"`)
	pn := &proxyNode{node: n, px: nftproxy.New(), nsOf: map[string]testutil.NS{}}
	for i := 1; i <= 3; i++ {
		name := fmt.Sprintf("web%d", i)
		p, rt := n.pod(name)
		r := n.mustAdd(list, rt)
		pod := v1.Pod{Name: name, Namespace: "default", Node: "n", ContainerID: name, IPs: podIPs(r), Labels: map[string]string{"app": "web"}, Ready: true}
		pn.backends = append(pn.backends, pod)
		pn.nsOf[name] = p
		for _, addr := range []string{"[::]:8080"} { // dual-stack sockets
			ln, err := probe.ListenTCP(p.Path, addr)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			go probe.Whoami(ln, name)
			pc, err := probe.ListenUDP(p.Path, addr)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { pc.Close() })
			go probe.WhoamiUDP(pc, name)
		}
	}
	c, rt := n.pod("client")
	pn.client, pn.clientIP = c, podIPs(n.mustAdd(list, rt))
	t.Cleanup(func() { _ = testutil.RunIn(n.ns.Path, nftproxy.Delete) })
	if err := testutil.RunIn(n.ns.Path, nftproxy.PrepareNode); err != nil {
		t.Fatal(err)
	}
	return pn
}

func (pn *proxyNode) sync(t *testing.T, svcs []v1.Service, pods []v1.Pod) nftproxy.Stats {
	t.Helper()
	var st nftproxy.Stats
	err := testutil.RunIn(pn.ns.Path, func() error {
		var err error
		st, err = pn.px.Sync(proxy.Compute(proxy.Node{Name: "n"}, svcs, pods))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func webService(name string, vips ...string) v1.Service {
	s := v1.Service{Name: name, Namespace: "default", Selector: map[string]string{"app": "web"},
		Ports: []v1.ServicePort{{Name: "tcp", Protocol: "TCP", Port: 80, TargetPort: 8080}, {Name: "udp", Protocol: "UDP", Port: 53, TargetPort: 8080}}}
	for _, v := range vips {
		s.ClusterIPs = append(s.ClusterIPs, netip.MustParseAddr(v))
	}
	s.ClusterIP = s.ClusterIPs[0].String()
	s.Defaults()
	return s
}

// TestServiceProxyNftables: ClusterIPs over TCP and UDP, both families, spread, hairpin,
// affinity, refusal without endpoints, endpoint removal, incremental syncs.
func TestServiceProxyNftables(t *testing.T) {
	pn := newProxyNode(t, "--fastpath=false")
	svc := webService("web", "10.96.0.50", "fd96::50")
	st := pn.sync(t, []v1.Service{svc}, pn.backends)
	if !st.Full || st.Ports != 4 {
		t.Fatalf("first sync %+v", st)
	}
	for _, vip := range svc.ClusterIPs {
		if got, err := probe.AskTCP(pn.client.Path, netip.AddrPortFrom(vip, 80), 2*time.Second); err != nil || got == "" {
			t.Errorf("TCP %s: %q %v", vip, got, err)

		}
		if got, err := probe.AskUDP(pn.client.Path, netip.AddrPortFrom(vip, 53), 2*time.Second); err != nil || got == "" {
			t.Errorf("UDP %s: %q %v", vip, got, err)
		}
	}
	// Spread: 600 connections over 3 backends, each 20–47 %.
	vip := netip.AddrPortFrom(svc.ClusterIPs[0], 80)
	counts := map[string]int{}
	for range 600 {
		got, err := probe.AskTCP(pn.client.Path, vip, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		counts[probe.Name(got)]++
	}
	for _, b := range pn.backends {
		if c := counts[b.Name]; c < 120 || c > 282 {
			t.Errorf("spread %v: %s got %d of 600", counts, b.Name, c)
		}
	}
	// Hairpin: a backend reaches its own service, whichever backend answers.
	for range 10 {
		if got, err := probe.AskTCP(pn.nsOf["web1"].Path, vip, 2*time.Second); err != nil || got == "" {
			t.Fatalf("hairpin: %q %v", got, err)
		}
	}

	// Affinity: 100 connections stick to one backend.
	aff := webService("sticky", "10.96.0.51")
	aff.SessionAffinity, aff.AffinityTimeout = v1.AffinityClientIP, 2
	st = pn.sync(t, []v1.Service{svc, aff}, pn.backends)
	if st.Full || st.Changed != 2 {
		t.Errorf("adding one service (2 ports, IPv4 only) sent %+v", st)
	}
	first := ""
	for i := range 100 {
		got, err := probe.AskTCP(pn.client.Path, netip.MustParseAddrPort("10.96.0.51:80"), 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = probe.Name(got)
		} else if probe.Name(got) != first {
			t.Fatalf("affinity broke after %d connections: %s then %s", i, first, got)
		}
	}

	// No endpoints: refused at once.
	empty := webService("empty", "10.96.0.52")
	empty.Selector = map[string]string{"app": "none"}
	pn.sync(t, []v1.Service{svc, aff, empty}, pn.backends)
	start := time.Now()
	_, err := probe.AskTCP(pn.client.Path, netip.MustParseAddrPort("10.96.0.52:80"), 2*time.Second)
	if !errors.Is(err, syscall.ECONNREFUSED) || time.Since(start) > 100*time.Millisecond {
		t.Errorf("no endpoints: %v after %v, want refused in under 100 ms", err, time.Since(start))
		for _, args := range [][]string{{"nft", "list", "table", "inet", "weft-svc"}, {"ip", "route"}, {"nft", "list", "ruleset"}} {
			out, _ := pn.ns.Command(args[0], args[1:]...).CombinedOutput()
			t.Logf("%v:\n%s", args, out)
		}
	}

	// Endpoint removal: web3 leaves; no new connection reaches it.
	st = pn.sync(t, []v1.Service{svc, aff, empty}, pn.backends[:2])
	if len(st.Removed) == 0 {
		t.Errorf("removing a backend reported no removed endpoints: %+v", st)
	}
	for range 100 {
		if got, _ := probe.AskTCP(pn.client.Path, vip, 2*time.Second); probe.Name(got) == "web3" {
			t.Fatal("a new connection reached a removed endpoint")
		}
	}
	// A restart of the proxy (new Proxy, full replace) keeps serving.
	pn.px = nftproxy.New()
	if st := pn.sync(t, []v1.Service{svc}, pn.backends); !st.Full {
		t.Errorf("fresh proxy did not replace the table: %+v", st)
	}
	if got, err := probe.AskTCP(pn.client.Path, vip, 2*time.Second); err != nil || got == "" {
		t.Errorf("after a full replace: %q %v", got, err)
	}
}
