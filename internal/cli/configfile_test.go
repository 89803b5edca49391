package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/weftnet/weft/api/v1"
)

// TestConfigFile: Kubernetes mode's configuration file is written by `cluster init
// --config-file` (load balancer CIDRs included) and its external BGP peers are kept by
// `bgp peer add|ls|rm --config-file`; a file of another fabric, or a bad peer, is refused.
func TestConfigFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "cluster.json")
	if _, code := run(t, "cluster", "init", "--config-file", file, "--cluster-cidr", "10.244.0.0/16", "--service-cidr", "10.96.0.0/16",
		"--fabric", "bgp", "--bgp-lb-cidr", "10.97.0.0/24", "--bgp-cross-subnet-vxlan"); code != 0 {
		t.Fatalf("cluster init --config-file: exit %d", code)
	}
	read := func() v1.ClusterConfig {
		t.Helper()
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		c, err := v1.ParseClusterConfig(b)
		if err != nil {
			t.Fatalf("the file does not parse back: %v\n%s", err, b)
		}
		return c
	}
	if c := read(); c.BGP == nil || len(c.BGP.LoadBalancerCIDRs) != 1 || c.BGP.LoadBalancerCIDRs[0].String() != "10.97.0.0/24" || !c.BGP.CrossSubnetVXLAN || !c.Tunnels() {
		t.Fatalf("config: %+v", c.BGP)
	}
	if _, code := run(t, "cluster", "init", "--config-file", filepath.Join(dir, "x.json"), "--cluster-cidr", "10.244.0.0/16", "--bgp-cross-subnet-vxlan"); code == 0 {
		t.Error("--bgp-cross-subnet-vxlan without --fabric bgp was taken")
	}
	for _, name := range []string{"tor1", "tor2", "tor1"} { // the second tor1 replaces the first
		if _, code := run(t, "bgp", "peer", "add", name, "--address", "192.168.1.254", "--asn", "65001", "--node-subnet", "192.168.1.0/24", "--config-file", file); code != 0 {
			t.Fatalf("peer add %s: exit %d", name, code)
		}
	}
	if c := read(); len(c.BGP.Peers) != 2 || c.BGP.Peers[1].Name != "tor1" || c.BGP.Peers[1].ASN != 65001 {
		t.Fatalf("peers: %+v", c.BGP.Peers)
	}
	if out, code := run(t, "bgp", "peer", "ls", "--config-file", file, "-o", "json"); code != 0 || !strings.Contains(out, `"tor2"`) {
		t.Fatalf("peer ls: exit %d\n%s", code, out)
	}
	if _, code := run(t, "bgp", "peer", "rm", "tor2", "--config-file", file); code != 0 {
		t.Fatalf("peer rm: exit %d", code)
	}
	if c := read(); len(c.BGP.Peers) != 1 || c.BGP.Peers[0].Name != "tor1" {
		t.Fatalf("peers after rm: %+v", c.BGP.Peers)
	}
	if _, code := run(t, "bgp", "peer", "add", "bad", "--address", "192.168.1.254", "--asn", "23456", "--config-file", file); code != 2 {
		t.Errorf("a bad peer: exit %d, want 2", code)
	}
	vx := filepath.Join(dir, "vxlan.json")
	if _, code := run(t, "cluster", "init", "--config-file", vx, "--cluster-cidr", "10.244.0.0/16"); code != 0 {
		t.Fatal("cluster init vxlan")
	}
	if _, code := run(t, "bgp", "peer", "add", "tor", "--address", "192.168.1.254", "--asn", "65001", "--config-file", vx); code != 2 {
		t.Errorf("a peer in a vxlan cluster's file: exit %d, want 2", code)
	}
}
