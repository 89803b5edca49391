package cni_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/netlinkx"
	"github.com/weftnet/weft/internal/testutil"
)

// execPlugin runs weft-cni directly in the node namespace, as a runtime would.
func (n *node) execPlugin(cmd, containerID, netns, stdin string, extraEnv ...string) (string, *types.Error) {
	n.t.Helper()
	c := n.ns.Command(filepath.Join(testutil.Binaries(n.t), "weft-cni"))
	c.Stdin = strings.NewReader(stdin)
	c.Env = append(os.Environ(), "CNI_COMMAND="+cmd, "CNI_CONTAINERID="+containerID, "CNI_NETNS="+netns,
		"CNI_IFNAME=eth0", "CNI_PATH="+testutil.Binaries(n.t)+":/usr/lib/cni")
	c.Env = append(c.Env, extraEnv...)
	var out bytes.Buffer
	c.Stdout = &out
	err := c.Run()
	if err == nil {
		return out.String(), nil
	}
	var e types.Error
	if jerr := json.Unmarshal(out.Bytes(), &e); jerr != nil {
		n.t.Fatalf("%s failed (%v) without a JSON error on stdout: %q", cmd, err, out.String())
	}
	return out.String(), &e
}

func TestErrorCodes(t *testing.T) {
	n := newNode(t, "10.80.0.0/29")
	p, _ := n.pod("x")
	sock := n.weftd.Socket()
	cases := []struct {
		name string
		conf string
		code uint
		msg  string
	}{
		{"malformed JSON", `{"cniVersion":"1.1.0","name":"w","type":"weft-cni"`, 6, "unexpected end"},
		{"wrong type", `{"cniVersion":"1.1.0","name":"w","type":"weft-cni","mtu":"big"}`, 6, `"mtu"`},
		{"unknown mode", `{"cniVersion":"1.1.0","name":"w","type":"weft-cni","mode":"vxlan"}`, 7, "mode"},
		{"misspelt key", `{"cniVersion":"1.1.0","name":"w","type":"weft-cni","brigde":"x"}`, 7, "brigde"},
		{"bad subnet", `{"cniVersion":"1.1.0","name":"w","type":"weft-cni","ipam":{"type":"weft-cni","ranges":[[{"subnet":"10.0.0.0/33"}]]}}`, 7, "10.0.0.0/33"},
		{"host bits", `{"cniVersion":"1.1.0","name":"w","type":"weft-cni","ipam":{"type":"weft-cni","ranges":[[{"subnet":"10.0.0.5/24"}]]}}`, 7, "host bits"},
		{"mtu range", `{"cniVersion":"1.1.0","name":"w","type":"weft-cni","mtu":70000}`, 7, "mtu"},
		{"agent down", `{"cniVersion":"1.1.0","name":"w","type":"weft-cni","socket":"/nonexistent/weft.sock"}`, 11, "node contract"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, e := n.execPlugin("ADD", "x", p.Path, c.conf)
			if e == nil {
				t.Fatal("ADD succeeded")
			}
			if e.Code != c.code || !strings.Contains(e.Msg, c.msg) {
				t.Fatalf("got code %d %q, want code %d mentioning %q", e.Code, e.Msg, c.code, c.msg)
			}
		})
	}

	t.Run("pool exhausted", func(t *testing.T) {
		conf := `{"cniVersion":"1.1.0","name":"w","type":"weft-cni","socket":"` + sock + `"}`
		// 10.80.0.0/29: gateway .1, pods .2-.6.
		for i := range 5 {
			q := testutil.NewNS(t, "full")
			if _, e := n.execPlugin("ADD", "full"+string(rune('a'+i)), q.Path, conf); e != nil {
				t.Fatalf("ADD %d: %v", i, e)
			}
		}
		_, e := n.execPlugin("ADD", "one-too-many", p.Path, conf)
		if e == nil || e.Code != 100 || !strings.Contains(e.Msg, "exhausted") {
			t.Fatalf("got %+v, want code 100 'exhausted'", e)
		}
		if allocs, _ := n.weftd.Allocations(); len(allocs) != 5 {
			t.Fatalf("%d allocations after the failed ADD, want 5", len(allocs))
		}
	})

	t.Run("status", func(t *testing.T) {
		conf := `{"cniVersion":"1.1.0","name":"w","type":"weft-cni","socket":"` + sock + `"}`
		if _, e := n.execPlugin("STATUS", "", "", conf); e != nil {
			t.Fatalf("STATUS with weftd up: %v", e)
		}
		n.weftd.Stop()
		defer n.weftd.Start()
		_, e := n.execPlugin("STATUS", "", "", conf)
		if e == nil || e.Code != 50 {
			t.Fatalf("STATUS with weftd down: %+v, want code 50", e)
		}
		_, e = n.execPlugin("ADD", "down", p.Path, conf)
		if e == nil || e.Code != 11 {
			t.Fatalf("ADD with weftd down: %+v, want code 11", e)
		}
	})
}

func TestFailedAddRollsBack(t *testing.T) {
	n := newNode(t, "10.81.0.0/24")
	list := n.conflist("1.1.0", "weft", `"mode":"bridge"`)
	p, rt := n.pod("rb")
	// An eth0 already in the pod makes the plumbing fail after the address was allocated.
	h := p.Handle(t)
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "other0"}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.add(list, rt); err == nil {
		t.Fatal("ADD into a pod that already has eth0 succeeded")
	}
	if allocs, _ := n.weftd.Allocations(); len(allocs) != 0 {
		t.Errorf("failed ADD kept its allocation: %v", allocs)
	}
	links, _ := netlinkx.Retry(n.ns.Handle(t).LinkList)
	for _, l := range links {
		if l.Type() == "veth" {
			t.Errorf("failed ADD left veth %s on the node", l.Attrs().Name)
		}
	}
	if _, err := h.LinkByName("other0"); err != nil {
		t.Errorf("failed ADD disturbed the pod's own eth0")
	}
}

func TestDelIsIdempotentWithoutNetnsOrPrevResult(t *testing.T) {
	n := newNode(t, "10.82.0.0/24")
	sock := n.weftd.Socket()
	conf := `{"cniVersion":"1.1.0","name":"w","type":"weft-cni","socket":"` + sock + `"}`
	p, _ := n.pod("d1")
	if _, e := n.execPlugin("ADD", "d1", p.Path, conf); e != nil {
		t.Fatal(e)
	}
	// CRI's second DEL: empty netns, no prevResult.
	for i := range 2 {
		if _, e := n.execPlugin("DEL", "d1", "", conf); e != nil {
			t.Fatalf("DEL %d: %v", i, e)
		}
	}
	if allocs, _ := n.weftd.Allocations(); len(allocs) != 0 {
		t.Fatalf("allocations after DEL: %v", allocs)
	}
	// DEL of something never added.
	if _, e := n.execPlugin("DEL", "never", "/run/netns/does-not-exist", conf); e != nil {
		t.Fatalf("DEL of an unknown container: %v", e)
	}
	// DEL while weftd is down asks to try again rather than pretending.
	n.weftd.Kill()
	defer n.weftd.Start()
	if _, e := n.execPlugin("DEL", "d1", "", conf); e == nil || e.Code != 11 {
		t.Fatalf("DEL with weftd down: %+v, want code 11", e)
	}
}

func TestStaticAddressesAndMAC(t *testing.T) {
	n := newNode(t, "10.83.0.0/24,fd83::/64")
	list := n.conflist("1.1.0", "weft", `"mode":"bridge","capabilities":{"ips":true,"mac":true}`)

	_, rt := n.pod("s1")
	rt.Args = [][2]string{{"IgnoreUnknown", "1"}, {"IP", "10.83.0.50"}}
	r := n.mustAdd(list, rt)
	if got := podIPs(r)[0].String(); got != "10.83.0.50" {
		t.Errorf("CNI_ARGS IP=10.83.0.50 gave %s", got)
	}

	p2, rt2 := n.pod("s2")
	rt2.CapabilityArgs = map[string]any{"ips": []string{"10.83.0.60/24", "fd83::60/64"}, "mac": "02:00:00:aa:bb:cc"}
	r2 := n.mustAdd(list, rt2)
	if got := podIPs(r2); len(got) != 2 || got[0].String() != "10.83.0.60" || got[1].String() != "fd83::60" {
		t.Errorf("runtimeConfig.ips gave %v", got)
	}
	l, err := p2.Handle(t).LinkByName("eth0")
	if err != nil || l.Attrs().HardwareAddr.String() != "02:00:00:aa:bb:cc" {
		t.Errorf("runtimeConfig.mac not applied: %v %v", l, err)
	}

	_, rt3 := n.pod("s3")
	rt3.Args = [][2]string{{"IgnoreUnknown", "1"}, {"IP", "10.83.0.50"}}
	_, err = n.add(list, rt3)
	if cniCode(err) != 101 {
		t.Errorf("a taken static address: got %v, want code 101", err)
	}
}

func TestDelegatedHostLocalIPAM(t *testing.T) {
	n := newNode(t, "10.84.0.0/24")
	dataDir := t.TempDir()
	list := n.conflist("1.0.0", "hl", `"mode":"bridge","bridge":"weftbr9","ipam":{"type":"host-local","dataDir":"`+dataDir+`","ranges":[[{"subnet":"10.85.0.0/24"}]]}`)
	p1, rt1 := n.pod("h1")
	p2, rt2 := n.pod("h2")
	r1 := n.mustAdd(list, rt1)
	r2 := n.mustAdd(list, rt2)
	if podIPs(r1)[0].String() != "10.85.0.2" {
		t.Fatalf("host-local address %v", podIPs(r1))
	}
	ping(t, p1, podIPs(r2)[0])
	ping(t, p2, podIPs(r1)[0])
	if err := n.check(list, rt1); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	for _, rt := range []*libcni.RuntimeConf{rt1, rt2} {
		if err := n.del(list, rt); err != nil {
			t.Fatal(err)
		}
	}
	leases, _ := filepath.Glob(filepath.Join(dataDir, "hl", "10.*"))
	if len(leases) != 0 {
		t.Errorf("host-local leases left after DEL: %v", leases)
	}
}

func TestWeftIPAMUnderReferenceBridge(t *testing.T) {
	n := newNode(t, "10.86.0.0/24")
	raw := `{"cniVersion":"1.0.0","name":"refbr","plugins":[{"type":"bridge","bridge":"refbr0","isGateway":true,"hairpinMode":true,
	  "ipam":{"type":"weft-cni","socket":"` + n.weftd.Socket() + `","ranges":[[{"subnet":"10.87.0.0/24","rangeStart":"10.87.0.100"}]],"exclude":["10.87.0.101"]}}]}`
	list, err := libcni.ConfListFromBytes([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	p1, rt1 := n.pod("r1")
	p2, rt2 := n.pod("r2")
	r1 := n.mustAdd(list, rt1)
	r2 := n.mustAdd(list, rt2)
	if a, b := podIPs(r1)[0].String(), podIPs(r2)[0].String(); a != "10.87.0.100" || b != "10.87.0.102" {
		t.Fatalf("addresses %s %s, want 10.87.0.100 and 10.87.0.102 (101 excluded)", a, b)
	}
	ping(t, p1, podIPs(r2)[0])
	ping(t, p2, podIPs(r1)[0])
	if err := n.check(list, rt1); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	for _, rt := range []*libcni.RuntimeConf{rt1, rt2} {
		if err := n.del(list, rt); err != nil {
			t.Fatal(err)
		}
	}
	if allocs, _ := n.weftd.Allocations(); len(allocs) != 0 {
		t.Fatalf("allocations after DEL: %v", allocs)
	}
}

func TestOlderSpecVersions(t *testing.T) {
	n := newNode(t, "10.88.0.0/24")
	for _, v := range []string{"0.3.1", "0.4.0", "1.0.0"} {
		t.Run(v, func(t *testing.T) {
			list := n.conflist(v, "v"+strings.ReplaceAll(v, ".", ""), `"mode":"bridge"`)
			p1, rt1 := n.pod("v1")
			_, rt2 := n.pod("v2")
			n.mustAdd(list, rt1)
			r2 := n.mustAdd(list, rt2)
			ping(t, p1, podIPs(r2)[0])
			if v != "0.3.1" {
				if err := n.check(list, rt1); err != nil {
					t.Errorf("CHECK: %v", err)
				}
			}
			_ = n.del(list, rt1)
			_ = n.del(list, rt2)
		})
	}
	t.Run("cniVersions picks the newest supported", func(t *testing.T) {
		raw := `{"cniVersion":"0.4.0","cniVersions":["0.4.0","1.1.0","9.9.9"],"name":"multi","plugins":[{"type":"weft-cni","socket":"` + n.weftd.Socket() + `"}]}`
		list, err := libcni.ConfListFromBytes([]byte(raw))
		if err != nil {
			t.Fatal(err)
		}
		_, rt := n.pod("m1")
		r := n.mustAdd(list, rt)
		if r.CNIVersion != "1.1.0" {
			t.Errorf("result version %s, want 1.1.0", r.CNIVersion)
		}
		_ = n.del(list, rt)
	})
}

func TestWeftdRestartAdoptsRunningPods(t *testing.T) {
	n := newNode(t, "10.89.0.0/24")
	list := n.conflist("1.1.0", "weft", `"mode":"bridge"`)
	p1, rt1 := n.pod("a1")
	_, rt2 := n.pod("a2")
	r1 := n.mustAdd(list, rt1)
	r2 := n.mustAdd(list, rt2)
	// A pod whose namespace vanished while weftd was down is swept at start.
	gone, rt3 := n.pod("a3")
	n.mustAdd(list, rt3)

	n.weftd.Kill()
	if err := testutil.DeleteNS(gone.Name); err != nil {
		t.Fatal(err)
	}
	n.weftd.Restart(syscall.SIGKILL)

	ping(t, p1, podIPs(r2)[0])
	again := n.mustAdd(list, rt1)
	if podIPs(again)[0] != podIPs(r1)[0] {
		t.Errorf("a repeated ADD after restart got %v, first got %v", podIPs(again), podIPs(r1))
	}
	allocs, _ := n.weftd.Allocations()
	if len(allocs) != 2 || strings.Contains(strings.Join(allocs, " "), "a3") {
		t.Errorf("after restart: %v, want a1 and a2 only", allocs)
	}
}
