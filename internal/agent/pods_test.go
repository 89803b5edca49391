package agent

import (
	"net/netip"
	"testing"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/ipam"
)

func TestPodsFromAllocations(t *testing.T) {
	ip := func(s string) ipam.IPConfig { return ipam.IPConfig{Address: netip.MustParsePrefix(s)} }
	allocs := []ipam.Allocation{
		{Key: ipam.Key{Network: "weft", ContainerID: "bbbbbbbbbbbbbbbbbbbb", IfName: "eth0"}, IPs: []ipam.IPConfig{ip("fd00::5/64"), ip("10.0.0.5/24")},
			Pod: &v1.PodIdentity{Name: "web-1", Namespace: "shop", Labels: map[string]string{"app": "web"}}},
		{Key: ipam.Key{Network: "other", ContainerID: "bbbbbbbbbbbbbbbbbbbb", IfName: "net1"}, IPs: []ipam.IPConfig{ip("10.9.0.5/24")}},
		{Key: ipam.Key{Network: "weft", ContainerID: "aaaaaaaaaaaaaaaaaaaa", IfName: "eth0"}, IPs: []ipam.IPConfig{ip("10.0.0.6/24")}},
	}
	pods := podsFromAllocations("node1", allocs)
	if len(pods) != 2 {
		t.Fatalf("pods %+v", pods)
	}
	anon, web := pods[0], pods[1]
	if anon.Name != "aaaaaaaaaaaa" || anon.Namespace != "default" || anon.Node != "node1" || !anon.Ready || len(anon.IPs) != 1 {
		t.Errorf("unnamed pod %+v", anon)
	}
	if web.Name != "web-1" || web.Namespace != "shop" || web.Labels["app"] != "web" || len(web.IPs) != 3 ||
		web.IPs[0] != netip.MustParseAddr("10.0.0.5") || web.IPs[2] != netip.MustParseAddr("fd00::5") {
		t.Errorf("named pod with two attachments %+v", web)
	}
}
