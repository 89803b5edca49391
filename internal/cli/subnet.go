package cli

import (
	"fmt"
	"io"
	"net/netip"

	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/weftnet/weft/internal/hostnet"
	"github.com/weftnet/weft/internal/netcalc"
)

func newSubnetCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{Use: "subnet", Short: "Subnet calculator and address planner (IPv4 and IPv6)"}
	cmd.PersistentFlags().StringVarP(&output, "output", "o", "table", "table or json")
	emit := func(w io.Writer, v any, table func(*tabwriter.Writer)) error {
		switch output {
		case "json":
			return printJSON(w, v)
		case "table":
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			table(tw)
			return tw.Flush()
		}
		return usageErr("--output %q: use table or json", output)
	}

	info := &cobra.Command{
		Use: "info CIDR...", Short: "Network, masks, broadcast, usable range, counts and kind of range",
		Args: minArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ps, err := netcalc.ParseCIDRs(args)
			if err != nil {
				return badInput(err)
			}
			infos := make([]netcalc.Info, len(ps))
			for i, p := range ps {
				infos[i] = netcalc.Describe(p)
			}
			return emit(cmd.OutOrStdout(), infos, func(tw *tabwriter.Writer) {
				for i, in := range infos {
					if i > 0 {
						fmt.Fprintln(tw)
					}
					rows := [][2]string{{"CIDR", in.CIDR}, {"network", in.Network}, {"prefix length", fmt.Sprint(in.PrefixLength)},
						{"netmask", in.Netmask}, {"wildcard", in.Wildcard}}
					if in.Broadcast != "" {
						rows = append(rows, [2]string{"broadcast", in.Broadcast})
					}
					rows = append(rows, [2]string{"first usable", in.FirstUsable}, [2]string{"last usable", in.LastUsable},
						[2]string{"total", in.Total}, [2]string{"usable", in.Usable}, [2]string{"class", in.Class})
					for _, r := range rows {
						fmt.Fprintf(tw, "%s\t%s\n", r[0], r[1])
					}
				}
			})
		},
	}

	var prefix, count int
	split := &cobra.Command{
		Use: "split CIDR (--prefix N | --count K)", Short: "The sub-blocks of a CIDR, in order",
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := netcalc.ParseCIDR(args[0])
			if err != nil {
				return badInput(err)
			}
			var blocks []netip.Prefix
			switch {
			case prefix != 0 && count != 0:
				return usageErr("give --prefix or --count, not both")
			case prefix != 0:
				blocks, err = netcalc.Split(p, prefix)
			case count != 0:
				blocks, err = netcalc.SplitCount(p, count)
			default:
				return usageErr("split needs --prefix N or --count K")
			}
			if err != nil {
				return badInput(err)
			}
			out := struct {
				Blocks []string `json:"blocks"`
			}{Blocks: strs(blocks)}
			return emit(cmd.OutOrStdout(), out, func(tw *tabwriter.Writer) {
				for _, b := range out.Blocks {
					fmt.Fprintln(tw, b)
				}
			})
		},
	}
	split.Flags().IntVar(&prefix, "prefix", 0, "length of each sub-block")
	split.Flags().IntVar(&count, "count", 0, "how many equal sub-blocks")

	summarize := &cobra.Command{
		Use: "summarize CIDR...", Short: "The fewest CIDRs covering exactly the union",
		Args: minArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ps, err := netcalc.ParseCIDRs(args)
			if err != nil {
				return badInput(err)
			}
			out := struct {
				CIDRs []string `json:"cidrs"`
			}{CIDRs: strs(netcalc.Summarize(ps))}
			return emit(cmd.OutOrStdout(), out, func(tw *tabwriter.Writer) {
				for _, c := range out.CIDRs {
					fmt.Fprintln(tw, c)
				}
			})
		},
	}

	overlap := &cobra.Command{
		Use: "overlap CIDR...", Short: "Every overlapping pair, with the range they share",
		Args: minArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ps, err := netcalc.ParseCIDRs(args)
			if err != nil {
				return badInput(err)
			}
			out := struct {
				Overlaps []netcalc.Overlap `json:"overlaps"`
			}{Overlaps: netcalc.Overlaps(ps)}
			if out.Overlaps == nil {
				out.Overlaps = []netcalc.Overlap{}
			}
			return emit(cmd.OutOrStdout(), out, func(tw *tabwriter.Writer) {
				if len(out.Overlaps) == 0 {
					fmt.Fprintln(tw, "no overlaps")
					return
				}
				fmt.Fprintln(tw, "A\tB\tSHARED")
				for _, o := range out.Overlaps {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", o.A, o.B, o.Shared)
				}
			})
		},
	}

	var req netcalc.PlanRequest
	var avoid, planPools []string
	var fromHost bool
	plan := &cobra.Command{
		Use: "plan --nodes N --pods-per-node P --services S", Short: "Choose cluster and service CIDRs that clash with nothing",
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ps, err := netcalc.ParseCIDRs(avoid)
			if err != nil {
				return badInput(fmt.Errorf("--avoid: %w", err))
			}
			req.Avoid = ps
			pools, err := netcalc.ParseCIDRs(planPools)
			if err != nil {
				return badInput(fmt.Errorf("--pool: %w", err))
			}
			req.Pools, req.Pools6 = nil, nil
			for _, p := range pools {
				if p.Addr().Is4() {
					req.Pools = append(req.Pools, p.Masked())
				} else {
					req.Pools6 = append(req.Pools6, p.Masked())
				}
			}
			if fromHost {
				host, err := hostnet.AvoidList()
				if err != nil {
					return err
				}
				req.Avoid = append(req.Avoid, host...)
			}
			if req.Nodes < 1 || req.PodsPerNode < 1 || req.Services < 1 {
				return usageErr("--nodes, --pods-per-node and --services must each be at least 1")
			}
			p, err := netcalc.MakePlan(req)
			if err != nil {
				return &ExitError{Code: 1, Err: err}
			}
			return emit(cmd.OutOrStdout(), p, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "cluster CIDR\t%s\t(/%d per node: %d nodes × %d pods)\n", p.ClusterCIDR, p.NodePrefixLength, p.MaxNodes, p.PodsPerNode)
				fmt.Fprintf(tw, "service CIDR\t%s\t(%d services)\n", p.ServiceCIDR, p.Services)
				if p.ClusterCIDRV6 != "" {
					fmt.Fprintf(tw, "cluster CIDR v6\t%s\t(/%d per node: %s nodes × %s pods)\n", p.ClusterCIDRV6, p.NodePrefixLengthV6, p.MaxNodesV6, p.PodsPerNodeV6)
					fmt.Fprintf(tw, "service CIDR v6\t%s\t(%s services)\n", p.ServiceCIDRV6, p.ServicesV6)
				}
			})
		},
	}
	plan.Flags().IntVar(&req.Nodes, "nodes", 0, "nodes the cluster must hold")
	plan.Flags().IntVar(&req.PodsPerNode, "pods-per-node", 0, "pods each node must hold")
	plan.Flags().IntVar(&req.Services, "services", 0, "services the cluster must hold")
	plan.Flags().BoolVar(&req.DualStack, "dual-stack", false, "also plan IPv6 (unique local) ranges")
	plan.Flags().StringArrayVar(&avoid, "avoid", nil, "a CIDR the plan must not overlap (repeatable)")
	plan.Flags().BoolVar(&fromHost, "from-host", false, "also avoid this namespace's addresses and routes")
	plan.Flags().StringArrayVar(&planPools, "pool", nil, "a CIDR to plan in, IPv4 or IPv6 (repeatable, in order of preference; replaces the private ranges of that family)")

	var clusterCIDRs, serviceCIDRs []string
	var nodePrefix, nodePrefix6 int
	var checkHost bool
	check := &cobra.Command{
		Use: "check --cluster-cidr X --service-cidr Y", Short: "Preflight: list every conflict of an address plan",
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cr := netcalc.CheckRequest{NodePrefixLen: nodePrefix, NodePrefixLen6: nodePrefix6}
			var err error
			if cr.ClusterCIDRs, err = netcalc.ParseCIDRs(clusterCIDRs); err != nil {
				return badInput(fmt.Errorf("--cluster-cidr: %w", err))
			}
			if cr.ServiceCIDRs, err = netcalc.ParseCIDRs(serviceCIDRs); err != nil {
				return badInput(fmt.Errorf("--service-cidr: %w", err))
			}
			if len(cr.ClusterCIDRs) == 0 {
				return usageErr("check needs --cluster-cidr")
			}
			if checkHost {
				if cr.Host, err = hostnet.Prefixes(); err != nil {
					return err
				}
			}
			conflicts := netcalc.Check(cr)
			out := struct {
				OK        bool               `json:"ok"`
				Conflicts []netcalc.Conflict `json:"conflicts"`
			}{OK: len(conflicts) == 0, Conflicts: conflicts}
			if out.Conflicts == nil {
				out.Conflicts = []netcalc.Conflict{}
			}
			err = emit(cmd.OutOrStdout(), out, func(tw *tabwriter.Writer) {
				if out.OK {
					fmt.Fprintln(tw, "ok: no conflicts")
					return
				}
				fmt.Fprintln(tw, "WHAT\tCONFLICTS WITH\tWHY")
				for _, c := range conflicts {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", c.What, c.With, c.Reason)
				}
			})
			if err == nil && !out.OK {
				return &ExitError{Code: 1, Err: fmt.Errorf("%d conflicts", len(conflicts))}
			}
			return err
		},
	}
	check.Flags().StringSliceVar(&clusterCIDRs, "cluster-cidr", nil, "cluster CIDR(s), comma separated")
	check.Flags().StringSliceVar(&serviceCIDRs, "service-cidr", nil, "service CIDR(s), comma separated")
	check.Flags().IntVar(&nodePrefix, "node-prefix", 0, "IPv4 node block length to check against the cluster CIDR")
	check.Flags().IntVar(&nodePrefix6, "node-prefix-v6", 0, "IPv6 node block length")
	check.Flags().BoolVar(&checkHost, "from-host", false, "also check against this namespace's addresses and routes")

	cmd.AddCommand(info, split, summarize, overlap, plan, check)
	return cmd
}

func strs(ps []netip.Prefix) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}
