// Command weftd is weft's node agent.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/weftnet/weft/internal/agent"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "weftd:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("weftd", flag.ContinueOnError)
	hostname, _ := os.Hostname()
	var (
		stateDir    = fs.String("state-dir", "/var/lib/weft", "directory of the node store")
		runDir      = fs.String("run-dir", "/run/weft", "directory of the socket and node contract")
		podCIDR     = fs.String("pod-cidr", "", "the node's pod CIDR(s), comma separated (one IPv4 and/or one IPv6)")
		nodeName    = fs.String("node-name", hostname, "this node's name")
		mtu         = fs.Int("mtu", 0, "pod MTU (0: from the default route's device)")
		metricsAddr = fs.String("metrics-addr", "", "serve /metrics and /healthz on HOST:PORT")
		masquerade  = fs.Bool("masquerade", true, "masquerade pod traffic leaving the pod network")
		sysctls     = fs.Bool("manage-sysctls", true, "enable IP forwarding in weftd's network namespace")
		fastpath    = fs.Bool("fastpath", true, "short-cut pod-to-pod traffic on this node with eBPF (falls back when unavailable)")
		logLevel    = fs.String("log-level", "info", "debug, info, warn or error")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	var cidrs []netip.Prefix
	for _, s := range strings.Split(*podCIDR, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return fmt.Errorf("--pod-cidr: %q is not a CIDR", s)
		}
		cidrs = append(cidrs, p)
	}
	a, err := agent.New(agent.Options{
		NodeName: *nodeName, StateDir: *stateDir, RunDir: *runDir, PodCIDRs: cidrs, MTU: *mtu,
		MetricsAddr: *metricsAddr, Masquerade: *masquerade, ManageSysctls: *sysctls, Fastpath: *fastpath, Log: log,
	})
	if err != nil {
		return err
	}
	defer a.Close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return a.Run(ctx)
}
