package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/spf13/cobra"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/cniapi"
	"github.com/weftnet/weft/internal/dns"
	"github.com/weftnet/weft/internal/resources"
)

func newDNSCmd() *cobra.Command {
	var sf storeFlags
	cmd := &cobra.Command{Use: "dns", Short: "The cluster DNS: what a node answers"}
	sf.register(cmd)

	var server, runDir string
	query := &cobra.Command{
		Use: "query NAME [TYPE]", Short: "Ask this node's cluster DNS what a pod on it would get", Args: rangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			qtype := mdns.TypeA
			if len(args) == 2 {
				t, ok := mdns.StringToType[strings.ToUpper(args[1])]
				if !ok {
					return usageErr("type %q: use A, AAAA, SRV, PTR, ...", args[1])
				}
				qtype = t
			}
			addr := server
			if addr == "" {
				c, err := cniapi.ReadNodeContract(runDir)
				if err != nil || len(c.DNSServers) == 0 {
					return fmt.Errorf("no cluster DNS on this node (node contract in %s: %v); use --server", runDir, err)
				}
				addr = net.JoinHostPort(c.DNSServers[0].String(), "53")
			}
			name := args[0]
			if a, err := netip.ParseAddr(name); err == nil && len(args) == 1 { // an address: its PTR
				name, _ = mdns.ReverseAddr(a.String())
				qtype = mdns.TypePTR
			}
			req := new(mdns.Msg)
			req.SetQuestion(mdns.Fqdn(name), qtype)
			req.SetEdns0(1232, false)
			m, _, err := (&mdns.Client{Timeout: 3 * time.Second}).Exchange(req, addr)
			if err == nil && m.Truncated {
				m, _, err = (&mdns.Client{Net: "tcp", Timeout: 3 * time.Second}).Exchange(req, addr)
			}
			if err != nil {
				return fmt.Errorf("ask %s: %w", addr, err)
			}
			if sf.output == "json" {
				out := struct {
					Rcode  string   `json:"rcode"`
					Answer []string `json:"answer"`
					Ns     []string `json:"authority"`
					Auth   bool     `json:"authoritative"`
					Server string   `json:"server"`
				}{Rcode: mdns.RcodeToString[m.Rcode], Auth: m.Authoritative, Server: addr}
				for _, rr := range m.Answer {
					out.Answer = append(out.Answer, rr.String())
				}
				for _, rr := range m.Ns {
					out.Ns = append(out.Ns, rr.String())
				}
				return printJSON(cmd.OutOrStdout(), out)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s (server %s)\n", mdns.RcodeToString[m.Rcode], addr)
			for _, rr := range m.Answer {
				fmt.Fprintln(cmd.OutOrStdout(), rr.String())
			}
			if m.Rcode != mdns.RcodeSuccess {
				return &ExitError{Code: 1, Err: fmt.Errorf("%s: %s", name, mdns.RcodeToString[m.Rcode])}
			}
			return nil
		},
	}
	query.Flags().StringVar(&server, "server", "", "DNS server HOST:PORT (default: this node's, from its node contract)")
	query.Flags().StringVar(&runDir, "run-dir", "/run/weft", "weftd's run directory (node contract)")

	records := &cobra.Command{
		Use: "records", Short: "Every record of the cluster domain, as every node serves it", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return sf.withClient(func(ctx context.Context, c resources.Client) error {
				kv, err := c.Store.Get(ctx, resources.ConfigKey)
				if err != nil {
					return fmt.Errorf("cluster config: %w", err)
				}
				var cfg v1.ClusterConfig
				if err := json.Unmarshal(kv.Value, &cfg); err != nil {
					return err
				}
				svcs, err := c.ListServices(ctx)
				if err != nil {
					return err
				}
				pods, err := c.ListPods(ctx)
				if err != nil {
					return err
				}
				r := dns.Build(dns.ConfigFor(cfg), svcs, pods)
				names := r.Names()
				if sf.output == "json" {
					return printJSON(cmd.OutOrStdout(), names)
				}
				keys := make([]string, 0, len(names))
				for k := range names {
					keys = append(keys, k)
				}
				sort.Strings(keys)
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				for _, k := range keys {
					for _, rr := range names[k] {
						fmt.Fprintln(tw, rr)
					}
				}
				return tw.Flush()
			})
		},
	}
	cmd.AddCommand(query, records)
	return cmd
}
