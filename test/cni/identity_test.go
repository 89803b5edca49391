package cni_test

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/testutil"
)

// TestPodIdentityInPodLs: what the runtime says about a pod shows in `weft pod ls`.
func TestPodIdentityInPodLs(t *testing.T) {
	n := newNode(t, "10.100.0.0/24")
	list := n.conflist("1.1.0", "weft", `"mode":"bridge","capabilities":{"labels":true}`)
	_, rt := n.pod("id1")
	rt.Args = [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAME", "web-0"}, {"K8S_POD_NAMESPACE", "shop"}, {"K8S_POD_UID", "uid-123"}}
	rt.CapabilityArgs = map[string]any{"labels": map[string]string{"app": "web", "tier": "front"}}
	n.mustAdd(list, rt)

	weft := filepath.Join(testutil.Binaries(t), "weft")
	out, err := exec.Command(weft, "pod", "ls", "--socket", n.weftd.Socket(), "-o", "json").Output()
	if err != nil {
		t.Fatal(err)
	}
	var pods []v1.Attachment
	if err := json.Unmarshal(out, &pods); err != nil || len(pods) != 1 {
		t.Fatalf("%v\n%s", err, out)
	}
	p := pods[0]
	if p.Name != "web-0" || p.Namespace != "shop" || p.UID != "uid-123" || p.Labels["app"] != "web" || p.Labels["tier"] != "front" ||
		p.ContainerID != "id1" || p.IfName != "eth0" || p.Network != "weft" || len(p.IPs) != 1 {
		t.Fatalf("pod ls: %+v", p)
	}
	table, err := exec.Command(weft, "pod", "ls", "--socket", n.weftd.Socket()).Output()
	if err != nil || !strings.Contains(string(table), "web-0") || !strings.Contains(string(table), "app=web,tier=front") {
		t.Fatalf("table:\n%s %v", table, err)
	}
	st, err := exec.Command(weft, "status", "--socket", n.weftd.Socket()).Output()
	if err != nil || !strings.Contains(string(st), "ready") || !strings.Contains(string(st), "pool 10.100.0.0/24: 1 allocated, 252 free") {
		t.Fatalf("status:\n%s %v", st, err)
	}
}
