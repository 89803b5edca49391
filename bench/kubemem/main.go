// Command kubemem compares weftd's memory with kube-proxy's (nftables mode, built from the
// same Kubernetes module) against the same API server, at S services × E endpoints and N
// nodes, in a running `weft lab up --kubernetes --nodes 1`: it adds N-1 Node objects and
// the services with their EndpointSlices through the API, runs kube-proxy in the lab's
// underlay namespace (its rules land there) for the lab's node, waits until both have
// programmed every service, and reads both processes' resident memory (VmRSS, and RssAnon:
// what is theirs alone) a few times.
// Run by bench/kubemem.sh.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftnet/weft/bench/internal/kubebench"
	"github.com/weftnet/weft/bench/internal/weftmetrics"
)

var (
	labName   = flag.String("lab", "", "the lab (weft lab up --kubernetes --nodes 1)")
	kubeProxy = flag.String("kube-proxy", "", "kube-proxy binary")
	nodes     = flag.Int("nodes", 100, "Node objects in the API")
	services  = flag.Int("services", 1000, "services")
	endpoints = flag.Int("endpoints", 10, "endpoints per service")
	heap      = flag.String("heap", "", "also save weftd's heap profile here (go tool pprof FILE)")
)

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "kubemem:", err)
		os.Exit(1)
	}
}

func run() error {
	l, client, err := kubebench.Open(*labName)
	if err != nil {
		return err
	}
	ctx := context.Background()
	for i := 1; i < *nodes; i++ {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("fake-%d", i)}}
		if _, err := client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
			return err
		}
	}
	// Endpoints spread over the fake nodes, as a cluster's would be.
	if _, err := kubebench.Create(ctx, client, kubebench.Spec{Prefix: "mem", Services: *services, Endpoints: *endpoints,
		Decorate: func(i int, sl *discoveryv1.EndpointSlice) {
			for e := range sl.Endpoints {
				sl.Endpoints[e].NodeName = kubebench.Ptr(fmt.Sprintf("fake-%d", 1+(i*(*endpoints)+e)%max(*nodes-1, 1)))
			}
		}}); err != nil {
		return err
	}
	fmt.Printf("API: %d nodes, %d services × %d endpoints\n", *nodes, *services, *endpoints)

	node := l.State.Nodes[0]
	logf, err := os.Create(filepath.Join(os.TempDir(), "kubemem-kube-proxy.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	kp := exec.Command("nsenter", "--net="+l.State.Underlay, "--", *kubeProxy,
		"--kubeconfig="+l.UnderlayKubeconfig(), "--proxy-mode=nftables", "--hostname-override="+node.Name,
		"--cluster-cidr=10.244.0.0/16", "--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0s",
		"--conntrack-tcp-timeout-close-wait=0s", "--metrics-bind-address=127.0.0.1:10249", "--healthz-bind-address=127.0.0.1:10256")
	kp.Stdout, kp.Stderr = logf, logf
	// kube-proxy with Go's defaults, whatever GOGC this run gives weftd.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GOGC=") {
			kp.Env = append(kp.Env, kv)
		}
	}
	kp.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := kp.Start(); err != nil {
		return err
	}
	defer func() { _ = kp.Process.Kill(); _ = kp.Wait() }()

	// Both programmed: weftd's table has every service; kube-proxy's has a chain per service.
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(time.Second) {
		w := 0.0
		if m, err := weftmetrics.Read(node.Netns); err == nil {
			w = weftmetrics.Gauge(m, "weft_proxy_service_ports")
		}
		k := kubeProxyChains(l.State.Underlay)
		if w >= float64(*services) && k >= *services {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not programmed after 3 minutes: weftd %v service ports, kube-proxy %d service chains (see %s)", w, k, logf.Name())
		}
	}
	time.Sleep(10 * time.Second) // past the first syncs' garbage
	// VmRSS counts the binaries' mapped pages too (clean, shared, reclaimable page cache:
	// weftd's binary carries more than kube-proxy's); RssAnon is the memory each process
	// has of its own (heap, stacks).
	for _, field := range []string{"VmRSS", "RssAnon", "RssFile"} {
		var wr, kr []int
		for range 5 {
			wr = append(wr, memKiB(node.PID, field))
			kr = append(kr, memKiB(kp.Process.Pid, field))
			time.Sleep(time.Second)
		}
		sort.Ints(wr)
		sort.Ints(kr)
		fmt.Printf("%-8s weftd %d MiB (%d–%d), kube-proxy %d MiB (%d–%d): weftd / kube-proxy %.2fx\n", field,
			wr[2]/1024, wr[0]/1024, wr[4]/1024, kr[2]/1024, kr[0]/1024, kr[4]/1024, float64(wr[2])/float64(kr[2]))
	}
	// How much of the binaries' resident pages are mapped whole 2 MiB folios at a time
	// (large page-cache folios: one touched byte makes 2 MiB resident).
	fmt.Printf("PMD-mapped file pages: weftd %d MiB, kube-proxy %d MiB\n", filePmdKiB(node.PID)/1024, filePmdKiB(kp.Process.Pid)/1024)
	// CPU both spent in all (clock ticks of /proc/PID/stat): what a smaller heap costs.
	fmt.Printf("CPU      weftd %.1f s, kube-proxy %.1f s (since each started)\n", cpuSeconds(node.PID), cpuSeconds(kp.Process.Pid))
	if *heap != "" {
		b, err := weftmetrics.Get(node.Netns, "/debug/pprof/heap")
		if err != nil {
			return err
		}
		return os.WriteFile(*heap, b, 0o644)
	}
	return nil
}

// kubeProxyChains counts kube-proxy's service chains in netns.
func kubeProxyChains(netns string) int {
	out, err := exec.Command("nsenter", "--net="+netns, "--", "nft", "list", "table", "ip", "kube-proxy").Output()
	if err != nil {
		return 0
	}
	return strings.Count(string(out), "chain service-")
}

// cpuSeconds is a process's user and system time so far, with its children's (kube-proxy
// runs nft).
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces) start after the last ')'.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ticks := 0
	for _, i := range []int{11, 12, 13, 14} { // utime, stime, cutime, cstime
		n, _ := strconv.Atoi(f[i])
		ticks += n
	}
	return float64(ticks) / 100 // USER_HZ
}

// filePmdKiB sums a process's FilePmdMapped (smaps).
func filePmdKiB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return 0
	}
	total := 0
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "FilePmdMapped:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
			total += n
		}
	}
	return total
}

// memKiB reads one kB field of /proc/PID/status.
func memKiB(pid int, field string) int {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			v, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			return v
		}
	}
	return 0
}
