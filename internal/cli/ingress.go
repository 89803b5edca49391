package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/ingress/route"
	"github.com/weftnet/weft/internal/resources"
)

func newIngressCmd() *cobra.Command {
	var sf storeFlags
	var namespace string
	cmd := &cobra.Command{Use: "ingress", Short: "HTTP ingress routes served by weft-ingress: list, show, remove, status, certificates"}
	sf.register(cmd)
	cmd.PersistentFlags().StringVarP(&namespace, "namespace", "n", "default", "namespace")

	ls := &cobra.Command{
		Use: "ls [--all-namespaces]", Short: "List ingresses", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			all, _ := cmd.Flags().GetBool("all-namespaces")
			return sf.withClient(func(ctx context.Context, c resources.Client) error {
				ins, err := c.ListIngresses(ctx)
				if err != nil {
					return err
				}
				out := []v1.Ingress{}
				for _, in := range ins {
					if all || in.Namespace == namespace {
						out = append(out, in)
					}
				}
				if sf.output == "json" {
					return printJSON(cmd.OutOrStdout(), out)
				}
				w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "NAMESPACE\tNAME\tHOSTS\tROUTES\tTLS\tDEFAULT BACKEND")
				for _, in := range out {
					var hosts, certs []string
					routes := 0
					for _, h := range in.Hosts {
						hosts = append(hosts, route.HostOrAny(h.Host))
						routes += len(h.Routes)
					}
					for _, t := range in.TLS {
						certs = append(certs, t.Certificate)
					}
					def := "-"
					if b := in.DefaultBackend; b != nil {
						def = b.Service + ":" + portOf(*b)
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\n", in.Namespace, in.Name, dashIfEmpty(strings.Join(hosts, ",")), routes, dashIfEmpty(strings.Join(certs, ",")), def)
				}
				return w.Flush()
			})
		},
	}
	ls.Flags().BoolP("all-namespaces", "A", false, "every namespace")
	get := &cobra.Command{
		Use: "get NAME", Short: "Show an ingress (JSON)", Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return sf.withClient(func(ctx context.Context, c resources.Client) error {
				in, err := c.GetIngress(ctx, namespace, args[0])
				if err != nil {
					return fmt.Errorf("ingress %s/%s: %w", namespace, args[0], err)
				}
				return printJSON(cmd.OutOrStdout(), in)
			})
		},
	}
	rm := &cobra.Command{
		Use: "rm NAME", Short: "Remove an ingress", Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return sf.withClient(func(ctx context.Context, c resources.Client) error {
				if err := c.DeleteIngress(ctx, namespace, args[0]); err != nil {
					return fmt.Errorf("ingress %s/%s: %w", namespace, args[0], err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "ingress %s/%s removed\n", namespace, args[0])
				return nil
			})
		},
	}
	status := &cobra.Command{
		Use: "status", Short: "What each node's weft-ingress serves: listeners, routes, upstream health", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return sf.withClient(func(ctx context.Context, c resources.Client) error {
				sts, err := c.ListIngressStatus(ctx)
				if err != nil {
					return err
				}
				if sf.output == "json" {
					return printJSON(cmd.OutOrStdout(), sts)
				}
				if len(sts) == 0 {
					fmt.Fprintln(cmd.OutOrStdout(), "no weft-ingress has reported yet")
					return nil
				}
				w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				for _, st := range sts {
					fmt.Fprintf(w, "NODE %s (reported %s)\tlisteners: %s\n", st.Node, st.Time.Format("15:04:05"), strings.Join(st.Listeners, " "))
					for _, r := range st.Routes {
						fmt.Fprintf(w, "  route\t%s\t-> %s\n", r.Route, strings.Join(r.Backends, ", "))
					}
					for _, u := range st.Upstreams {
						fmt.Fprintf(w, "  upstream\t%s\t%s\t%s\n", u.Backend, u.Address, u.Health)
					}
					for _, p := range st.Problems {
						fmt.Fprintf(w, "  problem\t%s\n", p)
					}
				}
				return w.Flush()
			})
		},
	}

	certCmd := &cobra.Command{Use: "cert", Short: "TLS certificates that ingresses name (tls[].certificate, or secretName in a Kubernetes Ingress)"}
	var certFile, keyFile string
	certAdd := &cobra.Command{
		Use: "add NAME --cert FILE --key FILE", Short: "Store a certificate and its key (PEM)", Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			certPEM, err := os.ReadFile(certFile)
			if err != nil {
				return usageErr("--cert: %v", err)
			}
			keyPEM, err := os.ReadFile(keyFile)
			if err != nil {
				return usageErr("--key: %v", err)
			}
			pair, err := tls.X509KeyPair(certPEM, keyPEM)
			if err != nil {
				return badInput(fmt.Errorf("certificate and key: %w", err))
			}
			leaf, err := x509.ParseCertificate(pair.Certificate[0])
			if err != nil {
				return badInput(fmt.Errorf("certificate: %w", err))
			}
			cert := v1.Certificate{Name: args[0], Namespace: namespace, CertPEM: string(certPEM), KeyPEM: string(keyPEM)}
			if err := cert.Validate(); err != nil {
				return badInput(err)
			}
			return sf.withClient(func(ctx context.Context, c resources.Client) error {
				if err := c.PutCertificate(ctx, cert); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "certificate %s: %s, valid until %s\n", cert.Key(), strings.Join(leaf.DNSNames, ","), leaf.NotAfter.Format("2006-01-02"))
				return nil
			})
		},
	}
	certAdd.Flags().StringVar(&certFile, "cert", "", "certificate chain, PEM")
	certAdd.Flags().StringVar(&keyFile, "key", "", "private key, PEM")
	certLs := &cobra.Command{
		Use: "ls", Short: "List certificates (never their keys)", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return sf.withClient(func(ctx context.Context, c resources.Client) error {
				certs, err := c.ListCertificates(ctx)
				if err != nil {
					return err
				}
				type row struct {
					Namespace string   `json:"namespace"`
					Name      string   `json:"name"`
					DNSNames  []string `json:"dnsNames"`
					NotAfter  string   `json:"notAfter"`
				}
				rows := []row{}
				for _, ce := range certs {
					if ce.Namespace != namespace {
						continue
					}
					r := row{Namespace: ce.Namespace, Name: ce.Name}
					if b, _ := pem.Decode([]byte(ce.CertPEM)); b != nil {
						if leaf, err := x509.ParseCertificate(b.Bytes); err == nil {
							r.DNSNames, r.NotAfter = leaf.DNSNames, leaf.NotAfter.Format("2006-01-02")
						}
					}
					rows = append(rows, r)
				}
				if sf.output == "json" {
					return printJSON(cmd.OutOrStdout(), rows)
				}
				w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "NAMESPACE\tNAME\tNAMES\tNOT AFTER")
				for _, r := range rows {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", r.Namespace, r.Name, strings.Join(r.DNSNames, ","), r.NotAfter)
				}
				return w.Flush()
			})
		},
	}
	certRm := &cobra.Command{
		Use: "rm NAME", Short: "Remove a certificate", Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return sf.withClient(func(ctx context.Context, c resources.Client) error {
				if err := c.DeleteCertificate(ctx, namespace, args[0]); err != nil {
					return fmt.Errorf("certificate %s/%s: %w", namespace, args[0], err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "certificate %s/%s removed\n", namespace, args[0])
				return nil
			})
		},
	}
	certCmd.AddCommand(certAdd, certLs, certRm)
	cmd.AddCommand(ls, get, rm, status, certCmd)
	return cmd
}

func dashIfEmpty(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func portOf(b v1.Backend) string {
	if b.PortName != "" {
		return b.PortName
	}
	return fmt.Sprint(b.Port)
}
