// Package lab builds weft clusters out of network namespaces on one machine: node
// namespaces each running a real weftd, and pod namespaces attached through the real
// weft-cni exec path. Everything it makes is named after the lab and recorded in its state
// file, so Down can remove exactly that and nothing else.
package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/weftnet/weft/internal/bpffs"
	"github.com/weftnet/weft/internal/cniapi"
	"github.com/weftnet/weft/internal/netns"
	"github.com/weftnet/weft/internal/probe"
)

// MetricsAddr is where each node's weftd serves /metrics and /healthz, inside the node's
// namespace.
const MetricsAddr = "127.0.0.1:9402"

// Root is where labs keep their state.
const Root = "/run/weft-lab"

// Options describe a lab.
type Options struct {
	Name   string // prefix of every namespace; default "weft"
	BinDir string // folder holding weft, weftd and weft-cni
	Mode   string // bridge or ptp
	Nodes  int    // default 3
	Fabric string // vxlan, direct or bgp
	Racks  int    // fabric bgp: L2 segments joined only by a router running TOR (0, 1: one segment)
	TOR    string // the racks' router: bird (default), gobgpd, frr, or none (it only forwards)
	Proxy  string // every weftd's --proxy: auto (weftd's default), nftables or ebpf
	// Kubernetes runs kube-apiserver and kube-controller-manager in the underlay; weftds
	// read the cluster from it and every pod gets a Pod object.
	Kubernetes bool
}

// Node is one node namespace with its weftd.
type Node struct {
	Name     string         `json:"name"`
	Netns    string         `json:"netns"`
	Underlay netip.Addr     `json:"underlay"`
	Rack     int            `json:"rack,omitempty"` // racked labs: the node's segment, from 1
	PodCIDRs []netip.Prefix `json:"podCIDRs"`
	Fabric   string         `json:"fabric"`
	MTU      int            `json:"mtu"`
	PID      int            `json:"pid"`
	// IngressPID is the node's weft-ingress (on the underlay address, ports 80 and 443).
	IngressPID int    `json:"ingressPID,omitempty"`
	RunDir     string `json:"runDir"`
	StateDir   string `json:"stateDir"`
}

// Proc is a process the lab started (checked by program name before it is signalled).
type Proc struct {
	PID     int    `json:"pid"`
	Program string `json:"program"`
}

// Pod is one pod namespace attached to a node.
type Pod struct {
	Name      string       `json:"name"`
	Namespace string       `json:"namespace,omitempty"` // "": default
	Node      string       `json:"node"`
	Netns     string       `json:"netns"`
	IPs       []netip.Addr `json:"addresses"`
	MAC       string       `json:"mac"`
	MTU       int          `json:"mtu"`
	Serve     int          `json:"serve,omitempty"`     // echo (or HTTP) server port, 0: none
	ServeHTTP bool         `json:"serveHTTP,omitempty"` // the server on Serve speaks HTTP, not echo
	ServePID  int          `json:"servePID,omitempty"`
}

// State is what a lab made, persisted so another process can tear it down.
type State struct {
	Name     string `json:"name"`
	Mode     string `json:"mode"`
	Fabric   string `json:"fabric"`
	Underlay string `json:"underlay"` // the underlay namespace
	Racks    int    `json:"racks,omitempty"`
	TOR      string `json:"tor,omitempty"`
	Proxy    string `json:"proxy,omitempty"`
	// Kubernetes: see Options; KubeProcs are its control plane's processes.
	Kubernetes bool    `json:"kubernetes,omitempty"`
	KubeToken  string  `json:"kubeToken,omitempty"`
	KubeProcs  []Proc  `json:"kubeProcs,omitempty"`
	Router     string  `json:"router,omitempty"` // racked labs: the router namespace
	Client     string  `json:"client,omitempty"` // racked labs: a client outside the cluster, behind the router
	TORProcs   []Proc  `json:"torProcs,omitempty"`
	Store      string  `json:"store"`
	EtcdPID    int     `json:"etcdPID"`
	Nodes      []*Node `json:"nodes"`
	Pods       []*Pod  `json:"pods"`
}

// Lab is a lab being driven.
type Lab struct {
	opts  Options
	State State
}

func (o *Options) defaults() error {
	if o.Name == "" {
		o.Name = "weft"
	}
	if o.Mode == "" {
		o.Mode = "bridge"
	}
	if o.Nodes == 0 {
		o.Nodes = 3
	}
	if o.Nodes < 1 || o.Nodes > 100 {
		return fmt.Errorf("--nodes %d: from 1 to 100", o.Nodes)
	}
	if o.Fabric == "" {
		o.Fabric = "vxlan"
	}
	if o.Fabric != "vxlan" && o.Fabric != "direct" && o.Fabric != "bgp" {
		return fmt.Errorf("--fabric %q: use vxlan, direct or bgp", o.Fabric)
	}
	switch o.Proxy {
	case "", "nftables", "ebpf", "auto":
	default:
		return fmt.Errorf("--proxy %q: use nftables, ebpf or auto", o.Proxy)
	}
	if o.Racks > 1 && o.Fabric != "bgp" {
		return fmt.Errorf("--racks needs --fabric bgp: only BGP routes pod networks across the rack router")
	}
	if o.Racks < 0 || o.Racks > 8 {
		return fmt.Errorf("--racks %d: from 1 to 8", o.Racks)
	}
	if o.Racks > 1 && o.TOR == "" {
		o.TOR = "bird"
	}
	if o.TOR != "" && o.TOR != "bird" && o.TOR != "gobgpd" && o.TOR != "frr" && o.TOR != "none" {
		return fmt.Errorf("--tor %q: use bird, gobgpd, frr or none", o.TOR)
	}
	if o.TOR != "" && o.Racks < 2 {
		return fmt.Errorf("--tor needs --racks 2 or more")
	}
	if len(o.Name) > 8 || strings.ContainsAny(o.Name, "/ .:") {
		return fmt.Errorf("lab name %q: use at most 8 letters, digits or dashes", o.Name)
	}
	if o.BinDir == "" {
		self, err := os.Executable()
		if err != nil {
			return err
		}
		o.BinDir = filepath.Dir(self)
	}
	for _, b := range []string{"weft", "weftd", "weft-cni", "weft-ingress"} {
		if _, err := os.Stat(filepath.Join(o.BinDir, b)); err != nil {
			return fmt.Errorf("%s not found in %s (build with: go build -o bin/ ./cmd/...)", b, o.BinDir)
		}
	}
	return nil
}

func (l *Lab) dir() string       { return filepath.Join(Root, l.opts.Name) }
func (l *Lab) stateFile() string { return filepath.Join(l.dir(), "lab.json") }

// Up creates the lab: an underlay namespace with a bridge and an embedded etcd, the
// cluster configuration, and Nodes node namespaces each running weftd in cluster mode.
func Up(opts Options) (*Lab, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("the lab needs root (it creates network namespaces)")
	}
	l := &Lab{opts: opts, State: State{Name: opts.Name, Mode: opts.Mode, Fabric: opts.Fabric, Racks: opts.Racks, TOR: opts.TOR, Proxy: opts.Proxy, Kubernetes: opts.Kubernetes}}
	if _, err := os.Stat(l.stateFile()); err == nil {
		return nil, fmt.Errorf("lab %q already exists: run `weft lab down --name %s` first", opts.Name, opts.Name)
	}
	if err := os.MkdirAll(l.dir(), 0o755); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			_ = l.Down()
		}
	}()
	if err := l.upUnderlay(); err != nil {
		return nil, err
	}
	if err := l.makeCA(); err != nil {
		return nil, fmt.Errorf("the lab's test CA: %w", err)
	}
	if l.State.Kubernetes {
		if err := l.upKube(); err != nil {
			return nil, err
		}
	}
	if l.State.Racks > 1 {
		if err := l.upRacks(); err != nil {
			return nil, err
		}
	}
	for i := 1; i <= opts.Nodes; i++ {
		if err := l.addNode(i); err != nil {
			return nil, err
		}
	}
	if l.State.Fabric == "bgp" {
		// Up means routed: every session established (and the rack router knowing every
		// block), as up waits for each weftd to serve.
		var problems []string
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if _, problems = l.bgpProblems(); len(problems) == 0 {
				break
			}
		}
		if len(problems) > 0 {
			return nil, fmt.Errorf("BGP did not converge in 30 s: %s", strings.Join(problems, "; "))
		}
	}
	ok = true
	return l, nil
}

func (l *Lab) nsName(short string) string { return l.opts.Name + "-" + short }

func (l *Lab) addNode(i int) error {
	name := fmt.Sprintf("node%d", i)
	nsPath, err := createNS(l.nsName(name))
	if err != nil {
		return err
	}
	seg := l.segmentOf(i)
	addr, _ := seg.host(i)
	n := &Node{Name: name, Netns: nsPath, Underlay: addr, Rack: l.rackOf(i), Fabric: l.State.Fabric,
		RunDir: filepath.Join(l.dir(), name, "run"), StateDir: filepath.Join(l.dir(), name, "state")}
	l.State.Nodes = append(l.State.Nodes, n)
	if err := l.save(); err != nil {
		return err
	}
	if err := plugIntoUnderlay(l.State.Underlay, nsPath, fmt.Sprintf("u%d", i), seg, i); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(l.dir(), name), 0o755); err != nil {
		return err
	}
	if l.State.Kubernetes {
		// As a kubelet registers its node before any CNI work: the controller manager
		// gives it its pod blocks, which weftd waits for.
		if err := l.registerNode(n); err != nil {
			return err
		}
	}
	if err := l.startWeftd(n); err != nil {
		return err
	}
	return l.startIngress(n)
}

// startWeftd runs the node's weftd and waits until it serves and has its lease.
func (l *Lab) startWeftd(n *Node) error {
	name, nsPath := n.Name, n.Netns
	logf, err := os.OpenFile(filepath.Join(l.dir(), name, "weftd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	// Each node namespace has its own loopback, so every weftd serves metrics on the same
	// address.
	cmd := exec.Command("nsenter", "--net="+nsPath, "--", filepath.Join(l.opts.BinDir, "weftd"),
		"--node-name", name, "--state-dir", n.StateDir, "--run-dir", n.RunDir, "--underlay-dev", "uplink",
		"--metrics-addr", MetricsAddr, "--pprof", "--dns-upstream", "none") // a lab never forwards outside its namespaces
	if l.State.Proxy != "" {
		cmd.Args = append(cmd.Args, "--proxy", l.State.Proxy)
	}
	if l.State.Kubernetes {
		// No store: blocks and peers from the Node objects, the configuration from a file.
		cmd.Args = append(cmd.Args, "--kubeconfig", l.UnderlayKubeconfig(), "--cluster-config", l.clusterConfigFile())
	} else {
		cmd.Args = append(cmd.Args, "--store", l.State.Store)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // survives the CLI's terminal signals
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start weftd on %s: %w", name, err)
	}
	n.PID = cmd.Process.Pid // nsenter execs weftd: this is weftd's PID
	go func() { _ = cmd.Wait() }()
	if err := l.save(); err != nil {
		return err
	}
	client := cniapi.Client{Socket: filepath.Join(n.RunDir, "weft.sock"), Timeout: time.Second}
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if _, err := client.Do(cniapi.Request{Op: cniapi.OpStatus}); err == nil {
			if c, err := cniapi.ReadNodeContract(n.RunDir); err == nil {
				n.PodCIDRs, n.MTU = c.PodCIDRs, c.MTU
				return l.save()
			}
		}
	}
	return fmt.Errorf("weftd on %s did not come up; see %s", name, logf.Name())
}

// RestartNode stops a node's weftd with sig (SIGKILL: as a crash) and starts it again;
// the node's pods, routes and rules stay in the kernel meanwhile.
func (l *Lab) RestartNode(name string, sig syscall.Signal) error {
	n, err := l.node(name)
	if err != nil {
		return err
	}
	if pidAlive(n.PID) && isProgram(n.PID, "weftd") {
		if err := syscall.Kill(n.PID, sig); err != nil {
			return fmt.Errorf("signal weftd on %s: %w", name, err)
		}
		for deadline := time.Now().Add(10 * time.Second); pidAlive(n.PID) && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		}
	}
	return l.startWeftd(n)
}

func (l *Lab) node(name string) (*Node, error) {
	for _, n := range l.State.Nodes {
		if n.Name == name {
			return n, nil
		}
	}
	return nil, fmt.Errorf("no node %q in lab %s", name, l.opts.Name)
}

func (l *Lab) netconf(n *Node) (*libcni.NetworkConfigList, error) {
	raw := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"weft-lab","plugins":[{"type":"weft-cni","mode":%q,"socket":%q,"capabilities":{"labels":true}}]}`,
		l.State.Mode, filepath.Join(n.RunDir, "weft.sock"))
	return libcni.ConfListFromBytes([]byte(raw))
}

func (l *Lab) cni() *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir([]string{l.opts.BinDir}, filepath.Join(l.dir(), "cni-cache"), nil)
}

// AddPod creates a pod namespace, attaches it to node through weft-cni and, with serve > 0,
// starts a TCP echo server in it on that port.
func (l *Lab) AddPod(name, nodeName string, serve int, labels map[string]string) (*Pod, error) {
	return l.AddPodIn("default", name, nodeName, serve, labels)
}

// AddPodIn is AddPod in a namespace of the pod's own (the pod's name stays unique in the
// lab: it names its network namespace).
func (l *Lab) AddPodIn(namespace, name, nodeName string, serve int, labels map[string]string) (*Pod, error) {
	return l.AddPodServing(namespace, name, nodeName, serve, false, labels)
}

// AddPodServing is AddPodIn with the kind of server: an echo server, or (serveHTTP) an
// HTTP server (see ServeHTTP) on port serve.
func (l *Lab) AddPodServing(namespace, name, nodeName string, serve int, serveHTTP bool, labels map[string]string) (*Pod, error) {
	n, err := l.node(nodeName)
	if err != nil {
		return nil, err
	}
	nsPath, err := createNS(l.nsName(name))
	if err != nil {
		return nil, err
	}
	p := &Pod{Name: name, Namespace: namespace, Node: nodeName, Netns: nsPath, MTU: n.MTU}
	l.State.Pods = append(l.State.Pods, p)
	if err := l.save(); err != nil {
		return nil, err
	}
	list, err := l.netconf(n)
	if err != nil {
		return nil, err
	}
	var res *current.Result
	err = probe.InNS(n.Netns, func() error {
		rt := l.runtimeConf(p)
		if len(labels) > 0 {
			rt.CapabilityArgs = map[string]any{"labels": labels}
		}
		r, err := l.cni().AddNetworkList(context.Background(), list, rt)
		if err != nil {
			return err
		}
		res, err = current.NewResultFromResult(r)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", name, err)
	}
	for _, ip := range res.IPs {
		a, _ := netip.AddrFromSlice(ip.Address.IP)
		p.IPs = append(p.IPs, a.Unmap())
	}
	for _, i := range res.Interfaces {
		if i.Sandbox != "" {
			p.MAC = i.Mac
		}
	}
	if serve > 0 {
		p.ServeHTTP = serveHTTP
		if err := l.startServe(p, serve); err != nil {
			return p, err
		}
	}
	if l.State.Kubernetes {
		if err := l.publishPod(p, labels, serve); err != nil {
			return p, err
		}
	}
	return p, l.save()
}

func (p *Pod) namespace() string {
	if p.Namespace == "" {
		return "default"
	}
	return p.Namespace
}

func (l *Lab) runtimeConf(p *Pod) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: "lab-" + l.opts.Name + "-" + p.Name, NetNS: p.Netns, IfName: "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAME", p.Name}, {"K8S_POD_NAMESPACE", p.namespace()}}}
}

// PingResult is one cell of the connectivity matrix.
type PingResult struct {
	From, To string
	Dst      netip.Addr
	RTT      time.Duration
	Err      error
}

// PingMatrix pings every pod address from every other pod.
func (l *Lab) PingMatrix() []PingResult {
	var out []PingResult
	for _, src := range l.State.Pods {
		for _, dst := range l.State.Pods {
			if src == dst {
				continue
			}
			for _, ip := range dst.IPs {
				r := PingResult{From: src.Name, To: dst.Name, Dst: ip}
				for range 3 {
					if r.RTT, r.Err = probe.Ping(src.Netns, ip, 56, false, time.Second); r.Err == nil {
						break
					}
				}
				out = append(out, r)
			}
		}
	}
	return out
}

// Down removes everything the lab recorded: pods (DEL through weft-cni), weftd processes
// (by the PIDs it started), namespaces and files. Running it twice is fine.
func (l *Lab) Down() error {
	var errs []error
	for _, p := range l.State.Pods {
		if n, err := l.node(p.Node); err == nil && pidAlive(n.PID) {
			if list, err := l.netconf(n); err == nil {
				_ = probe.InNS(n.Netns, func() error {
					return l.cni().DelNetworkList(context.Background(), list, l.runtimeConf(p))
				})
			}
		}
		errs = append(errs, deleteNS(p.Netns))
	}
	for _, p := range l.State.Pods {
		stopPID(p.ServePID, "weft")
	}
	for _, n := range l.State.Nodes {
		stopPID(n.IngressPID, "weft-ingress")
		stopPID(n.PID, "weftd")
		// weftd leaves its tcx links pinned (they outlive a restart); unmounting its bpffs
		// detaches them.
		errs = append(errs, bpffs.Unmount(filepath.Join(n.RunDir, "bpf")))
		errs = append(errs, deleteNS(n.Netns))
	}
	for _, p := range l.State.KubeProcs {
		stopPID(p.PID, p.Program)
	}
	stopPID(l.State.EtcdPID, "weft")
	for _, p := range l.State.TORProcs {
		stopPID(p.PID, p.Program)
	}
	errs = append(errs, deleteNS(l.State.Router), deleteNS(l.State.Client))
	errs = append(errs, deleteNS(l.State.Underlay))
	errs = append(errs, os.RemoveAll(l.dir()))
	return errors.Join(errs...)
}

// Load reads a lab's state.
func Load(name string) (*Lab, error) {
	o := Options{Name: name}
	if o.Name == "" {
		o.Name = "weft"
	}
	if self, err := os.Executable(); err == nil {
		o.BinDir = filepath.Dir(self)
	}
	l := &Lab{opts: o}
	b, err := os.ReadFile(l.stateFile())
	if err != nil {
		return nil, fmt.Errorf("lab %q: %w", o.Name, err)
	}
	if err := json.Unmarshal(b, &l.State); err != nil {
		return nil, fmt.Errorf("lab %q state: %w", o.Name, err)
	}
	l.opts.Mode, l.opts.Fabric = l.State.Mode, l.State.Fabric
	return l, nil
}

func (l *Lab) save() error {
	b, err := json.MarshalIndent(l.State, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(l.stateFile(), b, 0o644)
}

func createNS(name string) (string, error) { return netns.Create(name) }

func deleteNS(path string) error {
	if path == "" {
		return nil
	}
	return netns.Delete(filepath.Base(path))
}

func pidAlive(pid int) bool {
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return false
	}
	// A zombie (dead, not yet reaped by whoever adopted it) is not alive.
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if i := strings.LastIndexByte(string(stat), ')'); err == nil && i+2 < len(stat) && stat[i+2] == 'Z' {
		return false
	}
	return true
}

// stopPID ends a process the lab started (checked by its program name, against a
// recycled PID): SIGTERM, then SIGKILL after 5 s.
func stopPID(pid int, program string) {
	if !pidAlive(pid) || !isProgram(pid, program) {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	for range 100 {
		if !pidAlive(pid) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

func isProgram(pid int, program string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	argv0, _, _ := strings.Cut(string(b), "\x00")
	return filepath.Base(argv0) == program
}
