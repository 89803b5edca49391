package cli

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/cniapi"
	"github.com/weftnet/weft/internal/resources"
)

func newBGPCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "bgp", Short: "Fabric bgp: this node's sessions and routes, and the cluster's external peers"}
	var socket, output string
	ask := func() (*v1.BGPStatus, error) {
		resp, err := (cniapi.Client{Socket: socket}).Do(cniapi.Request{Op: cniapi.OpBGP})
		if err != nil {
			return nil, err
		}
		if resp.Error != nil {
			return nil, fmt.Errorf("%s", resp.Error.Msg)
		}
		return resp.BGP, nil
	}
	peers := &cobra.Command{
		Use: "peers", Short: "This node's BGP sessions: state, uptime, prefixes received, accepted and sent", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := ask()
			if err != nil {
				return err
			}
			if output == "json" {
				return printJSON(cmd.OutOrStdout(), st.Peers)
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintf(w, "AS %d, router ID %s\n", st.ASN, st.RouterID)
			fmt.Fprintln(w, "PEER\tADDRESS\tAS\tSTATE\tFOR\tRECEIVED\tACCEPTED\tSENT\tSYNCED")
			for _, p := range st.Peers {
				fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%d\t%d\t%d\t%v\n", p.Name, p.Address, p.ASN, p.State,
					time.Since(p.Since).Truncate(time.Second), p.Received, p.Accepted, p.Advertised, p.Synced)
			}
			return w.Flush()
		},
	}
	routes := &cobra.Command{
		Use: "routes", Short: "Routes this node learned (and installed) and the prefixes it announces", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := ask()
			if err != nil {
				return err
			}
			if output == "json" {
				return printJSON(cmd.OutOrStdout(), struct {
					Learned   []v1.BGPRoute `json:"learned"`
					Announced []v1.BGPRoute `json:"announced"`
				}{st.Routes, st.Announced})
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "PREFIX\tNEXT HOPS\tORIGIN")
			for _, r := range st.Announced {
				fmt.Fprintf(w, "%s\t%s\tthis node\n", r.Prefix, joinAddrs(r.NextHops))
			}
			for _, r := range st.Routes {
				fmt.Fprintf(w, "%s\t%s\tlearned\n", r.Prefix, joinAddrs(r.NextHops))
			}
			return w.Flush()
		},
	}
	for _, c := range []*cobra.Command{peers, routes} {
		c.Flags().StringVar(&socket, "socket", defaultSocket, "weftd's socket")
		c.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	}
	cmd.AddCommand(peers, routes, newBGPPeerCmd())
	return cmd
}

func joinAddrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ",")
}

// newBGPPeerCmd manages the external peers in the cluster store.
func newBGPPeerCmd() *cobra.Command {
	var sf storeFlags
	cmd := &cobra.Command{Use: "peer", Short: "External BGP peers (top-of-rack or edge routers) in the cluster store"}
	sf.register(cmd)

	var p v1.BGPPeer
	var address, subnet string
	var hold, keepalive time.Duration
	add := &cobra.Command{
		Use: "add NAME --address ADDR --asn N [--node NODE ... | --node-subnet CIDR]", Short: "Add or replace an external peer",
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p.Name = args[0]
			var err error
			if p.Address, err = netip.ParseAddr(address); err != nil {
				return badInput(fmt.Errorf("--address %q: %w", address, err))
			}
			if subnet != "" {
				if p.NodeSubnet, err = netip.ParsePrefix(subnet); err != nil {
					return badInput(fmt.Errorf("--node-subnet %q: %w", subnet, err))
				}
			}
			p.HoldTime, p.Keepalive = v1.Duration(hold), v1.Duration(keepalive)
			if err := p.Validate(); err != nil {
				return badInput(err)
			}
			return sf.withClient(func(ctx context.Context, c resources.Client) error {
				if err := c.PutBGPPeer(ctx, p); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "bgp peer %s: %s AS %d\n", p.Name, p.Address, p.ASN)
				return nil
			})
		},
	}
	add.Flags().StringVar(&address, "address", "", "the peer's address")
	add.Flags().Uint32Var(&p.ASN, "asn", 0, "the peer's AS number")
	add.Flags().StringSliceVar(&p.Nodes, "node", nil, "nodes that peer with it (default: every node, or those in --node-subnet)")
	add.Flags().StringVar(&subnet, "node-subnet", "", "nodes whose underlay address is in this subnet peer with it (a rack)")
	add.Flags().StringVar(&p.Password, "password", "", "TCP MD5 password")
	add.Flags().DurationVar(&hold, "hold-time", 0, "hold time (default 9s)")
	add.Flags().DurationVar(&keepalive, "keepalive", 0, "keepalive interval (default a third of the hold time)")
	add.Flags().Uint8Var(&p.Multihop, "multihop", 0, "eBGP TTL when the peer is not directly connected")

	ls := &cobra.Command{
		Use: "ls", Short: "List external peers", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return sf.withClient(func(ctx context.Context, c resources.Client) error {
				ps, err := c.ListBGPPeers(ctx)
				if err != nil {
					return err
				}
				for i := range ps {
					if ps[i].Password != "" {
						ps[i].Password = "(set)"
					}
				}
				if sf.output == "json" {
					if ps == nil {
						ps = []v1.BGPPeer{}
					}
					return printJSON(cmd.OutOrStdout(), ps)
				}
				w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "NAME\tADDRESS\tAS\tNODES")
				for _, p := range ps {
					nodes := "all"
					switch {
					case len(p.Nodes) > 0:
						nodes = strings.Join(p.Nodes, ",")
					case p.NodeSubnet.IsValid():
						nodes = "in " + p.NodeSubnet.String()
					}
					fmt.Fprintf(w, "%s\t%s\t%d\t%s\n", p.Name, p.Address, p.ASN, nodes)
				}
				return w.Flush()
			})
		},
	}
	rm := &cobra.Command{
		Use: "rm NAME", Short: "Remove an external peer", Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return sf.withClient(func(ctx context.Context, c resources.Client) error {
				return c.DeleteBGPPeer(ctx, args[0])
			})
		},
	}
	cmd.AddCommand(add, ls, rm)
	return cmd
}
