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
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/weftnet/weft/internal/ingress/controller"
	"github.com/weftnet/weft/internal/ingress/proxy"
	"github.com/weftnet/weft/internal/ingress/workers"
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
		storeURL, node, httpAddrs, httpsAddrs, metricsAddr, logLevel, etcdCA, etcdCert, etcdKey, affinity string
		proxyProtocol, accessLog, pprofOn                                                                 bool
		maxBody                                                                                           int64
		maxHeader, workerCount                                                                            int
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
	fs.IntVar(&workerCount, "workers", 0, "worker processes, each running on one Go P as nginx's workers do (0: one per CPU this process may use; 1: one process of as many Ps)")
	fs.StringVar(&affinity, "cpu-affinity", "auto", "auto: when the workers are as many as the CPUs this process may use, each keeps to one of them (as nginx's worker_cpu_affinity auto); off: the kernel places them")
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
	cfg := proxy.Config{MaxBodyBytes: maxBody, MaxHeaderBytes: maxHeader, ProxyProtocol: proxyProtocol, RawSyscalls: runtime.GOMAXPROCS(0) == 1}
	if accessLog {
		cfg.AccessLog = log
	}
	addrs := listenAddrs(httpAddrs, httpsAddrs)
	if index, ok := workers.Index(); ok {
		return runWorker(index, addrs, cfg, pprofOn, log)
	}
	if workerCount < 0 {
		return errors.New("--workers must be 0 or more")
	}
	if affinity != "auto" && affinity != "off" {
		return fmt.Errorf("--cpu-affinity %q: auto or off", affinity)
	}
	if workerCount == 0 {
		// One per CPU. Two per CPU halved the keep-alive p99 when the proxy shared a
		// scheduling group with its load, but cost rate and not p99 in a group of its
		// own (docs/benchmarks.md "Ingress", tried and not kept).
		workerCount = runtime.GOMAXPROCS(0)
	}

	st, err := storeurl.Open(storeURL, storeurl.TLSFiles{CA: etcdCA, Cert: etcdCert, Key: etcdKey})
	if err != nil {
		return err
	}
	defer st.Close()
	// One process listens itself. With workers, the master makes one SO_REUSEPORT
	// socket per worker and address (files[i]: worker i's) and never accepts.
	var listeners []net.Listener
	files := make([][]*os.File, workerCount)
	defer func() {
		for _, ln := range listeners {
			ln.Close()
		}
		for _, fs := range files {
			for _, f := range fs {
				f.Close()
			}
		}
	}()
	var names []string
	for _, a := range addrs {
		ln, err := net.Listen("tcp", a.addr)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", a.addr, err)
		}
		bound := ln.Addr().String()
		if workerCount == 1 {
			listeners = append(listeners, ln)
		} else {
			// With SO_REUSEPORT the workers' sockets could join another process's on the
			// same port (another weft-ingress, say) and share its connections: this plain
			// bind fails if anything holds the port, and fixes a port 0 for all of them.
			ln.Close()
			for i := range files {
				f, addr, err := workers.ListenFile(bound)
				if err != nil {
					return err
				}
				files[i] = append(files[i], f)
				bound = addr
			}
		}
		names = append(names, a.scheme+"://"+bound)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	gatherer := prometheus.Gatherers{reg}
	errs := make(chan error, len(addrs)+2)
	var target controller.Target
	var master *workers.Master
	if workerCount == 1 {
		p := proxy.New(cfg, proxy.NewMetrics(reg))
		target = controller.Local{Proxy: p}
		for i, ln := range listeners {
			go func() { errs <- p.Serve(ln, addrs[i].scheme == "https") }()
		}
	} else {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		dir, err := os.MkdirTemp("", "weft-ingress-")
		if err != nil {
			return err
		}
		master = workers.NewMaster(exe, os.Args[1:], files, dir, log)
		if affinity == "auto" {
			master.CPUs = workers.CPUsFor(workerCount)
		}
		defer os.RemoveAll(master.Dir)
		target, gatherer = master, append(gatherer, master)
	}

	cache := resources.NewCache(st)
	go func() { _ = cache.Run(ctx) }()
	ctl := &controller.Controller{Node: node, Listeners: names, Target: target, Cache: cache, Store: st, Log: log.Warn}
	go ctl.Run(ctx)
	workersDone := make(chan struct{})
	if master != nil {
		go func() {
			master.Run(ctx)
			close(workersDone)
		}()
	} else {
		close(workersDone)
	}

	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
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
		addPprof(mux)
	}
	msrv := &http.Server{Addr: metricsAddr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	if metricsAddr != "" {
		go func() {
			if err := msrv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errs <- err
			}
		}()
	}
	cpus := "any"
	if master != nil && master.CPUs != nil {
		cpus = fmt.Sprint(master.CPUs)
	}
	log.Info("weft-ingress ready", "node", node, "listeners", strings.Join(names, " "), "workers", workerCount, "worker_cpus", cpus)
	select {
	case <-ctx.Done():
	case err = <-errs:
	}
	stop() // the workers too
	for _, ln := range listeners {
		ln.Close() // stop accepting
	}
	_ = msrv.Close()
	<-workersDone
	return err
}

type listenAddr struct{ addr, scheme string }

// listenAddrs lists the HTTP then the HTTPS addresses: the order in which a worker
// inherits their sockets.
func listenAddrs(httpAddrs, httpsAddrs string) []listenAddr {
	var out []listenAddr
	for _, l := range []struct{ addrs, scheme string }{{httpAddrs, "http"}, {httpsAddrs, "https"}} {
		for _, a := range strings.Split(l.addrs, ",") {
			if a = strings.TrimSpace(a); a != "" {
				out = append(out, listenAddr{a, l.scheme})
			}
		}
	}
	return out
}

// runWorker serves the master's inherited sockets with the snapshots it sends, until the
// master closes the stream or stops the worker.
func runWorker(index int, addrs []listenAddr, cfg proxy.Config, pprofOn bool, log *slog.Logger) error {
	log = log.With("worker", index)
	if cpu, pinned, err := workers.PinFromEnv(); err != nil {
		log.Warn("worker left to the kernel's placement", "cpu", cpu, "err", err)
	} else if pinned {
		log.Debug("worker pinned", "cpu", cpu)
	}
	listeners, err := workers.Listeners(len(addrs))
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	labelled := prometheus.WrapRegistererWith(prometheus.Labels{"worker": strconv.Itoa(index)}, reg)
	labelled.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	p := proxy.New(cfg, proxy.NewMetrics(labelled))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	errs := make(chan error, len(listeners)+2)
	for i, ln := range listeners {
		go func() { errs <- p.Serve(ln, addrs[i].scheme == "https") }()
	}
	// Health and metrics for the master, on a socket in its private directory.
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/health", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(p.Health())
	})
	if pprofOn {
		addPprof(mux)
	}
	sock, err := net.Listen("unix", os.Getenv(workers.EnvSocket))
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(sock) }()
	go func() { errs <- workers.Follow(os.Stdin, controller.Local{Proxy: p}.Apply, log) }()
	select {
	case <-ctx.Done():
	case err = <-errs:
	}
	for _, ln := range listeners {
		ln.Close()
	}
	_ = srv.Close()
	return err
}

func addPprof(mux *http.ServeMux) {
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
}
