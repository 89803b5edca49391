// Command cnilat measures CNI ADD and DEL latency of weft-cni (with weftd) against the
// reference bridge + host-local plugins, side by side in one run, and prints ratios.
//
// Each plugin is exec'd the way a runtime does it: a fresh process per call, config on
// stdin, from inside its own node namespace. Pod namespaces are made before the clock
// starts. Rounds alternate between the two so that machine noise hits both alike.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/weftnet/weft/internal/cniapi"
)

type plugin struct {
	name   string
	bin    string
	conf   string
	nodeNS string
	path   string
}

type sample struct{ add, del []time.Duration }

var (
	seq    = flag.Int("seq", 200, "sequential ADD/DEL pairs per plugin")
	burst  = flag.Int("burst", 30, "concurrent ADDs in a burst")
	bursts = flag.Int("bursts", 3, "bursts per plugin")
	binDir = flag.String("bin", "bin", "folder holding weft-cni and weftd")
	refDir = flag.String("ref", "/usr/lib/cni", "folder holding the reference plugins")
)

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "cnilat:", err)
		os.Exit(1)
	}
}

func run() error {
	tag := fmt.Sprintf("bl%d", os.Getpid()%100000)
	tmp, err := os.MkdirTemp("", "weft-cnilat-")
	if err != nil {
		return err
	}
	var cleanup []func()
	defer func() {
		for i := len(cleanup) - 1; i >= 0; i-- {
			cleanup[i]()
		}
		os.RemoveAll(tmp)
	}()
	mkns := func(name string) (string, error) {
		if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
			return "", fmt.Errorf("ip netns add %s: %v %s", name, err, out)
		}
		cleanup = append(cleanup, func() { _ = exec.Command("ip", "netns", "del", name).Run() })
		_ = exec.Command("ip", "-n", name, "link", "set", "lo", "up").Run()
		return "/run/netns/" + name, nil
	}

	weftNode, err := mkns(tag + "-wnode")
	if err != nil {
		return err
	}
	refNode, err := mkns(tag + "-rnode")
	if err != nil {
		return err
	}
	absBin, _ := filepath.Abs(*binDir)
	runDir := filepath.Join(tmp, "run")
	weftd := exec.Command("nsenter", "--net="+weftNode, "--", filepath.Join(absBin, "weftd"),
		"--state-dir", filepath.Join(tmp, "state"), "--run-dir", runDir, "--pod-cidr", "10.60.0.0/16", "--log-level", "error")
	weftd.Stderr = os.Stderr
	if err := weftd.Start(); err != nil {
		return err
	}
	cleanup = append(cleanup, func() { _ = weftd.Process.Kill(); _ = weftd.Wait() })
	for i := 0; ; i++ {
		if _, err := cniapi.ReadNodeContract(runDir); err == nil {
			break
		}
		if i > 500 {
			return fmt.Errorf("weftd did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}

	weft := plugin{name: "weft bridge", bin: filepath.Join(absBin, "weft-cni"), nodeNS: weftNode, path: absBin,
		conf: fmt.Sprintf(`{"cniVersion":"1.0.0","name":"bench","type":"weft-cni","mode":"bridge","socket":%q}`, filepath.Join(runDir, "weft.sock"))}
	ref := plugin{name: "reference bridge+host-local", bin: filepath.Join(*refDir, "bridge"), nodeNS: refNode, path: *refDir,
		conf: fmt.Sprintf(`{"cniVersion":"1.0.0","name":"bench","type":"bridge","bridge":"refbr0","isGateway":true,"hairpinMode":true,
		  "ipam":{"type":"host-local","dataDir":%q,"ranges":[[{"subnet":"10.61.0.0/16"}]],"routes":[{"dst":"0.0.0.0/0"}]}}`, filepath.Join(tmp, "hostlocal"))}

	total := *seq + *burst**bursts
	pods := map[string][]string{}
	for _, p := range []plugin{weft, ref} {
		for i := range total {
			ns, err := mkns(fmt.Sprintf("%s-%c%d", tag, p.name[0], i))
			if err != nil {
				return err
			}
			pods[p.name] = append(pods[p.name], ns)
		}
	}

	results := map[string]*sample{weft.name: {}, ref.name: {}}
	burstWall := map[string][]time.Duration{}
	// Warm both (page cache, bridge creation) outside the measurement.
	for _, p := range []plugin{weft, ref} {
		ns := pods[p.name][0]
		if _, err := p.call("ADD", "warm", ns); err != nil {
			return fmt.Errorf("%s warm-up ADD: %w", p.name, err)
		}
		if _, err := p.call("DEL", "warm", ns); err != nil {
			return fmt.Errorf("%s warm-up DEL: %w", p.name, err)
		}
	}
	// Sequential, alternating rounds of 20.
	for start := 0; start < *seq; start += 20 {
		for _, p := range []plugin{weft, ref} {
			end := min(start+20, *seq)
			for i := start; i < end; i++ {
				d, err := p.call("ADD", fmt.Sprintf("s%d", i), pods[p.name][i])
				if err != nil {
					return fmt.Errorf("%s ADD: %w", p.name, err)
				}
				results[p.name].add = append(results[p.name].add, d)
			}
			for i := start; i < end; i++ {
				d, err := p.call("DEL", fmt.Sprintf("s%d", i), pods[p.name][i])
				if err != nil {
					return fmt.Errorf("%s DEL: %w", p.name, err)
				}
				results[p.name].del = append(results[p.name].del, d)
			}
		}
	}
	burstSamples := map[string]*sample{weft.name: {}, ref.name: {}}
	for b := range *bursts {
		for _, p := range []plugin{weft, ref} {
			base := *seq + b**burst
			for _, verb := range []string{"ADD", "DEL"} {
				var mu sync.Mutex
				var wg sync.WaitGroup
				var firstErr error
				t0 := time.Now()
				for i := range *burst {
					wg.Add(1)
					go func() {
						defer wg.Done()
						d, err := p.call(verb, fmt.Sprintf("b%d-%d", b, i), pods[p.name][base+i])
						mu.Lock()
						defer mu.Unlock()
						if err != nil && firstErr == nil {
							firstErr = err
						}
						if verb == "ADD" {
							burstSamples[p.name].add = append(burstSamples[p.name].add, d)
						} else {
							burstSamples[p.name].del = append(burstSamples[p.name].del, d)
						}
					}()
				}
				wg.Wait()
				if firstErr != nil {
					return fmt.Errorf("%s burst %s: %w", p.name, verb, firstErr)
				}
				if verb == "ADD" {
					burstWall[p.name] = append(burstWall[p.name], time.Since(t0))
				}
			}
		}
	}

	w, r := results[weft.name], results[ref.name]
	wb, rb := burstSamples[weft.name], burstSamples[ref.name]
	fmt.Printf("CNI latency, %d sequential ADD/DEL pairs and %d bursts of %d concurrent ADDs then DELs\n\n", *seq, *bursts, *burst)
	fmt.Printf("%-26s %12s %12s %8s\n", "metric", "weft", "reference", "ratio")
	row := func(label string, a, b time.Duration) {
		fmt.Printf("%-26s %12s %12s %7.2fx\n", label, a.Round(10*time.Microsecond), b.Round(10*time.Microsecond), float64(a)/float64(b))
	}
	row("ADD p50 (sequential)", pct(w.add, 50), pct(r.add, 50))
	row("ADD p99 (sequential)", pct(w.add, 99), pct(r.add, 99))
	row("DEL p50 (sequential)", pct(w.del, 50), pct(r.del, 50))
	row("DEL p99 (sequential)", pct(w.del, 99), pct(r.del, 99))
	row("ADD p50 (burst)", pct(wb.add, 50), pct(rb.add, 50))
	row("ADD p99 (burst)", pct(wb.add, 99), pct(rb.add, 99))
	row("DEL p50 (burst)", pct(wb.del, 50), pct(rb.del, 50))
	row("DEL p99 (burst)", pct(wb.del, 99), pct(rb.del, 99))
	row("burst wall time (median)", pct(burstWall[weft.name], 50), pct(burstWall[ref.name], 50))
	return nil
}

func (p plugin) call(verb, id, netns string) (time.Duration, error) {
	cmd := exec.Command(p.bin)
	cmd.Stdin = strings.NewReader(p.conf)
	cmd.Env = []string{"CNI_COMMAND=" + verb, "CNI_CONTAINERID=" + id, "CNI_NETNS=" + netns, "CNI_IFNAME=eth0", "CNI_PATH=" + p.path, "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// The plugin must run in the node namespace: enter it on this thread and fork from it.
	var d time.Duration
	err := inNS(p.nodeNS, func() error {
		t0 := time.Now()
		err := cmd.Run()
		d = time.Since(t0)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("%v: %s", err, out.String())
	}
	return d, nil
}

func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	idx := (len(s)*p + 99) / 100
	if idx > 0 {
		idx--
	}
	return s[idx]
}
