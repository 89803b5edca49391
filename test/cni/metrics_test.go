package cni_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/probe"
)

func TestMetricsAndHealthz(t *testing.T) {
	addr := fmt.Sprintf("127.0.0.1:%d", 20000+os.Getpid()%20000)
	n := newNode(t, "10.92.0.0/24", "--metrics-addr", addr)
	list := n.conflist("1.1.0", "weft", `"mode":"bridge"`)
	_, rt := n.pod("m1")
	n.mustAdd(list, rt)

	get := func(path string) (int, string) {
		t.Helper()
		var code int
		var body string
		// http.Transport dials on goroutines of its own, so the dial is done by probe on a
		// thread inside the node namespace.
		dial := func(ctx context.Context, _, a string) (net.Conn, error) {
			return probe.DialTCP(n.ns.Path, netip.MustParseAddrPort(a), 5*time.Second)
		}
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
		resp, err := c.Get("http://" + addr + path)
		if err == nil {
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			code, body = resp.StatusCode, string(b)
		}
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		return code, body
	}
	if code, body := get("/healthz"); code != 200 || !strings.Contains(body, "ok") {
		t.Errorf("/healthz: %d %q", code, body)
	}
	_, body := get("/metrics")
	for _, want := range []string{
		`weft_agent_requests_total{op="allocate",result="ok"} 1`,
		`weft_ipam_addresses{pool="10.92.0.0/24",state="allocated"} 1`,
		`weft_ipam_addresses{pool="10.92.0.0/24",state="free"} 252`,
		`weft_fastpath_packets_total{path="local"}`,
		`weft_fastpath_packets_total{path="decap"}`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	_ = n.del(list, rt)
}
