// Command weftd is weft's node agent.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"

	mdns "github.com/miekg/dns"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/agent"
	"github.com/weftnet/weft/internal/config"
	"github.com/weftnet/weft/internal/hostnet"
	"github.com/weftnet/weft/internal/kube"
	"github.com/weftnet/weft/internal/store/storeurl"
)

func main() {
	// A node agent runs on every node and its heap changes only when the cluster does: a
	// smaller heap goal than Go's default (100) costs little CPU and a third of the
	// memory (docs/benchmarks.md, Kubernetes mode). GOGC, when set, decides.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "weftd:", err)
		os.Exit(1)
	}
}

// gcPercent is weftd's default GOGC.
const gcPercent = 50

// flags are weftd's command-line settings.
type flags struct {
	configFile, stateDir, runDir, bpfDir, proxy, dnsUpstream, podCIDR, clusterCIDR, nodeName, metricsAddr, logLevel string
	store, underlayDev, etcdCA, etcdCert, etcdKey, kubeconfig, ipam, clusterConfig                                  string
	mtu                                                                                                             int
	masquerade, sysctls, fastpath, antiSpoof, preflight, routeReflector, pprof                                      bool
}

func run(args []string) error {
	fs := flag.NewFlagSet("weftd", flag.ContinueOnError)
	hostname, _ := os.Hostname()
	var f flags
	fs.StringVar(&f.configFile, "config", "", "JSON configuration file; flags given here override it")
	fs.StringVar(&f.stateDir, "state-dir", "/var/lib/weft", "directory of the node store")
	fs.StringVar(&f.runDir, "run-dir", "/run/weft", "directory of the socket and node contract")
	fs.StringVar(&f.proxy, "proxy", "auto", "cluster mode: the service proxy: auto (ebpf where the kernel allows, else nftables), nftables, ebpf (connect-time translation for pods, in front of nftables) or none")
	fs.StringVar(&f.dnsUpstream, "dns-upstream", "", "cluster mode: where the node's DNS forwards other names, HOST:PORT,... (default: the nameservers of /etc/resolv.conf; none: do not forward)")
	fs.StringVar(&f.bpfDir, "bpf-dir", "", "bpffs where the fast path pins its tcx links (mounted if needed; default RUN_DIR/bpf)")
	fs.StringVar(&f.podCIDR, "pod-cidr", "", "the node's pod CIDR(s), comma separated (one IPv4 and/or one IPv6)")
	fs.StringVar(&f.clusterCIDR, "cluster-cidr", "", "the whole cluster's pod CIDR(s), comma separated: traffic between them is not NATed")
	fs.StringVar(&f.nodeName, "node-name", hostname, "this node's name")
	fs.IntVar(&f.mtu, "mtu", 0, "pod MTU (0: from the default route's device)")
	fs.StringVar(&f.metricsAddr, "metrics-addr", "", "serve /metrics and /healthz on HOST:PORT")
	fs.BoolVar(&f.pprof, "pprof", false, "also serve Go's profiles (/debug/pprof/) on --metrics-addr")
	fs.BoolVar(&f.masquerade, "masquerade", true, "masquerade pod traffic leaving the pod network")
	fs.BoolVar(&f.sysctls, "manage-sysctls", true, "enable IP forwarding in weftd's network namespace")
	fs.BoolVar(&f.fastpath, "fastpath", true, "short-cut pod-to-pod traffic on this node with eBPF (falls back when unavailable)")
	fs.BoolVar(&f.antiSpoof, "anti-spoofing", true, "drop what a pod sends from an address or MAC that is not its own")
	fs.BoolVar(&f.preflight, "preflight", true, "refuse to start when a pod CIDR overlaps this namespace's addresses or routes")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&f.store, "store", "", "cluster store: etcd://HOST:PORT[,HOST:PORT] or bolt:///PATH (the pod CIDR then comes from a lease)")
	fs.BoolVar(&f.routeReflector, "bgp-route-reflector", false, "fabric bgp: this node reflects routes for the others (they peer with the reflectors only)")
	fs.StringVar(&f.underlayDev, "underlay-dev", "", "cluster mode: the device other nodes are reached through (default: the default route's)")
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "Kubernetes mode: read services, EndpointSlices, pods, namespaces, network policies and (--ipam kubernetes) nodes from this Kubernetes API (a kubeconfig file, or in-cluster)")
	fs.StringVar(&f.ipam, "ipam", "", "Kubernetes mode: where the node's pod blocks come from: kubernetes (Node.spec.podCIDRs; peers from Node objects; no store; the default) or weft (leases in --store)")
	fs.StringVar(&f.clusterConfig, "cluster-config", "", "--ipam kubernetes: the cluster configuration as a JSON file (`weft cluster init --config-file`; a ConfigMap in a DaemonSet)")
	fs.StringVar(&f.etcdCA, "etcd-cafile", "", "CA of the etcd servers (enables TLS)")
	fs.StringVar(&f.etcdCert, "etcd-certfile", "", "client certificate for etcd")
	fs.StringVar(&f.etcdKey, "etcd-keyfile", "", "client key for etcd")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch f.proxy {
	case "nftables", "ebpf", "auto", "none":
	default:
		return fmt.Errorf("--proxy %q: want nftables, ebpf, auto or none", f.proxy)
	}
	if f.configFile != "" {
		if err := f.applyFile(fs); err != nil {
			return err
		}
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	if f.pprof {
		runtime.MemProfileRate = 64 << 10 // finer heap profiles than the default 512 KiB sampling
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	cidrs, err := parseCIDRs("--pod-cidr", f.podCIDR)
	if err != nil {
		return err
	}
	clusterCIDRs, err := parseCIDRs("--cluster-cidr", f.clusterCIDR)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	opts := agent.Options{
		NodeName: f.nodeName, StateDir: f.stateDir, RunDir: f.runDir, BPFDir: f.bpfDir, Proxy: f.proxy, DNSUpstreams: dnsUpstreams(f.dnsUpstream), PodCIDRs: cidrs, ClusterCIDRs: clusterCIDRs, MTU: f.mtu,
		MetricsAddr: f.metricsAddr, Pprof: f.pprof, Masquerade: f.masquerade, ManageSysctls: f.sysctls, Fastpath: f.fastpath, AntiSpoof: f.antiSpoof, Preflight: f.preflight, Log: log,
	}
	if f.ipam == "" && f.kubeconfig != "" {
		f.ipam = "kubernetes"
		if f.store != "" {
			f.ipam = "weft"
		}
	}
	switch {
	case f.ipam == "" || (f.ipam == "weft" && f.kubeconfig != ""):
	case f.ipam == "kubernetes" && f.kubeconfig != "":
		if f.store != "" {
			return fmt.Errorf("--ipam kubernetes takes blocks and peers from the Kubernetes API: drop --store (or use --ipam weft)")
		}
		if f.clusterConfig == "" {
			return fmt.Errorf("--ipam kubernetes needs --cluster-config (the file `weft cluster init --config-file` writes)")
		}
	case f.ipam == "kubernetes" || f.ipam == "weft":
		return fmt.Errorf("--ipam is for Kubernetes mode: it needs --kubeconfig")
	default:
		return fmt.Errorf("--ipam %q: want kubernetes or weft", f.ipam)
	}
	if f.ipam == "weft" && f.store == "" {
		return fmt.Errorf("--ipam weft needs --store: the nodes and their pod blocks are weft's leases there")
	}
	if f.store != "" || f.ipam == "kubernetes" {
		if len(cidrs) > 0 {
			return fmt.Errorf("--pod-cidr excludes --store and --ipam kubernetes: in a cluster the pod CIDR is assigned")
		}
		co := agent.ClusterOptions{NodeName: f.nodeName, StateDir: f.stateDir, RouteReflector: f.routeReflector, Log: log}
		if f.ipam == "kubernetes" {
			cfg, err := readClusterConfig(f.clusterConfig)
			if err != nil {
				return err
			}
			co.Config = &cfg
		}
		if f.kubeconfig != "" {
			if opts.Kube, err = kubeClient(f.kubeconfig); err != nil {
				return err
			}
		}
		if f.ipam == "kubernetes" {
			co.Members = &kube.Members{Client: opts.Kube, Log: log}
		} else {
			st, err := storeurl.Open(f.store, storeurl.TLSFiles{CA: f.etcdCA, Cert: f.etcdCert, Key: f.etcdKey})
			if err != nil {
				return err
			}
			defer st.Close()
			co.Store = st
		}
		if co.UnderlayDev = f.underlayDev; co.UnderlayDev == "" {
			u, err := hostnet.FindUnderlay("", netip.Addr{})
			if err != nil {
				return fmt.Errorf("--underlay-dev: %w", err)
			}
			co.UnderlayDev = u.Device
		}
		c, err := agent.Join(ctx, co)
		if err != nil {
			return err
		}
		opts.Cluster, opts.PodCIDRs = c, c.PodCIDRs()
		opts.ClusterCIDRs = append(opts.ClusterCIDRs, c.Config().ClusterCIDRs...)
		if opts.MTU == 0 {
			opts.MTU = c.PodMTU()
		}
	}
	a, err := agent.New(opts)
	if err != nil {
		return err
	}
	defer a.Close()
	return a.Run(ctx)
}

// readClusterConfig reads and checks the cluster configuration file of --ipam kubernetes.
func readClusterConfig(path string) (v1.ClusterConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return v1.ClusterConfig{}, fmt.Errorf("--cluster-config: %w", err)
	}
	cfg, err := v1.ParseClusterConfig(b)
	if err != nil {
		return cfg, fmt.Errorf("--cluster-config %s: %w", path, err)
	}
	return cfg, nil
}

// kubeClient is a client of the Kubernetes API a kubeconfig file names.
// "in-cluster" is the pod's service account (weftd in a DaemonSet).
func kubeClient(path string) (kubernetes.Interface, error) {
	var cfg *rest.Config
	var err error
	if path == "in-cluster" {
		cfg, err = rest.InClusterConfig()
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", path)
	}
	if err != nil {
		return nil, fmt.Errorf("--kubeconfig: %w", err)
	}
	cfg.UserAgent = "weftd"
	return kubernetes.NewForConfig(cfg)
}

func parseCIDRs(flagName, list string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range strings.Split(list, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("%s: %q is not a CIDR", flagName, s)
		}
		out = append(out, p)
	}
	return out, nil
}

// applyFile fills every setting the command line left unset from the configuration file.
func (f *flags) applyFile(fs *flag.FlagSet) error {
	b, err := os.ReadFile(f.configFile)
	if err != nil {
		return err
	}
	file, err := config.ParseAgentFile(b)
	if err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	str := func(name string, dst *string, v string) {
		if !set[name] && v != "" {
			*dst = v
		}
	}
	str("state-dir", &f.stateDir, file.StateDir)
	str("run-dir", &f.runDir, file.RunDir)
	str("node-name", &f.nodeName, file.NodeName)
	str("metrics-addr", &f.metricsAddr, file.MetricsAddr)
	str("log-level", &f.logLevel, file.LogLevel)
	if !set["pod-cidr"] && len(file.PodCIDRs) > 0 {
		var s []string
		for _, p := range file.PodCIDRs {
			s = append(s, p.String())
		}
		f.podCIDR = strings.Join(s, ",")
	}
	if !set["mtu"] && file.MTU != 0 {
		f.mtu = file.MTU
	}
	if !set["masquerade"] && file.Masquerade != nil {
		f.masquerade = *file.Masquerade
	}
	if !set["fastpath"] && file.Fastpath != nil {
		f.fastpath = *file.Fastpath
	}
	if !set["anti-spoofing"] && file.AntiSpoofing != nil {
		f.antiSpoof = *file.AntiSpoofing
	}
	return nil
}

// dnsUpstreams reads --dns-upstream: a list, "none", or "" for the host's resolv.conf.
func dnsUpstreams(flag string) []string {
	switch flag {
	case "none":
		return nil
	case "":
		cc, err := mdns.ClientConfigFromFile("/etc/resolv.conf")
		if err != nil {
			return nil
		}
		var out []string
		for _, s := range cc.Servers {
			out = append(out, net.JoinHostPort(s, cc.Port))
		}
		return out
	}
	var out []string
	for _, s := range strings.Split(flag, ",") {
		if s = strings.TrimSpace(s); s != "" {
			if _, _, err := net.SplitHostPort(s); err != nil {
				s = net.JoinHostPort(s, "53")
			}
			out = append(out, s)
		}
	}
	return out
}
