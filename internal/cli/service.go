package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/endpoints"
	"github.com/weftnet/weft/internal/kube"
	"github.com/weftnet/weft/internal/manifest"
	"github.com/weftnet/weft/internal/proxy/nftproxy"
	"github.com/weftnet/weft/internal/proxy/nodeportlb"
	"github.com/weftnet/weft/internal/proxy/sockproxy"
	"github.com/weftnet/weft/internal/resources"
	"github.com/weftnet/weft/internal/store"
	"github.com/weftnet/weft/internal/store/storeurl"
)

// storeFlags are the flags every command on the cluster store takes.
type storeFlags struct {
	url    string
	tls    storeurl.TLSFiles
	output string
	// kubeconfig (service commands): read services from a Kubernetes API instead.
	kubeconfig string
}

func (f *storeFlags) register(cmd *cobra.Command) {
	cmd.PersistentFlags().StringVar(&f.url, "store", os.Getenv("WEFT_STORE"), "cluster store: etcd://HOST:PORT[,...] or bolt:///PATH (default $WEFT_STORE)")
	cmd.PersistentFlags().StringVar(&f.tls.CA, "etcd-cafile", "", "CA of the etcd servers")
	cmd.PersistentFlags().StringVar(&f.tls.Cert, "etcd-certfile", "", "client certificate")
	cmd.PersistentFlags().StringVar(&f.tls.Key, "etcd-keyfile", "", "client key")
	cmd.PersistentFlags().StringVarP(&f.output, "output", "o", "table", "table or json")
}

func (f *storeFlags) open() (store.Store, error) {
	if f.url == "" {
		return nil, usageErr("--store is required (or set WEFT_STORE)")
	}
	return storeurl.Open(f.url, f.tls)
}

// withClient runs fn with a resources client and a deadline.
func (f *storeFlags) withClient(fn func(ctx context.Context, c resources.Client) error) error {
	st, err := f.open()
	if err != nil {
		return err
	}
	defer st.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return fn(ctx, resources.Client{Store: st})
}

// serviceReader is what the reading service commands need, from weft's store or from a
// Kubernetes API (--kubeconfig).
type serviceReader interface {
	ListServices(ctx context.Context) ([]v1.Service, error)
	ListPods(ctx context.Context) ([]v1.Pod, error)
}

// withReader runs fn over the Kubernetes API when --kubeconfig is given, else over the
// store.
func (f *storeFlags) withReader(fn func(ctx context.Context, r serviceReader) error) error {
	if f.kubeconfig == "" {
		return f.withClient(func(ctx context.Context, c resources.Client) error { return fn(ctx, c) })
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", f.kubeconfig)
	if err != nil {
		return fmt.Errorf("--kubeconfig: %w", err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	snap, err := kube.Take(ctx, client)
	if err != nil {
		return err
	}
	return fn(ctx, snap)
}

// refuseWritesInKubernetes: with --kubeconfig, weft reads; the API's own tools write.
func (f *storeFlags) refuseWritesInKubernetes(what string) error {
	if f.kubeconfig != "" {
		return usageErr("in Kubernetes mode weft only reads %s: write them with kubectl (kubectl apply -f FILE)", what)
	}
	return nil
}

// serviceCIDRs reads the cluster's service CIDRs.
func serviceCIDRs(ctx context.Context, c resources.Client) ([]netip.Prefix, error) {
	kv, err := c.Store.Get(ctx, resources.ConfigKey)
	if errors.Is(err, store.ErrNotFound) {
		return nil, errors.New("the cluster is not initialised (weft cluster init)")
	}
	if err != nil {
		return nil, err
	}
	var cfg v1.ClusterConfig
	if err := json.Unmarshal(kv.Value, &cfg); err != nil {
		return nil, err
	}
	return cfg.ServiceCIDRs, nil
}

func newServiceCmd() *cobra.Command {
	var sf storeFlags
	var namespace string
	cmd := &cobra.Command{Use: "service", Aliases: []string{"svc"}, Short: "Services: stable virtual addresses load-balanced to pods"}
	sf.register(cmd)
	cmd.PersistentFlags().StringVar(&sf.kubeconfig, "kubeconfig", "", "Kubernetes mode: read services, their EndpointSlices and pods from this API (writes belong to kubectl)")
	cmd.PersistentFlags().StringVarP(&namespace, "namespace", "n", "default", "the services' namespace")

	var o serviceOpts
	create := &cobra.Command{
		Use:   "create NAME --port [NAME=]PORT[:TARGET][/PROTO] [--selector k=v,...|--endpoint IP:PORT ...]",
		Short: "Create a service; its ClusterIP(s) and node ports are allocated", Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := sf.refuseWritesInKubernetes("services"); err != nil {
				return err
			}
			svc, err := o.build(args[0], namespace)
			if err != nil {
				return err
			}
			return sf.withClient(func(ctx context.Context, c resources.Client) error {
				cidrs, err := serviceCIDRs(ctx, c)
				if err != nil {
					return err
				}
				got, err := c.CreateService(ctx, svc, cidrs)
				if err != nil {
					return &ExitError{Code: 1, Err: err}
				}
				if sf.output == "json" {
					return printJSON(cmd.OutOrStdout(), got)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "service %s created: %s\n", got.Key(), describeAddrs(got))
				return nil
			})
		},
	}
	o.register(create)

	ls := &cobra.Command{
		Use: "ls", Short: "List services (all namespaces with -A)", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			all, _ := cmd.Flags().GetBool("all-namespaces")
			return sf.withReader(func(ctx context.Context, c serviceReader) error {
				svcs, err := c.ListServices(ctx)
				if err != nil {
					return err
				}
				pods, err := c.ListPods(ctx)
				if err != nil {
					return err
				}
				out := []v1.Service{}
				for _, s := range svcs {
					if all || s.Namespace == namespace {
						out = append(out, s)
					}
				}
				if sf.output == "json" {
					return printJSON(cmd.OutOrStdout(), out)
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAMESPACE\tNAME\tTYPE\tCLUSTER-IPS\tPORTS\tENDPOINTS")
				for _, s := range out {
					ready := 0
					for _, p := range endpoints.For(&s, pods) {
						ready += len(endpoints.Serving(p.Endpoints))
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\n", s.Namespace, s.Name, s.Type, describeAddrs(s), describePorts(s), ready)
				}
				return tw.Flush()
			})
		},
	}
	ls.Flags().BoolP("all-namespaces", "A", false, "every namespace")

	get := &cobra.Command{
		Use: "get NAME", Short: "One service, as stored (with its allocated addresses and ports)", Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return sf.withReader(func(ctx context.Context, c serviceReader) error {
				s, err := getService(ctx, c, namespace, args[0])
				if err != nil {
					return err
				}
				if sf.output == "json" {
					return printJSON(cmd.OutOrStdout(), s)
				}
				w := cmd.OutOrStdout()
				fmt.Fprintf(w, "service %s\ntype %s\naddresses %s\nports %s\n", s.Key(), s.Type, describeAddrs(s), describePorts(s))
				if len(s.Selector) > 0 {
					fmt.Fprintf(w, "selector %s\n", s.SelectorString())
				}
				if s.SessionAffinity == v1.AffinityClientIP {
					fmt.Fprintf(w, "affinity ClientIP %ds\n", s.AffinityTimeout)
				}
				return nil
			})
		},
	}

	rm := &cobra.Command{
		Use: "rm NAME...", Short: "Delete services and free their addresses and node ports", Args: minArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := sf.refuseWritesInKubernetes("services"); err != nil {
				return err
			}
			return sf.withClient(func(ctx context.Context, c resources.Client) error {
				for _, name := range args {
					if err := c.DeleteService(ctx, namespace, name); errors.Is(err, store.ErrNotFound) {
						return &ExitError{Code: 1, Err: fmt.Errorf("service %s/%s not found", namespace, name)}
					} else if err != nil {
						return err
					}
					if sf.output != "json" {
						fmt.Fprintf(cmd.OutOrStdout(), "service %s/%s deleted\n", namespace, name)
					}
				}
				return nil
			})
		},
	}

	eps := &cobra.Command{
		Use: "endpoints NAME", Short: "A service's endpoints per port, from the pods of every node", Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return sf.withReader(func(ctx context.Context, c serviceReader) error {
				s, err := getService(ctx, c, namespace, args[0])
				if err != nil {
					return err
				}
				pods, err := c.ListPods(ctx)
				if err != nil {
					return err
				}
				ports := endpoints.For(&s, pods)
				if sf.output == "json" {
					type port struct {
						Name      string        `json:"name,omitempty"`
						Protocol  string        `json:"protocol"`
						Port      int           `json:"port"`
						Endpoints []v1.Endpoint `json:"endpoints"`
					}
					out := struct {
						Service string `json:"service"`
						Ports   []port `json:"ports"`
					}{Service: s.Key()}
					for _, p := range ports {
						out.Ports = append(out.Ports, port{p.Name, p.Protocol, p.Port, p.Endpoints})
					}
					return printJSON(cmd.OutOrStdout(), out)
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "PORT\tENDPOINT\tNODE\tPOD\tSTATE")
				for _, p := range ports {
					for _, e := range p.Endpoints {
						state := "ready"
						switch {
						case e.Terminating:
							state = "terminating"
						case !e.Ready:
							state = "not ready"
						}
						fmt.Fprintf(tw, "%d/%s\t%s\t%s\t%s\t%s\n", p.Port, p.Protocol, e, e.Node, e.Pod, state)
					}
				}
				return tw.Flush()
			})
		},
	}
	var bpfDir string
	programmed := &cobra.Command{
		Use: "programmed", Short: "What this node's kernel sends where: weft's service table (in this network namespace) and, with --proxy ebpf, the socket load balancer's maps", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ports, err := nftproxy.Programmed()
			if err != nil {
				return err
			}
			sock, err := sockproxy.ReadPinned(filepath.Join(bpfDir, "sock"))
			if err != nil {
				return fmt.Errorf("socket load balancer maps: %w", err)
			}
			nodePorts, err := nodeportlb.ReadPinned(filepath.Join(bpfDir, "nodeport"))
			if err != nil {
				return fmt.Errorf("node port balancer maps: %w", err)
			}
			if sf.output == "json" {
				return printJSON(cmd.OutOrStdout(), struct {
					NFTables  []nftproxy.ProgrammedPort `json:"nftables"`
					Sockets   []sockproxy.ServicePort   `json:"sockets,omitempty"`
					NodePorts []nodeportlb.NodePort     `json:"nodePorts,omitempty"`
				}{ports, sock, nodePorts})
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ADDRESS\tPROTOCOL\tBACKENDS")
			for _, p := range ports {
				what := strings.Join(p.Backends, ",")
				if p.Verdict != "" {
					what = p.Verdict
				}
				addr := p.Address
				if p.NodePort {
					addr = "node port " + strings.TrimPrefix(addr, ":")
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\n", addr, p.Protocol, what)
			}
			if nodePorts != nil {
				fmt.Fprintln(tw, "\nMAGLEV NODE PORT\tPROTOCOL\tBACKENDS\tPACKETS MARKED")
				for _, p := range nodePorts {
					fmt.Fprintf(tw, "%d %s\t%s\t%d\t%d\n", p.Port, p.Family, p.Protocol, p.Backends, p.Marked)
				}
			}
			if sock != nil {
				fmt.Fprintln(tw, "\nSOCKET LB ADDRESS\tPROTOCOL\tBACKENDS\tTRANSLATED\tREFUSED")
				for _, p := range sock {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\n", p.Address, p.Protocol, strings.Join(p.Backends, ","), p.Translated, p.Refused)
				}
			}
			return tw.Flush()
		},
	}
	programmed.Flags().StringVar(&bpfDir, "bpf-dir", "/run/weft/bpf", "weftd's bpffs (its --bpf-dir)")
	cmd.AddCommand(create, ls, get, rm, eps, programmed)
	return cmd
}

// serviceOpts are `weft service create`'s flags.
type serviceOpts struct {
	ports, endpointList, ips       []string
	selector, typ, affinity        string
	externalPolicy, internalPolicy string
	nodePort                       int
	headless, dualStack            bool
}

func (o *serviceOpts) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringArrayVar(&o.ports, "port", nil, "[NAME=]PORT[:TARGET][/tcp|udp|sctp]; TARGET a number or a pod port's name (repeatable)")
	f.StringVar(&o.selector, "selector", "", "pods by label: k=v,...")
	f.StringArrayVar(&o.endpointList, "endpoint", nil, "an endpoint IP:PORT instead of a selector, e.g. a node's address (repeatable)")
	f.StringVar(&o.typ, "type", "ClusterIP", "ClusterIP or NodePort")
	f.IntVar(&o.nodePort, "node-port", 0, "the node port of the (single) port (default: allocated)")
	f.StringVar(&o.affinity, "affinity", "", "client-ip[:SECONDS] (default timeout 10800)")
	f.StringArrayVar(&o.ips, "ip", nil, "ask for this ClusterIP")
	f.BoolVar(&o.headless, "headless", false, "no ClusterIP: endpoints only (for DNS)")
	f.BoolVar(&o.dualStack, "dual-stack", false, "one ClusterIP of each family")
	f.StringVar(&o.externalPolicy, "external-traffic-policy", "", "Cluster or Local (NodePort)")
	f.StringVar(&o.internalPolicy, "internal-traffic-policy", "", "Cluster or Local")
}

func (o *serviceOpts) build(name, namespace string) (v1.Service, error) {
	s := v1.Service{Name: name, Namespace: namespace, Type: o.typ, InternalTrafficPolicy: o.internalPolicy, ExternalTrafficPolicy: o.externalPolicy}
	if strings.EqualFold(s.Type, "nodeport") {
		s.Type = v1.ServiceTypeNodePort
	} else if strings.EqualFold(s.Type, "clusterip") {
		s.Type = v1.ServiceTypeClusterIP
	}
	for _, p := range o.ports {
		sp, err := parsePortFlag(p)
		if err != nil {
			return s, badInput(err)
		}
		s.Ports = append(s.Ports, sp)
	}
	if o.nodePort != 0 {
		if len(s.Ports) != 1 {
			return s, usageErr("--node-port needs exactly one --port")
		}
		s.Ports[0].NodePort = o.nodePort
	}
	if o.selector != "" {
		s.Selector = map[string]string{}
		for _, kv := range strings.Split(o.selector, ",") {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				return s, usageErr("--selector %q: use k=v,...", o.selector)
			}
			s.Selector[k] = v
		}
	}
	for _, e := range o.endpointList {
		ap, err := netip.ParseAddrPort(e)
		if err != nil {
			return s, usageErr("--endpoint %q: use IP:PORT ([IPv6]:PORT)", e)
		}
		s.Endpoints = append(s.Endpoints, ap)
	}
	if o.affinity != "" {
		kind, secs, _ := strings.Cut(o.affinity, ":")
		if kind != "client-ip" {
			return s, usageErr("--affinity %q: use client-ip[:SECONDS]", o.affinity)
		}
		s.SessionAffinity = v1.AffinityClientIP
		if secs != "" {
			n, err := strconv.Atoi(secs)
			if err != nil {
				return s, usageErr("--affinity %q: SECONDS is not a number", o.affinity)
			}
			s.AffinityTimeout = n
		}
	}
	switch {
	case o.headless && len(o.ips) > 0:
		return s, usageErr("--headless and --ip exclude each other")
	case o.headless:
		s.ClusterIP = v1.ClusterIPNone
	case len(o.ips) > 1:
		return s, usageErr("--ip: give one address (with --dual-stack the other family's is allocated)")
	case len(o.ips) == 1:
		s.ClusterIP = o.ips[0]
	}
	if o.dualStack {
		s.IPFamilies = []string{"IPv4", "IPv6"}
		if a, err := netip.ParseAddr(s.ClusterIP); err == nil && a.Is6() {
			s.IPFamilies = []string{"IPv6", "IPv4"}
		}
	}
	s.Defaults()
	if err := s.Validate(); err != nil {
		return s, badInput(err)
	}
	return s, nil
}

// parsePortFlag reads [NAME=]PORT[:TARGET][/PROTO].
func parsePortFlag(v string) (v1.ServicePort, error) {
	var sp v1.ServicePort
	rest := v
	if name, r, ok := strings.Cut(rest, "="); ok {
		sp.Name, rest = name, r
	}
	rest, proto, hasProto := strings.Cut(rest, "/")
	sp.Protocol = v1.ProtocolTCP
	if hasProto {
		sp.Protocol = strings.ToUpper(proto)
	}
	port, target, hasTarget := strings.Cut(rest, ":")
	n, err := strconv.Atoi(port)
	if err != nil {
		return sp, fmt.Errorf("--port %q: PORT %q is not a number", v, port)
	}
	sp.Port = n
	if hasTarget {
		if t, err := strconv.Atoi(target); err == nil {
			sp.TargetPort = t
		} else {
			sp.TargetPortName = target
		}
	}
	return sp, nil
}

func describeAddrs(s v1.Service) string {
	if s.Headless() {
		return "None (headless)"
	}
	parts := make([]string, len(s.ClusterIPs))
	for i, a := range s.ClusterIPs {
		parts[i] = a.String()
	}
	return strings.Join(parts, ",")
}

func describePorts(s v1.Service) string {
	parts := make([]string, len(s.Ports))
	for i, p := range s.Ports {
		target := ""
		switch {
		case p.TargetPortName != "":
			target = ":" + p.TargetPortName
		case p.TargetPort != 0 && p.TargetPort != p.Port:
			target = ":" + strconv.Itoa(p.TargetPort)
		}
		np := ""
		if p.NodePort != 0 {
			np = fmt.Sprintf("(node %d)", p.NodePort)
		}
		parts[i] = fmt.Sprintf("%d%s/%s%s", p.Port, target, strings.ToLower(p.Protocol), np)
	}
	return strings.Join(parts, ",")
}

func newApplyCmd() *cobra.Command {
	var sf storeFlags
	var files []string
	cmd := &cobra.Command{
		Use: "apply -f FILE", Short: "Create the objects of manifests (v1 Service, networking.k8s.io/v1 NetworkPolicy and Ingress, weft/v1 Ingress) in the cluster store", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(files) == 0 {
				return usageErr("-f FILE is required (- for standard input)")
			}
			var objs []manifest.Object
			for _, f := range files {
				var data []byte
				var err error
				if f == "-" {
					data, err = io.ReadAll(cmd.InOrStdin())
				} else {
					data, err = os.ReadFile(f)
				}
				if err != nil {
					return err
				}
				o, err := manifest.Parse(data)
				if err != nil {
					return badInput(fmt.Errorf("%s: %w", f, err))
				}
				objs = append(objs, o...)
			}
			return sf.withClient(func(ctx context.Context, c resources.Client) error {
				cidrs, err := serviceCIDRs(ctx, c)
				if err != nil {
					return err
				}
				created, applied, ingresses := []v1.Service{}, []v1.NetworkPolicy{}, []v1.Ingress{}
				for _, o := range objs {
					if o.Ingress != nil {
						if err := c.PutIngress(ctx, *o.Ingress); err != nil {
							return &ExitError{Code: 1, Err: err}
						}
						ingresses = append(ingresses, *o.Ingress)
						continue
					}
					if o.Policy != nil { // created or replaced, as kubectl apply does
						if err := c.PutPolicy(ctx, *o.Policy); err != nil {
							return &ExitError{Code: 1, Err: err}
						}
						applied = append(applied, *o.Policy)
						continue
					}
					got, err := c.CreateService(ctx, *o.Service, cidrs)
					if errors.Is(err, resources.ErrExists) {
						// Applying again is not an error when nothing would change.
						old, gerr := c.GetService(ctx, o.Service.Namespace, o.Service.Name)
						if gerr == nil && sameSpec(old, *o.Service) {
							created = append(created, old)
							continue
						}
						return &ExitError{Code: 1, Err: fmt.Errorf("%w (changing a service in place is not supported yet: weft service rm it first)", err)}
					}
					if err != nil {
						return &ExitError{Code: 1, Err: err}
					}
					created = append(created, got)
				}
				if sf.output == "json" {
					return printJSON(cmd.OutOrStdout(), struct {
						Services        []v1.Service       `json:"services"`
						NetworkPolicies []v1.NetworkPolicy `json:"networkPolicies"`
						Ingresses       []v1.Ingress       `json:"ingresses"`
					}{created, applied, ingresses})
				}
				for _, s := range created {
					fmt.Fprintf(cmd.OutOrStdout(), "service %s: %s\n", s.Key(), describeAddrs(s))
				}
				for _, p := range applied {
					fmt.Fprintf(cmd.OutOrStdout(), "networkpolicy %s: applied\n", p.Key())
				}
				for _, in := range ingresses {
					fmt.Fprintf(cmd.OutOrStdout(), "ingress %s: applied\n", in.Key())
				}
				return nil
			})
		},
	}
	sf.register(cmd)
	cmd.Flags().StringArrayVarP(&files, "filename", "f", nil, "manifest file (YAML or JSON, several documents), - for standard input (repeatable)")
	return cmd
}

// sameSpec reports whether applying want to have would change nothing (allocated fields
// of have that want leaves open do not count).
func sameSpec(have, want v1.Service) bool {
	if want.ClusterIP == "" {
		want.ClusterIP = have.ClusterIP
	}
	want.ClusterIPs = have.ClusterIPs
	for i := range want.Ports {
		if i < len(have.Ports) && want.Ports[i].NodePort == 0 {
			want.Ports[i].NodePort = have.Ports[i].NodePort
		}
	}
	if len(want.IPFamilies) == 0 {
		want.IPFamilies = have.IPFamilies
	}
	a, _ := json.Marshal(have)
	b, _ := json.Marshal(want)
	return string(a) == string(b)
}

// getService reads a service, or says it is not there (exit code 1).
func getService(ctx context.Context, r serviceReader, namespace, name string) (v1.Service, error) {
	notFound := &ExitError{Code: 1, Err: fmt.Errorf("service %s/%s not found", namespace, name)}
	if snap, ok := r.(*kube.Snapshot); ok {
		s, found := snap.GetService(namespace, name)
		if !found {
			return s, notFound
		}
		return s, nil
	}
	s, err := r.(resources.Client).GetService(ctx, namespace, name)
	if errors.Is(err, store.ErrNotFound) {
		return s, notFound
	}
	return s, err
}
