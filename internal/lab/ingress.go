package lab

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/probe"
)

// Ingress ports on every node's underlay address.
const (
	IngressHTTPPort  = 80
	IngressHTTPSPort = 443
	// IngressMetricsAddr is where each node's weft-ingress serves /metrics and /status,
	// inside the node's namespace.
	IngressMetricsAddr = "127.0.0.1:9480"
)

// startIngress runs the node's weft-ingress on its underlay address and waits until it
// accepts connections.
func (l *Lab) startIngress(n *Node) error {
	logf, err := os.OpenFile(filepath.Join(l.dir(), n.Name, "ingress.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command("nsenter", "--net="+n.Netns, "--", filepath.Join(l.opts.BinDir, "weft-ingress"),
		"--store", l.State.Store, "--node-name", n.Name,
		"--http", netip.AddrPortFrom(n.Underlay, IngressHTTPPort).String(),
		"--https", netip.AddrPortFrom(n.Underlay, IngressHTTPSPort).String(),
		"--metrics-addr", IngressMetricsAddr,
		// Two workers, whatever the machine: every lab node runs one weft-ingress, and
		// one worker per CPU of a large host would be hundreds of processes.
		"--workers", "2")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start weft-ingress on %s: %w", n.Name, err)
	}
	n.IngressPID = cmd.Process.Pid
	go func() { _ = cmd.Wait() }()
	if err := l.save(); err != nil {
		return err
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c, err := probe.DialTCP(n.Netns, netip.AddrPortFrom(n.Underlay, IngressHTTPPort), time.Second); err == nil {
			c.Close()
			return nil
		}
	}
	return fmt.Errorf("weft-ingress on %s did not come up; see %s", n.Name, logf.Name())
}

// The lab's test CA signs the certificates `weft lab ingress cert add` issues; clients in
// checks and tests trust it (CAFile).
func (l *Lab) caFiles() (cert, key string) {
	return filepath.Join(l.dir(), "ca.pem"), filepath.Join(l.dir(), "ca-key.pem")
}

// CAFile is the lab's test CA certificate (PEM).
func (l *Lab) CAFile() string { c, _ := l.caFiles(); return c }

func (l *Lab) makeCA() error {
	certFile, keyFile := l.caFiles()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "weft lab " + l.opts.Name + " test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().AddDate(1, 0, 0), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	return os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
}

// IssueCert signs a certificate for hosts with the lab's CA and writes it and its key
// into the lab's folder; it returns the two files.
func (l *Lab) IssueCert(name string, hosts []string) (certFile, keyFile string, err error) {
	caCertFile, caKeyFile := l.caFiles()
	pair, err := tls.LoadX509KeyPair(caCertFile, caKeyFile)
	if err != nil {
		return "", "", fmt.Errorf("the lab's CA: %w", err)
	}
	ca, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return "", "", err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: hosts[0]}, DNSNames: hosts,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().AddDate(0, 3, 0),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, pair.PrivateKey)
	if err != nil {
		return "", "", err
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(l.dir(), "cert-"+name+".pem"), filepath.Join(l.dir(), "cert-"+name+"-key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return "", "", err
	}
	return certFile, keyFile, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
}

// IngressClient is an HTTP client in the underlay namespace (outside every node) that
// trusts the lab's CA and sends every request to addr, whatever the URL's host.
func (l *Lab) IngressClient(addr netip.AddrPort) (*http.Client, error) {
	caPEM, err := os.ReadFile(l.CAFile())
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		var c net.Conn
		err := probe.InNS(l.State.Underlay, func() (err error) {
			c, err = (&net.Dialer{Timeout: 3 * time.Second}).DialContext(ctx, "tcp", addr.String())
			return err
		})
		return c, err
	}
	return &http.Client{
		Timeout:       5 * time.Second,
		Transport:     &http.Transport{DialContext: dial, TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true, DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}, nil
}

// checkIngress reaches every route of every ingress on every node's weft-ingress from the
// underlay namespace: by host name and path, over HTTP, and over HTTPS for TLS hosts.
func (l *Lab) checkIngress(r *Report, fail func(string, ...any)) {
	var ins []v1.Ingress
	if err := l.weftJSON(&ins, "ingress", "ls", "-A"); err != nil {
		fail("ingress: %v", err)
		return
	}
	for _, n := range l.State.Nodes {
		if n.IngressPID == 0 {
			continue
		}
		for _, scheme := range []string{"http", "https"} {
			port := IngressHTTPPort
			if scheme == "https" {
				port = IngressHTTPSPort
			}
			client, err := l.IngressClient(netip.AddrPortFrom(n.Underlay, uint16(port)))
			if err != nil {
				fail("ingress: %v", err)
				return
			}
			for _, in := range ins {
				tlsHosts := map[string]bool{}
				for _, t := range in.TLS {
					for _, h := range t.Hosts {
						tlsHosts[h] = true
					}
				}
				for _, h := range in.Hosts {
					host := h.Host
					if host == "" {
						host = "any.lab.test"
					}
					host = strings.Replace(host, "*", "probe", 1)
					if scheme == "https" && !tlsHosts[h.Host] {
						continue
					}
					for _, rt := range h.Routes {
						r.Ingress++
						if err := probeRoute(client, scheme, host, rt); err != nil {
							fail("ingress %s on %s: %s://%s%s: %v", in.Key(), n.Name, scheme, host, pathOrRoot(rt.Path), err)
						}
					}
				}
			}
		}
	}
}

func pathOrRoot(p string) string {
	if p == "" {
		return "/"
	}
	return p
}

// probeRoute sends the request the route matches and checks the answer came from where
// the route sends it: a redirect, or a backend (not 404 or 5xx).
func probeRoute(client *http.Client, scheme, host string, rt v1.Route) error {
	method := "GET"
	if len(rt.Methods) > 0 {
		method = rt.Methods[0]
	}
	req, _ := http.NewRequest(method, scheme+"://"+host+pathOrRoot(rt.Path), nil)
	for _, h := range rt.Headers {
		req.Header.Set(h.Name, h.Value)
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	switch {
	case rt.Redirect != nil && (resp.StatusCode < 300 || resp.StatusCode > 399):
		return fmt.Errorf("status %d, want a redirect", resp.StatusCode)
	case rt.Redirect == nil && (resp.StatusCode == 404 || resp.StatusCode >= 500):
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// ServeHTTP runs a lab pod's HTTP server on port until stop closes: "/" answers with the
// pod's name and what it saw, "/ws" echoes after an upgrade (WebSocket handshake), and
// gRPC (HTTP/2 without TLS) answers the standard health service.
func ServeHTTP(name string, port int, stop <-chan struct{}) error {
	ln, err := net.Listen("tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		return err
	}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			http.Error(w, "upgrade to websocket", http.StatusBadRequest)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		if brw.Flush() == nil {
			_, _ = io.Copy(c, brw)
		}
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			gs.ServeHTTP(w, r)
			return
		}
		w.Header().Set("X-Pod", name)
		fmt.Fprintf(w, "%s %s %s %s\n", name, r.Method, r.Host, r.URL.RequestURI())
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, Protocols: new(http.Protocols)}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	go func() {
		<-stop
		srv.Close()
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
