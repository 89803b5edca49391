package cli

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/weftnet/weft/internal/config"
	"github.com/weftnet/weft/internal/hostnet"
	"github.com/weftnet/weft/internal/network"
)

func newNetworkCmd() *cobra.Command {
	var confDir, output string
	cmd := &cobra.Command{Use: "network", Short: "Create, list, inspect and remove weft networks (CNI conflists)"}
	cmd.PersistentFlags().StringVar(&confDir, "conf-dir", "/etc/cni/net.d", "CNI configuration directory")
	cmd.PersistentFlags().StringVarP(&output, "output", "o", "table", "table or json")

	var subnet, ipv6, mode, mtuFlag string
	var pools []string
	create := &cobra.Command{
		Use:   "create NAME [--subnet CIDR|auto] [--mode bridge|ptp] [--mtu N|auto] [--ipv6 CIDR|auto]",
		Short: "Write a validated conflist for weft-cni, on a subnet that clashes with nothing",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := network.CreateRequest{Name: args[0], Subnet: subnet, IPv6: ipv6, Mode: mode}
			if mode != config.ModeBridge && mode != config.ModePTP {
				return usageErr("--mode %q: use bridge or ptp", mode)
			}
			for _, s := range pools {
				p, err := network.ParsePool(s)
				if err != nil {
					return badInput(err)
				}
				if p.Base.Addr().Is4() {
					req.Pools = append(req.Pools, p)
				} else {
					req.Pools6 = append(req.Pools6, p)
				}
			}
			switch mtuFlag {
			case "", "0":
			case "auto":
				if u, err := hostnet.FindUnderlay("", netipZero()); err == nil {
					req.MTU = u.MTU
				}
			default:
				n, err := strconv.Atoi(mtuFlag)
				if err != nil || n < 576 || n > 65535 {
					return usageErr("--mtu %q: a number from 576 to 65535, or auto", mtuFlag)
				}
				req.MTU = n
			}
			host, err := hostnet.Prefixes()
			if err != nil {
				return err
			}
			req.Host = host
			n, err := network.Create(confDir, req)
			if err != nil {
				return err
			}
			if output == "json" {
				return printJSON(cmd.OutOrStdout(), n)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "created %s: %s, %s mode, %s\n", n.Name, joinSubnets(n), n.Mode, n.File)
			return nil
		},
	}
	create.Flags().StringVar(&subnet, "subnet", "auto", "IPv4 subnet, or auto")
	create.Flags().StringVar(&ipv6, "ipv6", "", "IPv6 subnet, or auto (default: none)")
	create.Flags().StringVar(&mode, "mode", config.ModeBridge, "bridge or ptp")
	create.Flags().StringVar(&mtuFlag, "mtu", "", "pod MTU, or auto (the default route's device); default: the node's")
	create.Flags().StringArrayVar(&pools, "pool", nil, "address pool BASE/LEN:SIZE for auto, e.g. 10.89.0.0/16:24 (repeatable; replaces the defaults)")

	ls := &cobra.Command{
		Use: "ls", Short: "List the networks of the configuration directory", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			all, err := network.List(confDir)
			if err != nil {
				return err
			}
			if all == nil {
				all = []network.Network{}
			}
			if output == "json" {
				return printJSON(cmd.OutOrStdout(), all)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tTYPE\tMODE\tSUBNETS\tBRIDGE\tMTU")
			for _, n := range all {
				mtu := "-"
				if n.MTU != 0 {
					mtu = strconv.Itoa(n.MTU)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", n.Name, n.Type, dash(n.Mode), joinSubnets(n), dash(n.Bridge), mtu)
			}
			return tw.Flush()
		},
	}
	inspect := &cobra.Command{
		Use: "inspect NAME", Short: "Print a network's conflist", Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := network.Find(confDir, args[0])
			if err != nil {
				return err
			}
			b, err := os.ReadFile(n.File)
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(b)
			return err
		},
	}
	rm := &cobra.Command{
		Use: "rm NAME...", Short: "Remove weft networks' conflists", Args: minArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, name := range args {
				if err := network.Remove(confDir, name); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "removed %s\n", name)
			}
			return nil
		},
	}
	cmd.AddCommand(create, ls, inspect, rm)
	return cmd
}

func joinSubnets(n network.Network) string {
	s := make([]string, len(n.Subnets))
	for i, p := range n.Subnets {
		s[i] = p.String()
	}
	if len(s) == 0 {
		return "-"
	}
	return strings.Join(s, ",")
}
