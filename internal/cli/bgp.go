package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
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

// newBGPPeerCmd manages the external peers in the cluster store, or in a configuration
// file (--config-file).
func newBGPPeerCmd() *cobra.Command {
	var sf storeFlags
	book := peerBook{sf: &sf}
	cmd := &cobra.Command{Use: "peer", Short: "External BGP peers (top-of-rack or edge routers) in the cluster store or configuration file"}
	sf.register(cmd)
	cmd.PersistentFlags().StringVar(&book.file, "config-file", "", "keep the peers in this cluster configuration file (`weft cluster init --config-file`: Kubernetes mode has no store) instead of the store")

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
			if err := book.put(p); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "bgp peer %s: %s AS %d\n", p.Name, p.Address, p.ASN)
			return nil
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
			ps, err := book.list()
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
		},
	}
	rm := &cobra.Command{
		Use: "rm NAME", Short: "Remove an external peer", Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return book.remove(args[0])
		},
	}
	cmd.AddCommand(add, ls, rm)
	return cmd
}

// peerBook is where external peers are kept: the cluster store, or a cluster
// configuration file.
type peerBook struct {
	sf   *storeFlags
	file string
}

func (b peerBook) put(p v1.BGPPeer) error {
	if b.file == "" {
		return b.sf.withClient(func(ctx context.Context, c resources.Client) error { return c.PutBGPPeer(ctx, p) })
	}
	return b.edit(func(cfg *v1.BGPConfig) error {
		cfg.Peers = slices.DeleteFunc(cfg.Peers, func(q v1.BGPPeer) bool { return q.Name == p.Name })
		cfg.Peers = append(cfg.Peers, p)
		return nil
	})
}

func (b peerBook) list() (out []v1.BGPPeer, err error) {
	if b.file == "" {
		err = b.sf.withClient(func(ctx context.Context, c resources.Client) error {
			out, err = c.ListBGPPeers(ctx)
			return err
		})
		return out, err
	}
	err = b.edit(func(cfg *v1.BGPConfig) error {
		out = cfg.Peers
		return errUnchanged
	})
	return out, err
}

func (b peerBook) remove(name string) error {
	if b.file == "" {
		return b.sf.withClient(func(ctx context.Context, c resources.Client) error { return c.DeleteBGPPeer(ctx, name) })
	}
	return b.edit(func(cfg *v1.BGPConfig) error {
		cfg.Peers = slices.DeleteFunc(cfg.Peers, func(q v1.BGPPeer) bool { return q.Name == name })
		return nil
	})
}

// errUnchanged tells edit to leave the file as it was.
var errUnchanged = errors.New("unchanged")

// edit reads the configuration file, lets fn change its BGP part, checks the result and
// writes it back.
func (b peerBook) edit(fn func(*v1.BGPConfig) error) error {
	raw, err := os.ReadFile(b.file)
	if err != nil {
		return err
	}
	cfg, err := v1.ParseClusterConfig(raw)
	if err != nil {
		return badInput(fmt.Errorf("%s: %w", b.file, err))
	}
	if cfg.BGP == nil {
		return badInput(fmt.Errorf("%s: the cluster's fabric is %s, not bgp", b.file, cfg.Fabric))
	}
	if err := fn(cfg.BGP); errors.Is(err, errUnchanged) {
		return nil
	} else if err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return badInput(err)
	}
	out, _ := json.MarshalIndent(cfg, "", "  ")
	return os.WriteFile(b.file, append(out, '\n'), 0o644)
}
