package cli

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/weftnet/weft/internal/hostnet"
	"github.com/weftnet/weft/internal/mtu"
	"github.com/weftnet/weft/internal/pmtu"
)

func newMTUCmd() *cobra.Command {
	var encap, dev, to, output string
	cmd := &cobra.Command{
		Use:   "mtu [--encap vxlan] [--dev D | --to ADDRESS]",
		Short: "The pod MTU for an encapsulation over this namespace's underlay",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var dst netip.Addr
			if to != "" {
				a, err := netip.ParseAddr(to)
				if err != nil {
					return usageErr("--to %q is not an IP address", to)
				}
				dst = a
			}
			if _, ok := mtu.Encapsulations[encap]; !ok {
				return usageErr("--encap %q: use one of %s", encap, strings.Join(mtu.Names(), ", "))
			}
			u, err := hostnet.FindUnderlay(dev, dst)
			if err != nil {
				return err
			}
			r, err := mtu.PodMTU(u.Device, u.MTU, encap, u.IPv6)
			if err != nil {
				return err
			}
			if output == "json" {
				return printJSON(cmd.OutOrStdout(), r)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "underlay %s: MTU %d\nencapsulation %s: %d bytes\npod MTU: %d\n", r.Device, r.UnderlayMTU, r.Encap, r.Overhead, r.PodMTU)
			return nil
		},
	}
	cmd.Flags().StringVar(&encap, "encap", "vxlan", "encapsulation: "+strings.Join(mtu.Names(), ", "))
	cmd.Flags().StringVar(&dev, "dev", "", "underlay device (default: the default route's)")
	cmd.Flags().StringVar(&to, "to", "", "use the device of the route to this address")
	cmd.PersistentFlags().StringVarP(&output, "output", "o", "table", "table or json")

	var timeout time.Duration
	probe := &cobra.Command{
		Use:   "probe ADDRESS",
		Short: "Find the real path MTU with don't-fragment probes, and detect black holes",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dst, err := netip.ParseAddr(args[0])
			if err != nil {
				return usageErr("%q is not an IP address", args[0])
			}
			u, err := hostnet.FindUnderlay("", dst)
			if err != nil {
				return err
			}
			r, err := pmtu.Probe(dst, pmtu.Options{LocalMTU: u.MTU, Timeout: timeout})
			if err != nil {
				return err
			}
			if output == "json" {
				return printJSON(cmd.OutOrStdout(), r)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s via %s (MTU %d): path MTU %d after %d probes\n%s\n", r.Address, u.Device, r.LocalMTU, r.PathMTU, r.Probes, r.Verdict)
			return nil
		},
	}
	probe.Flags().DurationVar(&timeout, "timeout", 500*time.Millisecond, "how long to wait for each answer")
	cmd.AddCommand(probe)
	return cmd
}

func netipZero() netip.Addr { return netip.Addr{} }
