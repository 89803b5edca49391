package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/kube"
	"github.com/weftnet/weft/internal/lease"
	"github.com/weftnet/weft/internal/netcalc"
	"github.com/weftnet/weft/internal/resources"
	"github.com/weftnet/weft/internal/store"
	"github.com/weftnet/weft/internal/store/storeurl"
)

func newClusterCmd() *cobra.Command {
	var storeURL, output string
	var tlsFiles storeurl.TLSFiles
	cmd := &cobra.Command{Use: "cluster", Short: "Cluster configuration and membership in the cluster store"}
	cmd.PersistentFlags().StringVar(&storeURL, "store", os.Getenv("WEFT_STORE"), "etcd://HOST:PORT[,...] or bolt:///PATH (default $WEFT_STORE)")
	cmd.PersistentFlags().StringVar(&tlsFiles.CA, "etcd-cafile", "", "CA of the etcd servers")
	cmd.PersistentFlags().StringVar(&tlsFiles.Cert, "etcd-certfile", "", "client certificate")
	cmd.PersistentFlags().StringVar(&tlsFiles.Key, "etcd-keyfile", "", "client key")
	cmd.PersistentFlags().StringVarP(&output, "output", "o", "table", "table or json")
	open := func() (store.Store, error) {
		if storeURL == "" {
			return nil, usageErr("--store is required")
		}
		return storeurl.Open(storeURL, tlsFiles)
	}

	var cfg v1.ClusterConfig
	var bgpCfg v1.BGPConfig
	var clusterCIDRs, serviceCIDRs []string
	var configFile string
	var lbCIDRs []string
	init := &cobra.Command{
		Use: "init --store URL|--config-file FILE --cluster-cidr CIDR [--fabric vxlan|direct|bgp]", Short: "Write the cluster configuration, once",
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if cfg.ClusterCIDRs, err = netcalc.ParseCIDRs(clusterCIDRs); err != nil {
				return badInput(fmt.Errorf("--cluster-cidr: %w", err))
			}
			if cfg.ServiceCIDRs, err = netcalc.ParseCIDRs(serviceCIDRs); err != nil {
				return badInput(fmt.Errorf("--service-cidr: %w", err))
			}
			if bgpCfg.LoadBalancerCIDRs, err = netcalc.ParseCIDRs(lbCIDRs); err != nil {
				return badInput(fmt.Errorf("--bgp-lb-cidr: %w", err))
			}
			if cfg.Fabric == v1.FabricBGP {
				cfg.BGP = &bgpCfg
			} else if cmd.Flags().Changed("asn") || bgpCfg.NoNodeMesh || bgpCfg.AnnounceServices || len(lbCIDRs) > 0 || bgpCfg.CrossSubnetVXLAN {
				return usageErr("--asn, --bgp-no-node-mesh, --bgp-announce-services, --bgp-lb-cidr and --bgp-cross-subnet-vxlan need --fabric bgp")
			}
			if err := cfg.Validate(); err != nil {
				return badInput(err)
			}
			if c := netcalc.Check(netcalc.CheckRequest{ClusterCIDRs: cfg.ClusterCIDRs, ServiceCIDRs: cfg.ServiceCIDRs, NodePrefixLen: cfg.NodePrefixLength, NodePrefixLen6: cfg.NodePrefixLength6}); len(c) > 0 {
				return &ExitError{Code: 1, Err: fmt.Errorf("%s %s: %s", c[0].What, c[0].With, c[0].Reason)}
			}
			if configFile != "" {
				// Kubernetes mode keeps no store: the configuration travels as a file
				// (a ConfigMap), and the API server allocates service addresses.
				b, _ := json.MarshalIndent(cfg, "", "  ")
				if err := os.WriteFile(configFile, append(b, '\n'), 0o644); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "cluster configuration written to %s: %s, /%d per node, %s fabric\n", configFile, strings.Join(clusterCIDRs, ","), cfg.NodePrefixLength, cfg.Fabric)
				return nil
			}
			st, err := open()
			if err != nil {
				return err
			}
			defer st.Close()
			b, _ := json.Marshal(cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			ops := append([]store.Op{{Key: resources.ConfigKey, Value: b}}, resources.DNSClaims(cfg.ServiceCIDRs)...)
			if _, err := st.Txn(ctx, []store.Cond{{Key: resources.ConfigKey}}, ops); err != nil {
				if errors.Is(err, store.ErrConflict) {
					return &ExitError{Code: 1, Err: fmt.Errorf("the cluster is already initialised (%s exists)", resources.ConfigKey)}
				}
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "cluster initialised: %s, /%d per node, %s fabric\n", strings.Join(clusterCIDRs, ","), cfg.NodePrefixLength, cfg.Fabric)
			return nil
		},
	}
	init.Flags().StringSliceVar(&clusterCIDRs, "cluster-cidr", nil, "pod network(s) of the cluster")
	init.Flags().StringVar(&configFile, "config-file", "", "write the configuration to this file instead of a store (Kubernetes mode: weftd --ipam kubernetes --cluster-config FILE)")
	init.Flags().StringSliceVar(&serviceCIDRs, "service-cidr", nil, "service network(s)")
	init.Flags().IntVar(&cfg.NodePrefixLength, "node-prefix", 24, "IPv4 block per node")
	init.Flags().IntVar(&cfg.NodePrefixLength6, "node-prefix-v6", 64, "IPv6 block per node")
	init.Flags().StringVar(&cfg.Fabric, "fabric", v1.FabricVXLAN, "vxlan, direct or bgp")
	init.Flags().Uint32Var(&bgpCfg.ASN, "asn", v1.DefaultASN, "fabric bgp: the nodes' AS number")
	init.Flags().BoolVar(&bgpCfg.NoNodeMesh, "bgp-no-node-mesh", false, "fabric bgp: nodes peer only with external peers (top-of-rack routers), not with each other")
	init.Flags().BoolVar(&bgpCfg.AnnounceServices, "bgp-announce-services", false, "fabric bgp: announce the service CIDRs to external peers")
	init.Flags().BoolVar(&bgpCfg.CrossSubnetVXLAN, "bgp-cross-subnet-vxlan", false, "fabric bgp: carry pod traffic to nodes on other underlay subnets in VXLAN (Calico's CrossSubnet), for routers that do not take BGP")
	init.Flags().StringSliceVar(&lbCIDRs, "bgp-lb-cidr", nil, "fabric bgp: announce the load balancer addresses of services (Kubernetes mode) inside these CIDRs")
	init.Flags().IntVar(&cfg.VNI, "vni", 1, "VXLAN network identifier")
	init.Flags().IntVar(&cfg.Port, "port", 4789, "VXLAN UDP port")
	init.Flags().BoolVar(&cfg.DirectRouting, "direct-routing", false, "vxlan: route directly to peers on the same L2 segment")
	init.Flags().IntVar(&cfg.MTU, "mtu", 0, "pod MTU (0: underlay minus encapsulation)")
	init.Flags().IntVar(&cfg.DNSTTL, "dns-ttl", 5, "TTL in seconds of the cluster domain's records (0 to 3600)")

	var kubeconfig, statusConfig string
	status := &cobra.Command{
		Use: "status [--kubeconfig FILE [--config-file FILE]]", Short: "The cluster configuration, nodes and leases", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			out := clusterStatus{Nodes: []v1.Node{}}
			var err error
			if kubeconfig != "" {
				err = out.fromKubernetes(ctx, kubeconfig, statusConfig)
			} else {
				err = out.fromStore(ctx, open)
			}
			if err != nil {
				return err
			}
			if output == "json" {
				return printJSON(cmd.OutOrStdout(), out)
			}
			w := cmd.OutOrStdout()
			if out.Config == nil {
				fmt.Fprintln(w, "not initialised")
			} else {
				fmt.Fprintf(w, "cluster %v, /%d per node, fabric %s\n", out.Config.ClusterCIDRs, out.Config.NodePrefixLength, out.Config.Fabric)
			}
			blocks := map[string][]netip.Prefix{}
			for _, l := range out.Leases {
				blocks[l.Node] = l.PodCIDRs
			}
			for _, n := range out.Nodes {
				fmt.Fprintf(w, "node %s  underlay %v  pod CIDRs %v\n", n.Name, n.Underlay, blocks[n.Name])
			}
			for _, p := range out.Pods {
				fmt.Fprintf(w, "pod %s/%s  node %s  %v\n", p.Namespace, p.Name, p.Node, p.IPs)
			}
			return nil
		},
	}
	status.Flags().StringVar(&kubeconfig, "kubeconfig", "", "Kubernetes mode: nodes, their pod CIDRs and pods from this API (as weftd reads them) instead of the store")
	status.Flags().StringVar(&statusConfig, "config-file", "", "with --kubeconfig: the cluster configuration file weftd reads")
	cmd.AddCommand(init, status, newRemoveNodeCmd(open))
	return cmd
}

// clusterStatus is what `weft cluster status` shows.
type clusterStatus struct {
	Config *v1.ClusterConfig `json:"config"`
	Nodes  []v1.Node         `json:"nodes"`
	Leases []v1.Lease        `json:"leases"`
	Pods   []v1.Pod          `json:"pods"`
}

func (out *clusterStatus) fromStore(ctx context.Context, open func() (store.Store, error)) error {
	st, err := open()
	if err != nil {
		return err
	}
	defer st.Close()
	if kv, err := st.Get(ctx, resources.ConfigKey); err == nil {
		out.Config = &v1.ClusterConfig{}
		_ = json.Unmarshal(kv.Value, out.Config)
	}
	kvs, _, err := st.List(ctx, resources.NodesPrefix)
	if err != nil {
		return err
	}
	for _, kv := range kvs {
		var n v1.Node
		if json.Unmarshal(kv.Value, &n) == nil {
			out.Nodes = append(out.Nodes, n)
		}
	}
	if out.Leases, err = lease.List(ctx, st); err != nil {
		return err
	}
	out.Pods, err = (resources.Client{Store: st}).ListPods(ctx)
	return err
}

// fromKubernetes reads a store-less cluster: the Node objects (their pod CIDRs are the
// blocks) and pods from the API, the configuration from its file.
func (out *clusterStatus) fromKubernetes(ctx context.Context, kubeconfig, configFile string) error {
	if configFile != "" {
		b, err := os.ReadFile(configFile)
		if err != nil {
			return err
		}
		cfg, err := v1.ParseClusterConfig(b)
		if err != nil {
			return badInput(fmt.Errorf("%s: %w", configFile, err))
		}
		out.Config = &cfg
	}
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("--kubeconfig: %w", err)
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	if out.Nodes, out.Leases, err = kube.ListMembers(ctx, client); err != nil {
		return err
	}
	out.Pods, err = kube.ListPods(ctx, client)
	return err
}

// newRemoveNodeCmd removes a node from the store: its registration and its leases. Every
// other node drops its routes at the next watch event.
func newRemoveNodeCmd(open func() (store.Store, error)) *cobra.Command {
	return &cobra.Command{
		Use: "remove-node NAME", Short: "Forget a node: its registration and pod CIDR leases", Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := open()
			if err != nil {
				return err
			}
			defer st.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			n, err := resources.RemoveNode(ctx, st, lease.Prefix, args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed node %s (%d keys)\n", args[0], n)
			return nil
		},
	}
}
