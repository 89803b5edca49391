package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestModeFlags: the combinations of --kubeconfig, --ipam, --store and --cluster-config
// that cannot work are refused before anything starts, each saying why.
func TestModeFlags(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "cluster.json")
	if err := os.WriteFile(bad, []byte(`{"clusterCIDRs":["10.244.0.0/16"],"nodePrefixLength":24,"fabric":"vxlan","stor":"x"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--ipam", "kubernetes"}, "needs --kubeconfig"},
		{[]string{"--ipam", "weft", "--store", "bolt:///x"}, "needs --kubeconfig"},
		{[]string{"--kubeconfig", "k", "--ipam", "other"}, `--ipam "other"`},
		{[]string{"--kubeconfig", "k"}, "needs --cluster-config"},
		{[]string{"--kubeconfig", "k", "--ipam", "kubernetes", "--store", "bolt:///x"}, "drop --store"},
		{[]string{"--kubeconfig", "k", "--ipam", "weft"}, "--ipam weft needs --store"},
		{[]string{"--kubeconfig", "k", "--cluster-config", bad, "--pod-cidr", "10.0.0.0/24"}, "--pod-cidr excludes"},
		{[]string{"--kubeconfig", "k", "--cluster-config", bad}, `unknown field "stor"`},
		{[]string{"--kubeconfig", "k", "--cluster-config", filepath.Join(t.TempDir(), "none")}, "no such file"},
	} {
		err := run(append(c.args, "--log-level", "error"))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("weftd %s: %v, want an error saying %q", strings.Join(c.args, " "), err, c.want)
		}
	}
}
