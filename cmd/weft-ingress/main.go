// weft-ingress is the cluster's north-south entry: an HTTP reverse proxy on a node's
// addresses that routes by the cluster's ingresses to the endpoints of services. It runs
// as its own process, so an overload or crash of the proxy never touches pod attachment
// or the rest of weftd.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/weftnet/weft/internal/ingress/controller"
	"github.com/weftnet/weft/internal/ingress/proxy"
	"github.com/weftnet/weft/internal/resources"
	"github.com/weftnet/weft/internal/store/storeurl"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "weft-ingress:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("weft-ingress", flag.ContinueOnError)
	hostname, _ := os.Hostname()
	var (
		storeURL, node, httpAddrs, httpsAddrs, metricsAddr, logLevel, etcdCA, etcdCert, etcdKey string
		proxyProtocol, accessLog, pprofOn                                                       bool
		maxBody                                                                                 int64
		maxHeader                                                                               int
	)
	fs.StringVar(&storeURL, "store", "", "cluster store: etcd://HOST:PORT[,HOST:PORT] or bolt:///PATH (required)")
	fs.StringVar(&node, "node-name", hostname, "this node's name (its status in the store)")
	fs.StringVar(&httpAddrs, "http", ":80", "HTTP listen addresses, comma separated (\"\": none)")
	fs.StringVar(&httpsAddrs, "https", ":443", "HTTPS listen addresses, comma separated (\"\": none)")
	fs.StringVar(&metricsAddr, "metrics-addr", "127.0.0.1:9480", "serve /metrics, /healthz and /status on HOST:PORT")
	fs.BoolVar(&proxyProtocol, "proxy-protocol", false, "connections start with a PROXY protocol header, v1 or v2 (behind a TCP load balancer)")
	fs.BoolVar(&accessLog, "access-log", true, "JSON access log on stderr (every request up to 100 a second, then 1 in 100)")
	fs.BoolVar(&pprofOn, "pprof", false, "also serve Go's profiler under /debug/pprof/ on the metrics address")
	fs.Int64Var(&maxBody, "max-body-bytes", 64<<20, "largest request body")
	fs.IntVar(&maxHeader, "max-header-bytes", 16<<10, "largest request head")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&etcdCA, "etcd-cafile", "", "CA of the etcd servers (enables TLS)")
	fs.StringVar(&etcdCert, "etcd-certfile", "", "client certificate for etcd")
	fs.StringVar(&etcdKey, "etcd-keyfile", "", "client key for etcd")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if storeURL == "" {
		return errors.New("--store is required")
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	st, err := storeurl.Open(storeURL, storeurl.TLSFiles{CA: etcdCA, Cert: etcdCert, Key: etcdKey})
	if err != nil {
		return err
	}
	defer st.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	cfg := proxy.Config{MaxBodyBytes: maxBody, MaxHeaderBytes: maxHeader, ProxyProtocol: proxyProtocol}
	if accessLog {
		cfg.AccessLog = log
	}
	p := proxy.New(cfg, proxy.NewMetrics(reg))

	var listeners []net.Listener
	var names []string
	for _, l := range []struct {
		addrs string
		tls   bool
	}{{httpAddrs, false}, {httpsAddrs, true}} {
		for _, a := range strings.Split(l.addrs, ",") {
			if a = strings.TrimSpace(a); a == "" {
				continue
			}
			ln, err := net.Listen("tcp", a)
			if err != nil {
				for _, o := range listeners {
					o.Close()
				}
				return fmt.Errorf("listen on %s: %w", a, err)
			}
			listeners = append(listeners, ln)
			scheme := "http"
			if l.tls {
				scheme = "https"
			}
			names = append(names, scheme+"://"+ln.Addr().String())
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cache := resources.NewCache(st)
	go func() { _ = cache.Run(ctx) }()
	ctl := &controller.Controller{Node: node, Listeners: names, Proxy: p, Cache: cache, Store: st, Log: log.Warn}
	go ctl.Run(ctx)

	errs := make(chan error, len(listeners)+1)
	for i, ln := range listeners {
		go func() { errs <- p.Serve(ln, strings.HasPrefix(names[i], "https")) }()
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if !cache.Synced() {
			http.Error(w, "not synced with the cluster store yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(ctl.Status())
	})
	if pprofOn {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	msrv := &http.Server{Addr: metricsAddr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	if metricsAddr != "" {
		go func() {
			if err := msrv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errs <- err
			}
		}()
	}
	log.Info("weft-ingress ready", "node", node, "listeners", strings.Join(names, " "))
	select {
	case <-ctx.Done():
	case err = <-errs:
	}
	for _, ln := range listeners {
		ln.Close()
	}
	_ = msrv.Close()
	return err
}
