package cni_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/weftnet/weft/internal/testutil"
)

// TestChaosNoLeaks runs 300 ADD/DEL operations while SIGKILLing the plugin or weftd at
// random points. A pod whose operation died is abandoned the way a runtime abandons a
// failed sandbox: its namespace is deleted and it is not listed as valid. After GC and a
// weftd restart, the allocations must equal the live attachments exactly.
func TestChaosNoLeaks(t *testing.T) {
	n := newNode(t, "10.90.0.0/24")
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("WEFT_CHAOS_SEED"); s != "" {
		fmt.Sscan(s, &seed)
	}
	t.Logf("WEFT_CHAOS_SEED=%d", seed)
	rng := rand.New(rand.NewPCG(seed, 42))
	conf := `{"cniVersion":"1.1.0","name":"chaos","type":"weft-cni","socket":"` + n.weftd.Socket() + `"}`
	plugin := filepath.Join(testutil.Binaries(t), "weft-cni")

	type pod struct {
		ns   testutil.NS
		cid  string
		live bool
	}
	const slots = 12
	pods := make([]*pod, slots)
	fresh := func(i, cycle int) *pod {
		ns, err := testutil.CreateNS(fmt.Sprintf("wt%d-chaos%d-%d", os.Getpid(), i, cycle))
		if err != nil {
			t.Fatal(err)
		}
		return &pod{ns: ns, cid: fmt.Sprintf("chaos-%d-%d", i, cycle)}
	}
	for i := range pods {
		pods[i] = fresh(i, 0)
	}
	t.Cleanup(func() {
		for _, p := range pods {
			_ = testutil.DeleteNS(p.ns.Name)
		}
	})

	run := func(cmd string, p *pod, killAfter time.Duration) error {
		netns := p.ns.Path
		c := n.ns.Command(plugin)
		c.Stdin = strings.NewReader(conf)
		c.Env = append(os.Environ(), "CNI_COMMAND="+cmd, "CNI_CONTAINERID="+p.cid, "CNI_NETNS="+netns,
			"CNI_IFNAME=eth0", "CNI_PATH=/usr/lib/cni")
		if err := c.Start(); err != nil {
			return err
		}
		if killAfter > 0 {
			timer := time.AfterFunc(killAfter, func() { _ = c.Process.Signal(syscall.SIGKILL) })
			defer timer.Stop()
		}
		return c.Wait()
	}

	var kills, weftdKills, failures int
	for cycle := 1; cycle <= 300; cycle++ {
		i := rng.IntN(slots)
		p := pods[i]
		cmd := "ADD"
		if p.live {
			cmd = "DEL"
		}
		var killPlugin time.Duration
		killWeftd := false
		switch r := rng.IntN(10); {
		case r < 2:
			killPlugin = time.Duration(rng.IntN(8000)) * time.Microsecond
			kills++
		case r < 3:
			killWeftd = true
			weftdKills++
		}
		if killWeftd {
			go func(d time.Duration) { time.Sleep(d); n.weftd.Kill() }(time.Duration(rng.IntN(3000)) * time.Microsecond)
		}
		err := run(cmd, p, killPlugin)
		if killWeftd {
			time.Sleep(5 * time.Millisecond)
			n.weftd.Restart(syscall.SIGKILL)
		}
		switch {
		case err == nil && cmd == "ADD":
			p.live = true
		case err == nil && cmd == "DEL":
			p.live = false
			p.cid = fmt.Sprintf("chaos-%d-%d", i, cycle) // a new container for the next ADD
		default:
			// The runtime gives up on this sandbox: namespace gone, attachment not valid.
			failures++
			_ = testutil.DeleteNS(p.ns.Name)
			pods[i] = fresh(i, cycle)
		}
	}
	t.Logf("300 operations: %d plugin kills, %d weftd kills, %d failed operations", kills, weftdKills, failures)

	var valid []types.GCAttachment
	var want []string
	for _, p := range pods {
		if p.live {
			valid = append(valid, types.GCAttachment{ContainerID: p.cid, IfName: "eth0"})
			want = append(want, "chaos/"+p.cid+"/eth0")
		}
	}
	list := n.conflist("1.1.0", "chaos", `"mode":"bridge"`)
	if err := n.gc(list, valid); err != nil {
		t.Fatalf("GC: %v", err)
	}
	n.weftd.Restart(syscall.SIGTERM)

	allocs, err := n.weftd.Allocations()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	seenIP := map[string]string{}
	for _, a := range allocs {
		key, ips, _ := strings.Cut(a, "=")
		got = append(got, key)
		if other, dup := seenIP[ips]; dup {
			t.Errorf("double allocation: %s and %s both hold %s", other, key, ips)
		}
		seenIP[ips] = key
	}
	sort.Strings(got)
	sort.Strings(want)
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("allocations differ from live attachments\n got: %v\nwant: %v", got, want)
	}
	n.waitReaped(len(want)) // one veth per live attachment, nothing else
	// Every live pod still works.
	for _, p := range pods {
		if !p.live {
			continue
		}
		out, err := exec.Command("ip", "-n", p.ns.Name, "-br", "addr", "show", "eth0").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "10.90.0.") {
			t.Errorf("live pod %s lost its address: %s %v", p.cid, out, err)
		}
	}
}
