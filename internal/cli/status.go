package cli

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/weftnet/weft/internal/cniapi"
	"github.com/weftnet/weft/internal/ipam"
)

const defaultSocket = "/run/weft/weft.sock"

func newStatusCmd() *cobra.Command {
	var socket, output string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Say whether weftd is up, its node contract, and address usage",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := struct {
				Up        bool                 `json:"up"`
				Ready     bool                 `json:"ready"`
				Problems  []string             `json:"problems,omitempty"`
				Node      *cniapi.NodeContract `json:"node,omitempty"`
				Allocated int                  `json:"allocated"`
				Error     string               `json:"error,omitempty"`
			}{}
			c := cniapi.Client{Socket: socket}
			resp, err := c.Do(cniapi.Request{Op: cniapi.OpStatus})
			if err != nil {
				out.Error = err.Error()
			} else {
				out.Up, out.Ready, out.Problems = true, resp.Status.Ready, resp.Status.Problems
				if list, err := c.Do(cniapi.Request{Op: cniapi.OpList}); err == nil {
					out.Allocated = len(list.Allocations)
				}
			}
			out.Node, _ = cniapi.ReadNodeContract(filepath.Dir(socket))
			if output == "json" {
				return printJSON(cmd.OutOrStdout(), out)
			}
			w := cmd.OutOrStdout()
			if !out.Up {
				fmt.Fprintf(w, "weftd: down (%s)\n", out.Error)
				return &ExitError{Code: 1, Err: fmt.Errorf("weftd is not running")}
			}
			state := "ready"
			if !out.Ready {
				state = "degraded: " + strings.Join(out.Problems, "; ")
			}
			fmt.Fprintf(w, "weftd: up, %s\n", state)
			if out.Node != nil {
				fmt.Fprintf(w, "node: %s  pod CIDRs: %v  MTU: %d  fabric: %s\n", out.Node.NodeName, out.Node.PodCIDRs, out.Node.MTU, out.Node.Fabric)
			}
			fmt.Fprintf(w, "addresses allocated: %d\n", out.Allocated)
			return nil
		},
	}
	cmd.Flags().StringVar(&socket, "socket", defaultSocket, "weftd's socket")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}

func newPodCmd() *cobra.Command {
	pod := &cobra.Command{Use: "pod", Short: "Pods attached on this node"}
	var socket, output string
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List each attachment: network, container, interface, addresses, identity",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := cniapi.Client{Socket: socket}.Do(cniapi.Request{Op: cniapi.OpList})
			if err != nil {
				return err
			}
			allocs := resp.Allocations
			sort.Slice(allocs, func(i, j int) bool { return allocs[i].Key.String() < allocs[j].Key.String() })
			if output == "json" {
				if allocs == nil {
					allocs = []ipam.Allocation{}
				}
				return printJSON(cmd.OutOrStdout(), allocs)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tNAMESPACE\tCONTAINER\tIFACE\tADDRESSES\tNETWORK")
			for _, a := range allocs {
				var ips []string
				for _, ip := range a.IPs {
					ips = append(ips, ip.Address.String())
				}
				cid := a.ContainerID
				if len(cid) > 12 {
					cid = cid[:12]
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", dash(a.Meta["K8S_POD_NAME"]), dash(a.Meta["K8S_POD_NAMESPACE"]), cid, a.IfName, strings.Join(ips, ","), a.Network)
			}
			return tw.Flush()
		},
	}
	ls.Flags().StringVar(&socket, "socket", defaultSocket, "weftd's socket")
	ls.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	pod.AddCommand(ls)
	return pod
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
