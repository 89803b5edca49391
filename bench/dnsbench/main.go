// Command dnsbench serves, or writes out, the same synthetic cluster zone for bench/dns.sh:
// N services spread over namespaces, each with a ClusterIP. With -serve it runs weft's
// node DNS server on it (forwarding other names to -upstream); with -zone and -queries it
// writes the same names as a zone file for BIND/CoreDNS and a dnsperf query file.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"log"
	"net/netip"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/dns"
)

func main() {
	n := flag.Int("n", 10000, "services")
	serve := flag.String("serve", "", "serve the zone with weft's server on this address")
	upstream := flag.String("upstream", "", "forward other names here (host:port)")
	zoneFile := flag.String("zone", "", "write the zone file here")
	queries := flag.String("queries", "", "write a dnsperf query file of the service names here")
	external := flag.String("external", "", "also write a zone of N forwarded names under this domain to FILE.ext and their queries to QUERIES.ext")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the server here on SIGINT/SIGTERM")
	flag.Parse()

	svcs := services(*n)
	if *zoneFile != "" {
		must(writeZone(*zoneFile, "cluster.local.", 5, svcs, func(s v1.Service) string { return s.Name + "." + s.Namespace + ".svc" }))
	}
	if *queries != "" {
		must(writeLines(*queries, len(svcs), func(i int) string {
			return fmt.Sprintf("%s.%s.svc.cluster.local A", svcs[i].Name, svcs[i].Namespace)
		}))
	}
	if *external != "" {
		must(writeZone(*zoneFile+".ext", *external+".", 300, svcs, func(s v1.Service) string { return s.Name + "-" + s.Namespace }))
		must(writeLines(*queries+".ext", len(svcs), func(i int) string {
			return fmt.Sprintf("%s-%s.%s A", svcs[i].Name, svcs[i].Namespace, *external)
		}))
	}
	if *serve == "" {
		return
	}
	s := &dns.Server{Allowed: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}
	if *upstream != "" {
		s.Upstreams = []string{*upstream}
	}
	s.SetRecords(dns.Build(dns.Config{Domain: "cluster.local", Reverse: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12")}}, svcs, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		must(err)
		must(pprof.StartCPUProfile(f))
		defer pprof.StopCPUProfile()
	}
	log.Printf("dnsbench: serving %d services on %s", len(svcs), *serve)
	must(s.ListenAndServe(ctx, *serve))
}

// services makes n services in namespaces of 100, ClusterIPs counting up from 10.96.1.0.
func services(n int) []v1.Service {
	out := make([]v1.Service, n)
	ip := netip.MustParseAddr("10.96.1.0")
	for i := range out {
		ip = ip.Next()
		out[i] = v1.Service{Name: fmt.Sprintf("svc-%d", i), Namespace: fmt.Sprintf("ns-%d", i/100), ClusterIPs: []netip.Addr{ip}}
	}
	return out
}

// writeZone writes an authoritative zone: SOA, NS, one A per service. The cluster zone has
// weft's TTL (5 s); the forwarded one a long TTL so that weft's cache holds it for a run.
func writeZone(path, origin string, ttl int, svcs []v1.Service, owner func(v1.Service) string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	fmt.Fprintf(w, "$ORIGIN %s\n$TTL %d\n@ IN SOA ns.dns.%s hostmaster.%s 1 7200 1800 86400 5\n@ IN NS ns.dns.%s\nns.dns IN A 127.0.0.1\n", origin, ttl, origin, origin, origin)
	for _, s := range svcs {
		fmt.Fprintf(w, "%s IN A %s\n", owner(s), s.ClusterIPs[0])
	}
	if err := w.Flush(); err != nil {
		return err
	}
	return f.Close()
}

func writeLines(path string, n int, line func(int) string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	for i := range n {
		fmt.Fprintln(w, line(i))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	return f.Close()
}

func must(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
