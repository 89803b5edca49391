package cni_test

import (
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
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
		resp, err := n.ns.HTTPClient().Get("http://" + addr + path)
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
		`weft_fastpath_asks_conntrack 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	_ = n.del(list, rt)
}
