package cli

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	v1 "github.com/weftnet/weft/api/v1"
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
				Pools     []cniapi.PoolUsage   `json:"pools,omitempty"`
				Error     string               `json:"error,omitempty"`
			}{}
			c := cniapi.Client{Socket: socket}
			resp, err := c.Do(cniapi.Request{Op: cniapi.OpStatus})
			if err != nil {
				out.Error = err.Error()
			} else {
				out.Up, out.Ready, out.Problems, out.Pools = true, resp.Status.Ready, resp.Status.Problems, resp.Status.Pools
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
				if out.Node.Proxy != "" {
					fmt.Fprintf(w, "service proxy: %s\n", out.Node.Proxy)
				}
			}
			fmt.Fprintf(w, "attachments: %d\n", out.Allocated)
			for _, p := range out.Pools {
				fmt.Fprintf(w, "pool %s: %s allocated, %s free\n", p.CIDR, p.Allocated, p.Free)
			}
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
			pods := attachments(resp.Allocations)
			if output == "json" {
				return printJSON(cmd.OutOrStdout(), pods)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tNAMESPACE\tCONTAINER\tIFACE\tADDRESSES\tNETWORK\tLABELS")
			for _, p := range pods {
				var ips []string
				for _, ip := range p.IPs {
					ips = append(ips, ip.String())
				}
				cid := p.ContainerID
				if len(cid) > 12 {
					cid = cid[:12]
				}
				var labels []string
				for k, v := range p.Labels {
					labels = append(labels, k+"="+v)
				}
				sort.Strings(labels)
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", dash(p.Name), dash(p.Namespace), cid, p.IfName, strings.Join(ips, ","), p.Network, dash(strings.Join(labels, ",")))
			}
			return tw.Flush()
		},
	}
	ls.Flags().StringVar(&socket, "socket", defaultSocket, "weftd's socket")
	ls.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	pod.AddCommand(ls)
	return pod
}

// attachments turns the agent's records into the `weft pod ls` view, sorted.
func attachments(allocs []ipam.Allocation) []v1.Attachment {
	out := make([]v1.Attachment, 0, len(allocs))
	for _, a := range allocs {
		v := v1.Attachment{ContainerID: a.ContainerID, IfName: a.IfName, Network: a.Network, Ports: a.Ports, Netns: a.Netns, Created: a.Created}
		if a.Pod != nil {
			v.PodIdentity = *a.Pod
		}
		for _, ip := range a.IPs {
			v.IPs = append(v.IPs, ip.Address)
		}
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Namespace+"/"+out[i].Name != out[j].Namespace+"/"+out[j].Name {
			return out[i].Namespace+"/"+out[i].Name < out[j].Namespace+"/"+out[j].Name
		}
		return out[i].ContainerID+out[i].IfName < out[j].ContainerID+out[j].IfName
	})
	return out
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
