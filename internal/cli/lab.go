package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/lab"
)

func newLabCmd() *cobra.Command {
	labCmd := &cobra.Command{Use: "lab", Short: "Build weft clusters out of network namespaces on this machine"}
	var opts lab.Options
	var output string
	labCmd.PersistentFlags().StringVar(&opts.Name, "name", "weft", "lab name: the prefix of every namespace it makes")
	labCmd.PersistentFlags().StringVar(&opts.BinDir, "bin-dir", "", "folder holding weft, weftd and weft-cni (default: next to weft)")
	labCmd.PersistentFlags().StringVarP(&output, "output", "o", "table", "table or json")
	load := func() (*lab.Lab, error) { return lab.Load(opts.Name) }

	var detach bool
	up := &cobra.Command{
		Use: "up [--nodes 3] [--fabric vxlan|direct|bgp [--racks 2 [--tor bird|gobgpd|frr|none]]] [-d]", Short: "Bring a lab up: underlay, etcd, nodes running weftd", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := lab.Up(opts)
			if err != nil {
				return err
			}
			printStatus(cmd.OutOrStdout(), l)
			if detach {
				return nil
			}
			fmt.Fprintln(cmd.OutOrStdout(), "lab running; Ctrl-C tears it down")
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			<-ctx.Done()
			return l.Down()
		},
	}
	up.Flags().IntVar(&opts.Nodes, "nodes", 3, "how many nodes")
	up.Flags().StringVar(&opts.Fabric, "fabric", "vxlan", "vxlan, direct or bgp")
	up.Flags().IntVar(&opts.Racks, "racks", 0, "fabric bgp: spread nodes over this many L2 segments joined only by a BGP router")
	up.Flags().StringVar(&opts.TOR, "tor", "", "with --racks: the router's BGP daemon, bird (default), gobgpd or frr; none: it only forwards, and pod traffic between racks goes in VXLAN")
	up.Flags().StringVar(&opts.Mode, "mode", "bridge", "pod attachment: bridge or ptp")
	up.Flags().BoolVar(&opts.Kubernetes, "kubernetes", false, "run kube-apiserver and kube-controller-manager ($WEFT_KUBE_DIR or PATH) in the lab: weftds read it, pods get Pod objects")
	up.Flags().StringVar(&opts.Proxy, "proxy", "auto", "every weftd's service proxy: auto (weftd's default: ebpf where the kernel allows, else nftables), nftables or ebpf (socket load balancing in front of nftables)")
	up.Flags().BoolVarP(&detach, "detach", "d", false, "leave the lab running and return")

	pod := &cobra.Command{Use: "pod", Short: "Pods of a lab"}
	var node, labels, serve, podNamespace string
	add := &cobra.Command{
		Use: "add NAME --node N [--namespace NS] [--labels k=v,...] [--serve tcp:PORT|http:PORT]", Short: "Attach a pod through the real weft-cni exec path", Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			port, serveHTTP := 0, false
			if serve != "" {
				proto, p, ok := strings.Cut(serve, ":")
				n, err := strconv.Atoi(p)
				if !ok || (proto != "tcp" && proto != "http") || err != nil || n < 1 || n > 65535 {
					return usageErr("--serve %q: use tcp:PORT or http:PORT", serve)
				}
				port, serveHTTP = n, proto == "http"
			}
			l, err := load()
			if err != nil {
				return err
			}
			lbls := map[string]string{}
			for _, kv := range strings.Split(labels, ",") {
				if kv == "" {
					continue
				}
				k, v, ok := strings.Cut(kv, "=")
				if !ok || k == "" {
					return usageErr("--labels %q: use k=v,...", labels)
				}
				lbls[k] = v
			}
			nodeName, err := labNodeName(l, node)
			if err != nil {
				return err
			}
			p, err := l.AddPodServing(podNamespace, args[0], nodeName, port, serveHTTP, lbls)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s on %s: %v\n", p.Name, nodeName, p.IPs)
			return nil
		},
	}
	add.Flags().StringVar(&node, "node", "1", "node: its number (1) or its name as status prints it (node1)")
	add.Flags().StringVar(&labels, "labels", "", "k=v,... (recorded by weft-cni)")
	add.Flags().StringVar(&podNamespace, "namespace", "default", "the pod's (Kubernetes) namespace")
	add.Flags().StringVar(&serve, "serve", "", "run a server in the pod: tcp:PORT (TCP and UDP echo) or http:PORT (HTTP/1.1 and h2c: its name, /ws echo after an upgrade, gRPC health)")
	rm := &cobra.Command{
		Use: "rm NAME", Short: "Detach and delete a pod", Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := load()
			if err != nil {
				return err
			}
			return l.RemovePod(args[0])
		},
	}
	pod.AddCommand(add, rm)

	execCmd := &cobra.Command{
		Use: "exec POD -- CMD...", Short: "Run a command in a pod's network namespace", Args: minArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := load()
			if err != nil {
				return err
			}
			return l.Exec(args[0], args[1:])
		},
	}
	status := &cobra.Command{
		Use: "status", Short: "Nodes, leases, pods and health of a lab", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := load()
			if err != nil {
				return err
			}
			if output == "json" {
				return printJSON(cmd.OutOrStdout(), struct {
					Nodes []*lab.Node `json:"nodes"`
					Pods  []*lab.Pod  `json:"pods"`
					// The admin kubeconfig of a lab with Kubernetes, for the host (a
					// loopback port relayed into the lab).
					Kubeconfig string `json:"kubeconfig,omitempty"`
				}{l.State.Nodes, l.State.Pods, l.Kubeconfig()})
			}
			printStatus(cmd.OutOrStdout(), l)
			return nil
		},
	}
	check := &cobra.Command{
		Use: "check", Short: "Pod-to-pod matrix (ICMP, TCP), MTUs, DF probes and every service; non-zero on any failure", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := load()
			if err != nil {
				return err
			}
			r := l.Check()
			if output == "json" {
				if err := printJSON(cmd.OutOrStdout(), r); err != nil {
					return err
				}
			} else {
				bgp := ""
				if r.BGP > 0 {
					bgp = fmt.Sprintf(", %d BGP sessions and router routes", r.BGP)
				}
				if r.Ingress > 0 {
					bgp += fmt.Sprintf(", %d ingress route probes", r.Ingress)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%d pings, %d TCP round trips, %d MTUs, %d DF probes, %d service probes%s: %d failures\n", r.Pings, r.TCP, r.MTUs, r.DF, r.Services, bgp, len(r.Failures))
				for _, f := range r.Failures {
					fmt.Fprintln(cmd.OutOrStdout(), "  "+f)
				}
			}
			if !r.OK {
				return &ExitError{Code: 1, Err: fmt.Errorf("%d checks failed", len(r.Failures))}
			}
			return nil
		},
	}

	var pods int
	demo := &cobra.Command{
		Use:   "demo",
		Short: "Bring a lab up, attach pods across its nodes, check everything, tear it down",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDemo(cmd.OutOrStdout(), opts, pods)
		},
	}
	demo.Flags().IntVar(&pods, "pods", 3, "pods to attach (spread over the nodes)")
	demo.Flags().IntVar(&opts.Nodes, "nodes", 3, "how many nodes")
	demo.Flags().StringVar(&opts.Fabric, "fabric", "vxlan", "vxlan or direct")
	demo.Flags().StringVar(&opts.Mode, "mode", "bridge", "bridge or ptp")

	down := &cobra.Command{
		Use:   "down",
		Short: "Remove every namespace, process and file a lab made (safe to repeat)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := load()
			if err != nil {
				fmt.Fprintf(cmd.OutOrStdout(), "lab %s: nothing to remove\n", opts.Name)
				return nil
			}
			if err := l.Down(); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "lab %s removed\n", opts.Name)
			return nil
		},
	}

	// Helpers the lab runs as processes of their own inside its namespaces.
	var dataDir, listen string
	etcd := &cobra.Command{
		Use: "etcd", Hidden: true, Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return lab.RunEtcd(ctx, dataDir, listen)
		},
	}
	etcd.Flags().StringVar(&dataDir, "data-dir", "", "etcd data directory")
	etcd.Flags().StringVar(&listen, "listen", "", "client address HOST:PORT")
	var fwdListen, fwdNetns, fwdTo, fwdPortFile string
	forward := &cobra.Command{
		Use: "forward", Hidden: true, Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return lab.Forward(ctx, fwdListen, fwdNetns, fwdTo, fwdPortFile)
		},
	}
	forward.Flags().StringVar(&fwdListen, "listen", "127.0.0.1:0", "where to listen (this namespace)")
	forward.Flags().StringVar(&fwdNetns, "netns", "", "the namespace to dial in")
	forward.Flags().StringVar(&fwdTo, "to", "", "HOST:PORT to relay to")
	forward.Flags().StringVar(&fwdPortFile, "port-file", "", "write the port listened on here")
	var port int
	var serveHTTP bool
	var podName string
	serveCmd := &cobra.Command{
		Use: "serve", Hidden: true, Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			if serveHTTP {
				return lab.ServeHTTP(podName, port, ctx.Done())
			}
			return lab.ServeEcho(port, ctx.Done())
		},
	}
	serveCmd.Flags().IntVar(&port, "port", 8080, "TCP and UDP port")
	serveCmd.Flags().BoolVar(&serveHTTP, "http", false, "serve HTTP instead of echo")
	serveCmd.Flags().StringVar(&podName, "pod", "", "the pod's name, in HTTP answers")

	nodeCmd := &cobra.Command{Use: "node", Short: "Nodes of a lab"}
	var kill bool
	restart := &cobra.Command{
		Use: "restart NODE [--kill]", Short: "Restart a node's weftd (SIGTERM, or SIGKILL as a crash); its pods keep running", Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := load()
			if err != nil {
				return err
			}
			name, err := labNodeName(l, args[0])
			if err != nil {
				return err
			}
			sig := syscall.SIGTERM
			if kill {
				sig = syscall.SIGKILL
			}
			if err := l.RestartNode(name, sig); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "weftd on %s restarted\n", name)
			return nil
		},
	}
	restart.Flags().BoolVar(&kill, "kill", false, "SIGKILL instead of SIGTERM")
	nodeCmd.AddCommand(restart)

	labCmd.AddCommand(up, pod, nodeCmd, execCmd, status, check, demo, down, etcd, forward, serveCmd, newLabServiceCmd(), newLabApplyCmd(), newLabDNSCmd(), newLabBGPCmd(), newLabIngressCmd())
	return labCmd
}

func printStatus(w io.Writer, l *lab.Lab) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	proxy := l.State.Proxy
	if proxy == "" {
		proxy = "auto"
	}
	source := "store " + l.State.Store
	if l.State.Kubernetes {
		source = "weftds read the Kubernetes API (no store)"
	}
	fmt.Fprintf(tw, "lab %s: %d nodes, %s fabric, %s mode, %s proxy, %s\n", l.State.Name, len(l.State.Nodes), l.State.Fabric, l.State.Mode, proxy, source)
	if kc := l.Kubeconfig(); kc != "" {
		fmt.Fprintf(tw, "kubernetes: kubectl --kubeconfig %s\n", kc)
	}
	fmt.Fprintln(tw, "NODE\tUNDERLAY\tPOD CIDRS\tMTU\tWEFTD")
	for _, n := range l.State.Nodes {
		up := "running"
		if syscall.Kill(n.PID, 0) != nil {
			up = "DOWN"
		}
		fmt.Fprintf(tw, "%s\t%s\t%v\t%d\t%s (pid %d)\n", n.Name, n.Underlay, n.PodCIDRs, n.MTU, up, n.PID)
	}
	if len(l.State.Pods) > 0 {
		fmt.Fprintln(tw, "\nPOD\tNODE\tADDRESSES\tMTU\tSERVES")
		for _, p := range l.State.Pods {
			var ips []string
			for _, ip := range p.IPs {
				ips = append(ips, ip.String())
			}
			serves := "-"
			if p.Serve > 0 {
				serves = fmt.Sprintf("tcp:%d", p.Serve)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", p.Name, p.Node, strings.Join(ips, ", "), p.MTU, serves)
		}
	}
	_ = tw.Flush()
}

func runDemo(w io.Writer, opts lab.Options, pods int) (err error) {
	fmt.Fprintf(w, "== weft lab demo: %d nodes (%s fabric, embedded etcd), %d pods through weft-cni\n", opts.Nodes, opts.Fabric, pods)
	l, err := lab.Up(opts)
	if err != nil {
		return err
	}
	defer func() {
		if derr := l.Down(); derr != nil && err == nil {
			err = derr
		}
		fmt.Fprintf(w, "\n== torn down: namespaces, weftd and etcd processes, state removed\n")
	}()
	for i := 1; i <= pods; i++ {
		node := (i-1)%len(l.State.Nodes) + 1
		if _, err := l.AddPod(fmt.Sprintf("pod%d", i), fmt.Sprintf("node%d", node), 8080, map[string]string{"app": "demo"}); err != nil {
			return err
		}
	}
	printStatus(w, l)

	fmt.Fprintln(w, "\nping matrix (ICMP echo, IPv4 and IPv6, from row to column):")
	results := l.PingMatrix()
	cell := map[string]string{}
	failed := 0
	for _, r := range results {
		k := r.From + ">" + r.To
		mark := "ok"
		if r.Err != nil {
			mark, failed = "FAIL", failed+1
		}
		if prev, seen := cell[k]; seen && prev != "ok" {
			mark = prev
		}
		cell[k] = mark
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	header := "FROM \\ TO"
	for _, p := range l.State.Pods {
		header += "\t" + p.Name
	}
	fmt.Fprintln(tw, header)
	for _, src := range l.State.Pods {
		row := src.Name
		for _, dst := range l.State.Pods {
			if src == dst {
				row += "\t-"
			} else {
				row += "\t" + cell[src.Name+">"+dst.Name]
			}
		}
		fmt.Fprintln(tw, row)
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "\n%d of %d pings answered (IPv4 and IPv6)\n", len(results)-failed, len(results))

	// A service in front of the pods: one stable address per family, load-balanced over
	// every node's pods, and a node port on every node.
	fmt.Fprintln(w, "\nservice demo (weft lab service add demo --selector app=demo --port 80:8080/tcp --dual-stack --type NodePort):")
	if err := l.Weft(nil, w, w, "service", "create", "demo", "--selector", "app=demo", "--port", "80:8080/tcp",
		"--dual-stack", "--type", "NodePort"); err != nil {
		return fmt.Errorf("create the demo service: %w", err)
	}
	if err := l.Weft(nil, w, w, "service", "endpoints", "demo"); err != nil {
		return err
	}
	// North-south: an HTTP pod behind a service, routed by host from every node's
	// weft-ingress over HTTP and HTTPS (a certificate from the lab's test CA).
	fmt.Fprintln(w, "\ningress web.demo.test (weft lab apply -f: a Kubernetes Ingress; weft lab ingress cert add web-tls --host web.demo.test):")
	if _, err := l.AddPodServing("default", "web", "node1", 8081, true, map[string]string{"app": "web"}); err != nil {
		return err
	}
	if err := l.Weft(nil, io.Discard, w, "service", "create", "web", "--selector", "app=web", "--port", "80:8081/tcp"); err != nil {
		return fmt.Errorf("create the web service: %w", err)
	}
	certFile, keyFile, err := l.IssueCert("web-tls", []string{"web.demo.test"})
	if err != nil {
		return err
	}
	if err := l.Weft(nil, io.Discard, w, "ingress", "cert", "add", "web-tls", "--cert", certFile, "--key", keyFile); err != nil {
		return err
	}
	if err := l.Weft(strings.NewReader(demoIngress), w, w, "apply", "-f", "-"); err != nil {
		return err
	}
	time.Sleep(time.Second) // every node's weft-ingress picks the route up
	r := l.Check()
	fmt.Fprintf(w, "check: %d pings, %d TCP round trips, %d pod MTUs, %d DF probes at the pod MTU, %d service probes (ClusterIP from every node, node port from outside), %d ingress probes (every node, HTTP and HTTPS, from outside): %d failures\n",
		r.Pings, r.TCP, r.MTUs, r.DF, r.Services, r.Ingress, len(r.Failures))
	for _, f := range r.Failures {
		fmt.Fprintln(w, "  "+f)
	}
	if !r.OK {
		return &ExitError{Code: 1, Err: fmt.Errorf("%d checks failed", len(r.Failures))}
	}
	return nil
}

const demoIngress = `apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web}
spec:
  tls: [{hosts: [web.demo.test], secretName: web-tls}]
  rules:
  - host: web.demo.test
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}
`

// labNodeName accepts a node as `weft lab status` names it (node1) or by its number (1).
func labNodeName(l *lab.Lab, node string) (string, error) {
	name := node
	if n, err := strconv.Atoi(node); err == nil {
		name = fmt.Sprintf("node%d", n)
	}
	known := make([]string, 0, len(l.State.Nodes))
	for _, n := range l.State.Nodes {
		if n.Name == name {
			return name, nil
		}
		known = append(known, n.Name)
	}
	return "", usageErr("--node %q: no such node in lab %s (nodes: %s; a number works too)", node, l.State.Name, strings.Join(known, ", "))
}

// newLabServiceCmd is `weft service` pointed at a lab: the same flags and JSON, run in
// the lab's underlay namespace against its store. `add` is `create`.
func newLabServiceCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "service add|ls|get|rm|endpoints ... | programmed NODE [--name LAB]",
		Short: "Services of a lab (the flags and JSON of weft service)", DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			name, rest, help := labNameArg(args)
			if help || len(rest) == 0 {
				return cmd.Help()
			}
			if rest[0] == "add" {
				rest[0] = "create"
			}
			if rest[0] == "programmed" { // read from a node's namespace, not the store
				if len(rest) < 2 {
					return usageErr("weft lab service programmed NODE")
				}
				l, err := lab.Load(name)
				if err != nil {
					return err
				}
				node, err := labNodeName(l, rest[1])
				if err != nil {
					return err
				}
				args := append([]string{"service", "programmed"}, rest[2:]...)
				for _, n := range l.State.Nodes {
					if n.Name == node {
						args = append(args, "--bpf-dir", filepath.Join(n.RunDir, "bpf"))
					}
				}
				return l.WeftOnNode(node, cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr(), args...)
			}
			if l, err := lab.Load(name); err == nil && l.State.Kubernetes {
				// A Kubernetes lab's services live in its API (weft runs in the underlay).
				rest = append(rest, "--kubeconfig", l.UnderlayKubeconfig())
			}
			return runInLab(cmd, name, append([]string{"service"}, rest...))
		},
	}
}

// newLabApplyCmd is `weft apply` pointed at a lab.
func newLabApplyCmd() *cobra.Command {
	return &cobra.Command{
		Use: "apply -f FILE [--name LAB]", Short: "Apply Kubernetes manifests to a lab (as weft apply)", DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			name, rest, help := labNameArg(args)
			if help {
				return cmd.Help()
			}
			return runInLab(cmd, name, append([]string{"apply"}, rest...))
		},
	}
}

func runInLab(cmd *cobra.Command, name string, args []string) error {
	l, err := lab.Load(name)
	if err != nil {
		return err
	}
	if err := l.Weft(cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr(), args...); err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return &ExitError{Code: ee.ExitCode(), Err: errors.New("")}
		}
		return err
	}
	return nil
}

// labNameArg takes --name LAB (or --name=LAB) out of args passed through unparsed.
func labNameArg(args []string) (name string, rest []string, help bool) {
	name = "weft"
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--name" && i+1 < len(args):
			name = args[i+1]
			i++
		case strings.HasPrefix(a, "--name="):
			name = strings.TrimPrefix(a, "--name=")
		case a == "-h" || a == "--help":
			help = true
		default:
			rest = append(rest, a)
		}
	}
	return name, rest, help
}

// newLabDNSCmd is `weft dns` pointed at a lab: `query NAME [TYPE] --node N` asks that
// node's server from the node itself; `records` reads the lab's store.
func newLabDNSCmd() *cobra.Command {
	return &cobra.Command{
		Use: "dns query NAME [TYPE] --node N | records [--name LAB]", Short: "The lab's cluster DNS (as weft dns)", DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			name, rest, help := labNameArg(args)
			if help || len(rest) == 0 {
				return cmd.Help()
			}
			if rest[0] != "query" {
				return runInLab(cmd, name, append([]string{"dns"}, rest...))
			}
			node := "1"
			var q []string
			for i := 0; i < len(rest); i++ {
				if rest[i] == "--node" && i+1 < len(rest) {
					node = rest[i+1]
					i++
					continue
				}
				q = append(q, rest[i])
			}
			l, err := lab.Load(name)
			if err != nil {
				return err
			}
			nodeName, err := labNodeName(l, node)
			if err != nil {
				return err
			}
			n := l.NodeRunDir(nodeName)
			if err := l.WeftOnNode(nodeName, cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr(), append(append([]string{"dns"}, q...), "--run-dir", n)...); err != nil {
				if ee, ok := err.(*exec.ExitError); ok {
					return &ExitError{Code: ee.ExitCode(), Err: errors.New("")}
				}
				return err
			}
			return nil
		},
	}
}

// newLabBGPCmd is `weft bgp` pointed at a lab: `peers|routes NODE` asks that node's
// weftd; `router` prints the rack router's own view (birdc, gobgp or vtysh).
func newLabBGPCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "bgp peers|routes NODE [-o json] | router [--name LAB]",
		Short: "BGP in a lab: a node's sessions and routes, or the rack router's view", DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			name, rest, help := labNameArg(args)
			if help || len(rest) == 0 {
				return cmd.Help()
			}
			l, err := lab.Load(name)
			if err != nil {
				return err
			}
			switch rest[0] {
			case "router":
				out, err := l.RouterView()
				if err != nil {
					return err
				}
				_, err = io.WriteString(cmd.OutOrStdout(), out)
				return err
			case "peers", "routes":
				if len(rest) < 2 {
					return usageErr("weft lab bgp %s NODE", rest[0])
				}
				node, err := labNodeName(l, rest[1])
				if err != nil {
					return err
				}
				args := append([]string{"bgp", rest[0], "--socket", filepath.Join(l.NodeRunDir(node), "weft.sock")}, rest[2:]...)
				return l.WeftOnNode(node, cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr(), args...)
			}
			return usageErr("weft lab bgp peers|routes NODE | router")
		},
	}
}

// newLabIngressCmd is `weft lab ingress`: the lab's ingresses (as weft ingress), and
// certificates issued by the lab's test CA.
func newLabIngressCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use: "ingress", Short: "Ingresses of a lab (as weft ingress); cert add issues certificates from the lab's test CA", DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			name, rest, help := labNameArg(args)
			if help && len(rest) == 0 {
				return cmd.Help()
			}
			if len(rest) >= 2 && rest[0] == "cert" && rest[1] == "add" {
				return labCertAdd(cmd, name, rest[2:])
			}
			return runInLab(cmd, name, append([]string{"ingress"}, rest...))
		},
	}
	return cmd
}

// labCertAdd is `weft lab ingress cert add NAME --host H [--host H] [-n NS]`: a
// certificate for the hosts signed by the lab's CA, stored for ingresses to name. With
// --cert and --key it stores those files instead.
func labCertAdd(cmd *cobra.Command, labName string, args []string) error {
	fs := pflag.NewFlagSet("cert add", pflag.ContinueOnError)
	hosts := fs.StringArray("host", nil, "a DNS name the certificate is for (repeatable)")
	certFile := fs.String("cert", "", "a certificate file instead (PEM)")
	keyFile := fs.String("key", "", "its key (PEM)")
	ns := fs.StringP("namespace", "n", "default", "namespace")
	if err := fs.Parse(args); err != nil {
		return usageErr("%v", err)
	}
	if fs.NArg() != 1 {
		return usageErr("weft lab ingress cert add NAME --host HOST [--host HOST] [-n NS]")
	}
	l, err := lab.Load(labName)
	if err != nil {
		return err
	}
	cf, kf := *certFile, *keyFile
	if cf == "" {
		if len(*hosts) == 0 {
			return usageErr("--host is required (or --cert and --key)")
		}
		for _, h := range *hosts {
			if err := v1.ValidHost(h); err != nil {
				return badInput(err)
			}
		}
		if cf, kf, err = l.IssueCert(fs.Arg(0), *hosts); err != nil {
			return err
		}
	}
	return runInLab(cmd, labName, []string{"ingress", "cert", "add", fs.Arg(0), "--cert", cf, "--key", kf, "-n", *ns})
}
