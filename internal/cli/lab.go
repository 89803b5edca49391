package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/weftnet/weft/internal/lab"
)

func newLabCmd() *cobra.Command {
	labCmd := &cobra.Command{Use: "lab", Short: "Build weft clusters out of network namespaces on this machine"}
	var opts lab.Options
	labCmd.PersistentFlags().StringVar(&opts.Name, "name", "weft", "lab name: the prefix of every namespace it makes")
	labCmd.PersistentFlags().StringVar(&opts.BinDir, "bin-dir", "", "folder holding weftd and weft-cni (default: next to weft)")

	var pods int
	demo := &cobra.Command{
		Use:   "demo",
		Short: "Bring a node up, attach pods through weft-cni, ping every pair, tear it all down",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDemo(cmd.OutOrStdout(), opts, pods)
		},
	}
	demo.Flags().IntVar(&pods, "pods", 3, "pods to attach")
	demo.Flags().StringVar(&opts.Mode, "mode", "bridge", "bridge or ptp")

	down := &cobra.Command{
		Use:   "down",
		Short: "Remove every namespace, process and file a lab made (safe to repeat)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := lab.Load(opts.Name)
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
	labCmd.AddCommand(demo, down)
	return labCmd
}

func runDemo(w io.Writer, opts lab.Options, pods int) (err error) {
	fmt.Fprintf(w, "== weft lab demo (%s mode): weftd in a node namespace, %d pods through weft-cni\n", opts.Mode, pods)
	l, err := lab.Up(opts)
	if err != nil {
		return err
	}
	defer func() {
		if derr := l.Down(); derr != nil && err == nil {
			err = derr
		}
		fmt.Fprintf(w, "\n== torn down: namespaces, weftd, state removed\n")
	}()
	n := l.State.Nodes[0]
	fmt.Fprintf(w, "node %s (netns %s): pod CIDRs %v, weftd pid %d\n\n", n.Name, n.Netns, n.PodCIDRs, n.PID)
	for i := 1; i <= pods; i++ {
		if _, err := l.AddPod(fmt.Sprintf("pod%d", i), n.Name); err != nil {
			return err
		}
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POD\tNODE\tADDRESSES\tMAC")
	for _, p := range l.State.Pods {
		var ips []string
		for _, ip := range p.IPs {
			ips = append(ips, ip.String())
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Name, p.Node, strings.Join(ips, ", "), p.MAC)
	}
	_ = tw.Flush()

	fmt.Fprintln(w, "\nping matrix (ICMP echo, from row to column):")
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
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
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
	if failed > 0 {
		for _, r := range results {
			if r.Err != nil {
				fmt.Fprintf(w, "  %s -> %s (%s): %v\n", r.From, r.To, r.Dst, r.Err)
			}
		}
		return &ExitError{Code: 1, Err: fmt.Errorf("%d pings failed", failed)}
	}
	return nil
}
