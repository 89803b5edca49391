package e2e_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/weftnet/weft/internal/lab"
	"github.com/weftnet/weft/internal/probe"
	"github.com/weftnet/weft/internal/testutil"
)

const ingressManifests = `
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web}
spec:
  tls:
  - hosts: [web.lab.test]
    secretName: web-tls
  - hosts: [shop.lab.test]
    secretName: shop-tls
  rules:
  - host: web.lab.test
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
  - host: shop.lab.test
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
---
apiVersion: weft/v1
kind: Ingress
metadata: {name: rpc}
spec:
  hosts:
  - host: grpc.lab.test
    routes:
    - {path: /, backends: [{service: web, port: 80, protocol: H2C}]}
  - host: load.lab.test
    routes:
    - {path: /, backends: [{service: web, port: 80}], retries: {attempts: 2}}
`

// TestIngressInLab drives weft-ingress in a three-node lab from outside every node (the
// underlay namespace): HTTP, HTTPS with SNI for two hosts, HTTP/2, a WebSocket held across
// reloads, a gRPC call, an endpoint killed under load and a route change under wrk load.
func TestIngressInLab(t *testing.T) {
	testutil.RequireRoot(t)
	wrk := testutil.RequireTool(t, "wrk")
	l := labFor(t, "i")
	l.must("up", "-d", "--nodes", "3", "--fabric", "vxlan")
	for i := 1; i <= 3; i++ {
		l.must("pod", "add", fmt.Sprintf("web%d", i), "--node", fmt.Sprint(i), "--labels", "app=web", "--serve", "http:8080")
	}
	l.must("service", "add", "web", "--selector", "app=web", "--port", "80:8080/tcp")
	f := filepath.Join(t.TempDir(), "ingress.yaml")
	if err := os.WriteFile(f, []byte(ingressManifests), 0o644); err != nil {
		t.Fatal(err)
	}
	l.must("apply", "-f", f)
	l.must("ingress", "cert", "add", "web-tls", "--host", "web.lab.test")
	l.must("ingress", "cert", "add", "shop-tls", "--host", "shop.lab.test")
	lb, err := lab.Load(l.name)
	if err != nil {
		t.Fatal(err)
	}
	node1 := lb.State.Nodes[0].Underlay
	httpc, err := lb.IngressClient(netip.AddrPortFrom(node1, lab.IngressHTTPPort))
	if err != nil {
		t.Fatal(err)
	}
	httpsc, _ := lb.IngressClient(netip.AddrPortFrom(node1, lab.IngressHTTPSPort))
	getOK := func(c *http.Client, url string) (*http.Response, string, error) {
		resp, err := c.Get(url)
		if err != nil {
			return nil, "", err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(b), nil
	}
	// The routes and certificates reach every node within a few seconds.
	for start := time.Now(); ; time.Sleep(100 * time.Millisecond) {
		resp, body, err := getOK(httpsc, "https://shop.lab.test/hello")
		if err == nil && resp.StatusCode == 200 && strings.HasPrefix(body, "web") {
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("ingress not serving: %v %v %q", err, resp, body)
		}
	}
	if out := l.must("check"); !strings.Contains(out, "ingress route probes: 0 failures") {
		t.Errorf("weft lab check:\n%s", out)
	}

	// HTTP, and HTTPS with SNI over HTTP/2 for two hosts.
	if resp, body, err := getOK(httpc, "http://web.lab.test/a?b=c"); err != nil || resp.StatusCode != 200 || !strings.Contains(body, "web.lab.test /a?b=c") {
		t.Errorf("http: %v %v %q", err, resp, body)
	}
	for _, host := range []string{"web.lab.test", "shop.lab.test"} {
		resp, _, err := getOK(httpsc, "https://"+host+"/")
		if err != nil || resp.StatusCode != 200 || resp.Proto != "HTTP/2.0" || resp.TLS.PeerCertificates[0].Subject.CommonName != host {
			t.Errorf("https %s: %v %v", host, err, resp)
		}
	}

	// gRPC: a unary health check through the ingress (h2c to it, h2c to the pod).
	conn, err := grpc.NewClient("passthrough:///"+netip.AddrPortFrom(node1, 80).String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithAuthority("grpc.lab.test"), grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			var c net.Conn
			err := probe.InNS(lb.State.Underlay, func() (err error) { c, err = (&net.Dialer{}).DialContext(ctx, "tcp", addr); return err })
			return c, err
		}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	hr, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	cancel()
	conn.Close()
	if err != nil || hr.Status != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("gRPC health through the ingress: %v %v", hr, err)
	}

	// A WebSocket held for 10 s while the routes and the endpoints change.
	var ws net.Conn
	if err := probe.InNS(lb.State.Underlay, func() (err error) { ws, err = net.Dial("tcp", netip.AddrPortFrom(node1, 80).String()); return err }); err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	ws.Write([]byte("GET /ws HTTP/1.1\r\nHost: web.lab.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"))
	wsr := bufio.NewReader(ws)
	if resp, err := http.ReadResponse(wsr, nil); err != nil || resp.StatusCode != 101 {
		t.Fatalf("websocket upgrade: %v %v", err, resp)
	}
	for i := 0; i < 20; i++ {
		msg := fmt.Sprintf("message %d\n", i)
		ws.Write([]byte(msg))
		_ = ws.SetReadDeadline(time.Now().Add(2 * time.Second))
		if got, err := wsr.ReadString('\n'); err != nil || got != msg {
			t.Fatalf("websocket echo %d (after %v): %q %v", i, time.Duration(i)*500*time.Millisecond, got, err)
		}
		switch i {
		case 6: // a configuration change
			l.must("apply", "-f", writeFile(t, strings.Replace(ingressManifests, "load.lab.test", "load2.lab.test", 1)))
		case 12: // an endpoint change
			l.must("pod", "add", "web4", "--node", "1", "--labels", "app=web", "--serve", "http:8080")
		}
		time.Sleep(500 * time.Millisecond)
	}

	// An endpoint killed under load: after passive ejection (≤ 1 s) no 5xx; with the
	// route's retries, none before it either.
	l.must("apply", "-f", f)
	for start := time.Now(); ; time.Sleep(50 * time.Millisecond) {
		if resp, _, err := getOK(httpc, "http://load.lab.test/"); err == nil && resp.StatusCode == 200 {
			break
		}
		if time.Since(start) > 5*time.Second {
			t.Fatal("load.lab.test is not routed again")
		}
	}
	var webPID int
	lb, _ = lab.Load(l.name)
	for _, p := range lb.State.Pods {
		if p.Name == "web2" {
			webPID = p.ServePID
		}
	}
	loadc, _ := lb.IngressClient(netip.AddrPortFrom(node1, lab.IngressHTTPPort))
	loadc.Transport.(*http.Transport).DisableKeepAlives = false
	var killedAt atomic.Int64
	var total, fails, failsAfter atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, _, err := getOK(loadc, "http://load.lab.test/")
				total.Add(1)
				if err != nil || resp.StatusCode != 200 {
					fails.Add(1)
					if k := killedAt.Load(); k != 0 && time.Since(time.Unix(0, k)) > time.Second {
						failsAfter.Add(1)
					}
				}
			}
		}()
	}
	time.Sleep(time.Second)
	killedAt.Store(time.Now().UnixNano())
	if err := syscall.Kill(webPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	close(stop)
	wg.Wait()
	t.Logf("endpoint killed under load: %d requests, %d failed (%d more than 1 s after the kill)", total.Load(), fails.Load(), failsAfter.Load())
	if failsAfter.Load() != 0 || fails.Load() != 0 {
		t.Errorf("%d of %d requests failed after an endpoint died (%d more than 1 s after)", fails.Load(), total.Load(), failsAfter.Load())
	}

	// A route change under wrk load: every response 2xx (the killed pod goes first: this
	// is about the change, not about a dead endpoint).
	var web2 []string
	for _, p := range lb.State.Pods {
		if p.Name == "web2" {
			for _, ip := range p.IPs {
				web2 = append(web2, netip.AddrPortFrom(ip, 8080).String())
			}
		}
	}
	l.must("pod", "rm", "web2")
	for start := time.Now(); ; time.Sleep(100 * time.Millisecond) {
		st := l.must("ingress", "status", "-o", "json")
		if !strings.Contains(st, web2[0]) && !strings.Contains(st, web2[len(web2)-1]) {
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("the removed pod is still an upstream:\n%s", st)
		}
	}
	wrkStart := time.Now().UTC()
	wrkOut := make(chan []byte, 1)
	go func() {
		cmd := exec.Command("nsenter", "--net="+lb.State.Underlay, "--", wrk, "-t", "2", "-c", "32", "-d", "4s", "-H", "Host: load.lab.test",
			fmt.Sprintf("http://%s/", node1))
		out, _ := cmd.CombinedOutput()
		wrkOut <- out
	}()
	time.Sleep(1500 * time.Millisecond)
	changed := strings.Replace(ingressManifests, "retries: {attempts: 2}", "retries: {attempts: 1}, timeout: 9s", 1)
	l.must("apply", "-f", writeFile(t, changed))
	out := <-wrkOut
	t.Logf("wrk across a route change:\n%s", out)
	if m := regexp.MustCompile(`(\d+) requests in`).FindSubmatch(out); m == nil || string(m[1]) == "0" {
		t.Fatalf("wrk did not run: %s", out)
	}
	if strings.Contains(string(out), "Non-2xx") || strings.Contains(string(out), "Socket errors") {
		logb, _ := os.ReadFile(filepath.Join("/run/weft-lab", l.name, "node1", "ingress.log"))
		var bad []string
		for _, line := range strings.Split(string(logb), "\n") {
			var entry struct{ Time time.Time }
			if json.Unmarshal([]byte(line), &entry) != nil || entry.Time.Before(wrkStart) {
				continue
			}
			if regexp.MustCompile(`"status":[1345]\d\d|"level":"(WARN|ERROR)"`).MatchString(line) && len(bad) < 20 {
				bad = append(bad, line)
			}
		}
		t.Errorf("failed requests across a route change:\n%s\nnode1's weft-ingress (answers other than 2xx, warnings; sampled):\n%s", out, strings.Join(bad, "\n"))
	}

	// The status names the listeners, routes and upstreams of every node.
	var sts []struct {
		Node      string
		Listeners []string
		Upstreams []struct{ Address, Health string }
	}
	if err := json.Unmarshal([]byte(l.must("ingress", "status", "-o", "json")), &sts); err != nil || len(sts) != 3 {
		t.Fatalf("ingress status: %v %+v", err, sts)
	}
	for _, st := range sts {
		if len(st.Listeners) != 2 || len(st.Upstreams) == 0 {
			t.Errorf("status of %s: %+v", st.Node, st)
		}
	}
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "m.yaml")
	if err := os.WriteFile(f, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}
