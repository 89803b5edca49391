package cli

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/cniapi"
	"github.com/weftnet/weft/internal/policy"
	"github.com/weftnet/weft/internal/resources"
)

func newPolicyCmd() *cobra.Command {
	var sf storeFlags
	var namespace string
	cmd := &cobra.Command{Use: "policy", Short: "Network policies (Kubernetes NetworkPolicy semantics): list, show, remove, explain"}
	sf.register(cmd)
	cmd.PersistentFlags().StringVarP(&namespace, "namespace", "n", "default", "namespace")

	ls := &cobra.Command{
		Use: "ls [--all-namespaces]", Short: "List policies", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			all, _ := cmd.Flags().GetBool("all-namespaces")
			return sf.withClient(func(ctx context.Context, c resources.Client) error {
				ps, err := c.ListPolicies(ctx)
				if err != nil {
					return err
				}
				out := []v1.NetworkPolicy{}
				for _, p := range ps {
					if all || p.Namespace == namespace {
						out = append(out, p)
					}
				}
				if sf.output == "json" {
					return printJSON(cmd.OutOrStdout(), out)
				}
				w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "NAMESPACE\tNAME\tPOD SELECTOR\tTYPES\tINGRESS RULES\tEGRESS RULES")
				for _, p := range out {
					in, eg := p.Types()
					var types []string
					if in {
						types = append(types, "Ingress")
					}
					if eg {
						types = append(types, "Egress")
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%d\n", p.Namespace, p.Name, describeSelector(p.PodSelector), strings.Join(types, ","), len(p.Ingress), len(p.Egress))
				}
				return w.Flush()
			})
		},
	}
	ls.Flags().BoolP("all-namespaces", "A", false, "every namespace")
	get := &cobra.Command{
		Use: "get NAME", Short: "Show a policy (JSON)", Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return sf.withClient(func(ctx context.Context, c resources.Client) error {
				p, err := c.GetPolicy(ctx, namespace, args[0])
				if err != nil {
					return fmt.Errorf("policy %s/%s: %w", namespace, args[0], err)
				}
				return printJSON(cmd.OutOrStdout(), p)
			})
		},
	}
	rm := &cobra.Command{
		Use: "rm NAME", Short: "Remove a policy", Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return sf.withClient(func(ctx context.Context, c resources.Client) error {
				if err := c.DeletePolicy(ctx, namespace, args[0]); err != nil {
					return fmt.Errorf("policy %s/%s: %w", namespace, args[0], err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "policy %s/%s removed\n", namespace, args[0])
				return nil
			})
		},
	}
	explain := &cobra.Command{
		Use:   "explain SRC DST PORT[/PROTO]",
		Short: "Say whether SRC may open a connection to DST, and which policies decide it (from the model alone)",
		Long: "SRC and DST are pods (NAMESPACE/NAME, or NAME in --namespace) or addresses (a pod's, or one outside the cluster).\n" +
			"PROTO is tcp (default), udp or sctp.",
		Args: exactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			port, proto, err := parsePortProto(args[2])
			if err != nil {
				return badInput(err)
			}
			return sf.withClient(func(ctx context.Context, c resources.Client) error {
				pods, err := c.ListPods(ctx)
				if err != nil {
					return err
				}
				if cidrs, err := serviceCIDRs(ctx, c); err == nil && len(cidrs) > 0 {
					pods = append(pods, policy.NodeDNS(resources.DNSAddrs(cidrs))) // kube-system/kube-dns
				}
				src, err := endpointOf(args[0], namespace, pods)
				if err != nil {
					return badInput(err)
				}
				dst, err := endpointOf(args[1], namespace, pods)
				if err != nil {
					return badInput(err)
				}
				ps, err := c.ListPolicies(ctx)
				if err != nil {
					return err
				}
				nss, err := c.ListNamespaces(ctx)
				if err != nil {
					return err
				}
				v := policy.New(ps, nss).Decide(src, dst, proto, port)
				if sf.output == "json" {
					return printJSON(cmd.OutOrStdout(), v)
				}
				w := cmd.OutOrStdout()
				verdict := "denied"
				if v.Allowed {
					verdict = "allowed"
				}
				fmt.Fprintf(w, "%s -> %s %d/%s: %s\n", args[0], args[1], port, strings.ToLower(proto), verdict)
				if v.Loopback {
					fmt.Fprintln(w, "  a pod talking to itself: no policy applies")
					return nil
				}
				side := func(what string, s policy.Side, ep policy.Endpoint) {
					switch {
					case ep.Pod == nil:
						fmt.Fprintf(w, "  %s: not a pod, no policy applies\n", what)
					case len(s.Selecting) == 0:
						fmt.Fprintf(w, "  %s: no policy selects %s/%s: open\n", what, ep.Pod.Namespace, ep.Pod.Name)
					case s.Allowed:
						fmt.Fprintf(w, "  %s: allowed by %s (selected by %s)\n", what, strings.Join(s.AllowedBy, ", "), strings.Join(s.Selecting, ", "))
					default:
						fmt.Fprintf(w, "  %s: denied: no rule of %s matches\n", what, strings.Join(s.Selecting, ", "))
					}
				}
				side("egress of the source", v.Egress, src)
				side("ingress of the destination", v.Ingress, dst)
				if !v.Allowed {
					return &ExitError{Code: 1, Err: fmt.Errorf("denied")}
				}
				return nil
			})
		},
	}
	var socket, podFilter string
	var follow bool
	logCmd := &cobra.Command{
		Use: "log [--pod NS/NAME] [-f]", Short: "Recent packets this node dropped by network policy or anti-spoofing (5-tuple, pod, direction, reason)", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := cniapi.Client{Socket: socket}
			var since uint64
			if podFilter != "" && !strings.Contains(podFilter, "/") {
				podFilter = namespace + "/" + podFilter
			}
			for {
				resp, err := c.Do(cniapi.Request{Op: cniapi.OpDrops, Since: since})
				if err != nil {
					return err
				}
				if resp.Error != nil {
					return fmt.Errorf("%s", resp.Error.Msg)
				}
				for _, d := range resp.Drops {
					since = max(since, d.Seq)
					if podFilter != "" && d.Pod != podFilter {
						continue
					}
					if sf.output == "json" {
						if err := printJSON(cmd.OutOrStdout(), d); err != nil {
							return err
						}
						continue
					}
					src, dst := d.Src.String(), d.Dst.String()
					if d.SrcPort != 0 || d.DstPort != 0 {
						src = netip.AddrPortFrom(d.Src, d.SrcPort).String()
						dst = netip.AddrPortFrom(d.Dst, d.DstPort).String()
					}
					why := ""
					if d.Reason != "" && d.Reason != "policy" {
						why = ": " + d.Reason
					} else if len(d.Policies) > 0 {
						why = " (no rule of " + strings.Join(d.Policies, ", ") + " allows it)"
					}
					fmt.Fprintf(cmd.OutOrStdout(), "%s %s %s -> %s dropped at the %s of %s%s\n",
						d.Time.Format("15:04:05.000"), d.Protocol, src, dst, d.Direction, d.Pod, why)
				}
				if !follow {
					return nil
				}
				time.Sleep(500 * time.Millisecond)
			}
		},
	}
	logCmd.Flags().StringVar(&socket, "socket", defaultSocket, "weftd's socket (the node whose drops to show)")
	logCmd.Flags().StringVar(&podFilter, "pod", "", "only this pod's drops (NS/NAME, or NAME in --namespace)")
	logCmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new drops")
	cmd.AddCommand(ls, get, rm, explain, logCmd)
	return cmd
}

func describeSelector(s v1.LabelSelector) string {
	var parts []string
	keys := make([]string, 0, len(s.MatchLabels))
	for k := range s.MatchLabels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		parts = append(parts, k+"="+s.MatchLabels[k])
	}
	for _, e := range s.MatchExpressions {
		parts = append(parts, fmt.Sprintf("%s %s %v", e.Key, e.Operator, e.Values))
	}
	if len(parts) == 0 {
		return "(all pods)"
	}
	return strings.Join(parts, ",")
}

func parsePortProto(s string) (int, string, error) {
	ps, proto, _ := strings.Cut(s, "/")
	port, err := strconv.Atoi(ps)
	if err != nil || port < 1 || port > 65535 {
		return 0, "", fmt.Errorf("port %q: a number from 1 to 65535", ps)
	}
	switch strings.ToUpper(proto) {
	case "", "TCP":
		return port, v1.ProtocolTCP, nil
	case "UDP":
		return port, v1.ProtocolUDP, nil
	case "SCTP":
		return port, v1.ProtocolSCTP, nil
	}
	return 0, "", fmt.Errorf("protocol %q: use tcp, udp or sctp", proto)
}

// endpointOf resolves a pod name (NS/NAME or NAME) or an address.
func endpointOf(s, namespace string, pods []v1.Pod) (policy.Endpoint, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		for i := range pods {
			for _, ip := range pods[i].IPs {
				if ip == a {
					return policy.Endpoint{Pod: &pods[i], IP: a}, nil
				}
			}
		}
		return policy.Endpoint{IP: a}, nil
	}
	ns, name, ok := strings.Cut(s, "/")
	if !ok {
		ns, name = namespace, s
	}
	for i := range pods {
		if pods[i].Namespace == ns && pods[i].Name == name {
			ep := policy.Endpoint{Pod: &pods[i]}
			if len(pods[i].IPs) > 0 {
				ep.IP = pods[i].IPs[0]
			}
			return ep, nil
		}
	}
	return policy.Endpoint{}, fmt.Errorf("%q: no pod %s/%s and not an address", s, ns, name)
}

func newNamespaceCmd() *cobra.Command {
	var sf storeFlags
	cmd := &cobra.Command{Use: "namespace", Short: "Namespace labels (what a policy's namespaceSelector matches)"}
	sf.register(cmd)
	label := &cobra.Command{
		Use: "label NAMESPACE KEY=VALUE... [KEY-]...", Short: "Set (or, with KEY-, remove) labels of a namespace", Args: minArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return sf.withClient(func(ctx context.Context, c resources.Client) error {
				nss, err := c.ListNamespaces(ctx)
				if err != nil {
					return err
				}
				n := v1.Namespace{Name: args[0], Labels: map[string]string{}}
				for _, have := range nss {
					if have.Name == n.Name {
						for k, v := range have.Labels {
							n.Labels[k] = v
						}
					}
				}
				for _, kv := range args[1:] {
					if k, ok := strings.CutSuffix(kv, "-"); ok && !strings.Contains(kv, "=") {
						delete(n.Labels, k)
						continue
					}
					k, v, ok := strings.Cut(kv, "=")
					if !ok || k == "" {
						return badInput(fmt.Errorf("label %q: use KEY=VALUE or KEY-", kv))
					}
					if k == v1.NamespaceNameLabel {
						return badInput(fmt.Errorf("label %s is the namespace's name, set by weft", k))
					}
					n.Labels[k] = v
				}
				if err := c.PutNamespace(ctx, n); err != nil {
					return badInput(err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "namespace %s: %s\n", n.Name, describeSelector(v1.LabelSelector{MatchLabels: n.Labels}))
				return nil
			})
		},
	}
	ls := &cobra.Command{
		Use: "ls", Short: "Namespaces with labels", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return sf.withClient(func(ctx context.Context, c resources.Client) error {
				nss, err := c.ListNamespaces(ctx)
				if err != nil {
					return err
				}
				if sf.output == "json" {
					if nss == nil {
						nss = []v1.Namespace{}
					}
					return printJSON(cmd.OutOrStdout(), nss)
				}
				for _, n := range nss {
					fmt.Fprintf(cmd.OutOrStdout(), "%s\t%s\n", n.Name, describeSelector(v1.LabelSelector{MatchLabels: n.Labels}))
				}
				return nil
			})
		},
	}
	cmd.AddCommand(label, ls)
	return cmd
}
