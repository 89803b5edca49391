package dns

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"

	"github.com/weftnet/weft/internal/probe"
	"github.com/weftnet/weft/internal/testutil"
)

// TestForwardToUpstreamInNamespace: a node's server forwards names outside the cluster
// domain to an upstream resolver in another namespace, and answers its own zone itself.
func TestForwardToUpstreamInNamespace(t *testing.T) {
	testutil.RequireRoot(t)
	node, up := testutil.NewNS(t, "dnsn"), testutil.NewNS(t, "dnsu")
	upFd, err := vnetns.GetFromPath(up.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer upFd.Close()
	h := node.Handle(t)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("d%d", os.Getpid()%100000)}, PeerName: "up0", PeerNamespace: netlink.NsFd(upFd)}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	addr := func(h *netlink.Handle, name, cidr string) {
		l, err := h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := netlink.ParseAddr(cidr)
		if err := h.AddrAdd(l, a); err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	addr(h, veth.Name, "192.0.2.1/24")
	addr(up.Handle(t), "up0", "192.0.2.53/24")

	// The upstream, in its own namespace.
	var pc net.PacketConn
	if err := probe.InNS(up.Path, func() error {
		var err error
		pc, err = net.ListenPacket("udp", "192.0.2.53:53")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	upstream := &mdns.Server{PacketConn: pc, Handler: mdns.HandlerFunc(func(w mdns.ResponseWriter, req *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(req)
		rr, _ := mdns.NewRR(req.Question[0].Name + " 30 IN A 198.51.100.9")
		m.Answer = []mdns.RR{rr}
		_ = w.WriteMsg(m)
	})}
	go func() { _ = upstream.ActivateAndServe() }()
	defer upstream.Shutdown()

	// The node's server runs as weftd does: a whole process inside the node namespace, so
	// its sockets to the upstream leave from there too.
	listen := "127.0.0.1:5353"
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), serveEnv+"="+listen+"|192.0.2.53:53")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := probe.InNS(node.Path, cmd.Start); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	ask := func(name string) (*mdns.Msg, error) {
		var m *mdns.Msg
		var err error
		for range 50 {
			err = probe.InNS(node.Path, func() error {
				var e error
				m, _, e = (&mdns.Client{Timeout: time.Second}).Exchange(query(name, mdns.TypeA), listen)
				return e
			})
			if err == nil {
				return m, nil
			}
			time.Sleep(20 * time.Millisecond)
		}
		return m, err
	}
	if m, err := ask("www.example.net."); err != nil || len(m.Answer) != 1 || m.Authoritative {
		t.Fatalf("forwarded: %v %v", m, err)
	}
	if m, err := ask("web.shop.svc.cluster.local."); err != nil || len(m.Answer) != 1 || !m.Authoritative {
		t.Fatalf("own zone: %v %v", m, err)
	}
}

// serveEnv makes the test binary a node's DNS server (listen|upstream) instead of running
// tests: the namespace test starts it inside a node namespace.
const serveEnv = "WEFT_DNS_TEST_SERVE"

func TestMain(m *testing.M) {
	if spec := os.Getenv(serveEnv); spec != "" {
		listen, upstream, _ := strings.Cut(spec, "|")
		s := &Server{Upstreams: []string{upstream}}
		s.SetRecords(zone())
		if err := s.ListenAndServe(context.Background(), listen); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}
