package cni_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/weftnet/weft/internal/testutil"
)

// bandwidthV191Env names the folder holding the reference bandwidth plugin v1.9.1, which the
// test command builds (Debian ships an older one in /usr/lib/cni).
const bandwidthV191Env = "WEFT_CNI_PLUGINS_V191"

// TestBandwidthChained chains the reference bandwidth plugin (Debian's and v1.9.1) after
// weft-cni with 50 Mbit/s each way while the fast path is on: ADD/CHECK/DEL succeed, iperf3
// measures the rate in both directions (the fast path must not carry the pod's packets
// around the shaper), and an unshaped pod on the same node runs at full speed.
func TestBandwidthChained(t *testing.T) {
	iperf := testutil.RequireTool(t, "iperf3")
	dirs := map[string]string{"debian": "/usr/lib/cni"}
	if _, err := os.Stat("/usr/lib/cni/bandwidth"); err != nil {
		testutil.RequireTool(t, "/usr/lib/cni/bandwidth")
	}
	v191 := os.Getenv(bandwidthV191Env)
	if _, err := os.Stat(filepath.Join(v191, "bandwidth")); v191 == "" || err != nil {
		testutil.RequireTool(t, "bandwidth v1.9.1 (set "+bandwidthV191Env+")")
	} else {
		dirs["v1.9.1"] = v191
	}
	for name, dir := range dirs {
		t.Run(name, func(t *testing.T) {
			n := newNode(t, "10.102.0.0/24")
			// This plugin version first on the search path.
			n.cni = libcni.NewCNIConfigWithCacheDir([]string{testutil.Binaries(t), dir}, t.TempDir(), nil)
			const rate = 50_000_000
			shapedList := n.conflist("1.0.0", "bw", `"mode":"bridge"`,
				fmt.Sprintf(`{"type":"bandwidth","ingressRate":%d,"ingressBurst":%d,"egressRate":%d,"egressBurst":%d}`, rate, rate/20, rate, rate/20))
			plainList := n.conflist("1.0.0", "bw", `"mode":"bridge"`)

			shaped, rtS := n.pod("bw-shaped")
			rS := n.mustAdd(shapedList, rtS)
			plain, rtP := n.pod("bw-plain")
			rP := n.mustAdd(plainList, rtP)
			client, rtC := n.pod("bw-client")
			n.mustAdd(plainList, rtC)
			if err := n.check(shapedList, rtS); err != nil {
				t.Errorf("CHECK of the shaped chain: %v", err)
			}
			// The fast path leaves the shaped pod alone: its addresses leave the map.
			host := rP.Interfaces[1].Name
			n.waitFastpath(host, func(id uint32, m map[netip.Addr]uint32) bool {
				_, has := m[podIPs(rS)[0]]
				return id != 0 && !has && len(m) == 2
			})

			ingress := iperf3(t, iperf, client, shaped, podIPs(rS)[0], false)
			egress := iperf3(t, iperf, client, shaped, podIPs(rS)[0], true)
			full := iperf3(t, iperf, client, plain, podIPs(rP)[0], false)
			t.Logf("%s: into the shaped pod %.1f Mbit/s, out of it %.1f Mbit/s, unshaped pod %.1f Mbit/s", name, ingress/1e6, egress/1e6, full/1e6)
			for what, got := range map[string]float64{"ingress": ingress, "egress": egress} {
				if got < rate*0.85 || got > rate*1.15 {
					t.Errorf("%s: %s measured %.1f Mbit/s, want 50 ± 15 %%", name, what, got/1e6)
				}
			}
			if full < 4*rate {
				t.Errorf("%s: the unshaped pod ran at %.1f Mbit/s, want far above the shaped rate", name, full/1e6)
			}
			if err := n.del(shapedList, rtS); err != nil {
				t.Fatalf("DEL of the shaped chain: %v", err)
			}
			_ = n.del(plainList, rtP)
			_ = n.del(plainList, rtC)
			if allocs, _ := n.weftd.Allocations(); len(allocs) != 0 {
				t.Errorf("allocations after DEL: %v", allocs)
			}
		})
	}
}

// iperf3 runs a 3-second TCP test (the first second omitted) between a client pod and a
// server pod, server-bound unless reverse, and returns the received bits per second.
func iperf3(t *testing.T, bin string, client, server testutil.NS, addr netip.Addr, reverse bool) float64 {
	t.Helper()
	port := "5301"
	srv := server.Command(bin, "-s", "-1", "-p", port)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	args := []string{"-c", addr.String(), "-p", port, "-t", "3", "-O", "1", "-J"}
	if reverse {
		args = append(args, "-R")
	}
	var res struct {
		Error string `json:"error"`
		End   struct {
			Received struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	for try := 0; ; try++ { // until the server listens
		out, err := client.Command(bin, args...).Output()
		res.Error = ""
		if jerr := json.Unmarshal(out, &res); jerr != nil && err == nil {
			err = jerr
		}
		if err == nil && res.Error == "" && res.End.Received.BitsPerSecond > 0 {
			return res.End.Received.BitsPerSecond
		}
		if try == 50 {
			t.Fatalf("iperf3 %v: %v %s\n%s", args, err, res.Error, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
