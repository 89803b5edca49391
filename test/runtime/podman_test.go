package runtime_test

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/probe"
	"github.com/weftnet/weft/internal/testutil"
)

type podman struct {
	t    *testing.T
	node testutil.NS
	env  []string
}

func (p *podman) run(args ...string) (string, error) {
	cmd := exec.Command("nsenter", append([]string{"--net=" + p.node.Path, "--", "podman"}, args...)...)
	cmd.Env = append(os.Environ(), p.env...)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func (p *podman) must(args ...string) string {
	p.t.Helper()
	out, err := p.run(args...)
	if err != nil {
		p.t.Fatalf("podman %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func TestPodman(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "podman")
	testutil.RequireTool(t, "runc")
	before := testutil.RootSnapshot(t)
	dir := t.TempDir()
	rootfs := busyboxRootfs(t, dir)
	node := testutil.NewNS(t, "pm")
	w := testutil.StartWeftd(t, node, "10.110.0.0/24")

	cniBin := filepath.Join(dir, "cni-bin")
	netd := filepath.Join(dir, "net.d")
	for _, d := range []string{cniBin, netd, filepath.Join(dir, "tmp")} {
		_ = os.MkdirAll(d, 0o755)
	}
	if err := os.Symlink(filepath.Join(testutil.Binaries(t), "weft-cni"), filepath.Join(cniBin, "weft-cni")); err != nil {
		t.Fatal(err)
	}
	net := fmt.Sprintf("weft%d", os.Getpid())
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// dns: what weft puts in every result (from the config here; on a cluster node, the
	// node's DNS); podman writes the container's resolv.conf from it.
	write("net.d/"+net+".conflist", fmt.Sprintf(`{"cniVersion":"1.0.0","name":%q,"plugins":[{"type":"weft-cni","mode":"bridge","socket":%q,
		"dns":{"nameservers":["10.110.0.53"],"search":["shop.svc.cluster.local","svc.cluster.local"],"options":["ndots:5"]},
		"capabilities":{"ips":true,"mac":true,"portMappings":true}}]}`, net, w.Socket()))
	write("net.d/"+net+"b.conflist", fmt.Sprintf(`{"cniVersion":"1.0.0","name":"%sb","plugins":[{"type":"weft-cni","mode":"bridge","bridge":"weft-b%d","socket":%q,
		"ipam":{"type":"weft-cni","ranges":[[{"subnet":"10.111.0.0/24"}]]}}]}`, net, os.Getpid()%10000, w.Socket()))
	write("containers.conf", fmt.Sprintf(`[containers]
default_sysctls = ["net.ipv4.ping_group_range=0 0"]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[network]
network_backend = "cni"
cni_plugin_dirs = [%q, "/usr/lib/cni"]
network_config_dir = %q
default_network = %q
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
tmp_dir = %q
`, cniBin, netd, net, filepath.Join(dir, "tmp")))
	write("storage.conf", fmt.Sprintf("[storage]\ndriver = \"vfs\"\nrunroot = %q\ngraphroot = %q\n", filepath.Join(dir, "runroot"), filepath.Join(dir, "graphroot")))
	pm := &podman{t: t, node: node, env: []string{"CONTAINERS_CONF=" + filepath.Join(dir, "containers.conf"), "CONTAINERS_STORAGE_CONF=" + filepath.Join(dir, "storage.conf")}}
	names := []string{}
	t.Cleanup(func() {
		if len(names) > 0 {
			_, _ = pm.run(append([]string{"rm", "-f", "-t", "0"}, names...)...)
		}
		// conmon's `podman container cleanup` may still be writing into the run root after
		// rm returns: remove it until it stays gone, before the test's TempDir goes.
		for _, d := range []string{"runroot", "tmp"} {
			p := filepath.Join(dir, d)
			for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
				if os.RemoveAll(p) == nil {
					time.Sleep(200 * time.Millisecond)
					if _, err := os.Stat(p); os.IsNotExist(err) {
						break
					}
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
		_ = os.RemoveAll("/var/lib/cni/results/" + net + "-")
		for _, n := range []string{net, net + "b"} {
			left, _ := filepath.Glob("/var/lib/cni/results/" + n + "-*")
			for _, f := range left {
				_ = os.Remove(f)
			}
		}
	})
	start := func(name string, opts []string, cmd ...string) string {
		names = append(names, name)
		// --rootfs is a boolean flag: every option goes before it, then the rootfs takes the
		// image's place.
		args := append(append([]string{"run", "-d", "--name", name}, opts...), "--rootfs", rootfs)
		pm.must(append(args, cmd...)...)
		return pm.must("inspect", "-f", "{{(index .NetworkSettings.Networks \""+net+"\").IPAddress}}", name)
	}
	ip1 := start("c1-"+net, nil, "/bin/sleep", "3600")
	ip2 := start("c2-"+net, []string{"-p", "18080:80"}, "/bin/httpd", "-f", "-p", "80", "-h", "/etc")
	ip3 := start("c3-"+net, []string{"--network", net + ":ip=10.110.0.50"}, "/bin/sleep", "3600")
	if ip3 != "10.110.0.50" {
		t.Errorf("static IP: got %s, want 10.110.0.50", ip3)
	}
	// (podman 4 takes nameservers and search from the result; options come from its own
	// dns_options.)
	if out, err := pm.run("exec", "c1-"+net, "cat", "/etc/resolv.conf"); err != nil || !strings.Contains(out, "nameserver 10.110.0.53") ||
		!strings.Contains(out, "search shop.svc.cluster.local svc.cluster.local") {
		t.Errorf("resolv.conf from the CNI result's dns: %v\n%s", err, out)
	}
	if out, err := pm.run("exec", "c1-"+net, "ping", "-c", "2", "-W", "2", ip2); err != nil || !strings.Contains(out, "0% packet loss") {
		t.Errorf("c1 → c2 ping: %v\n%s", err, out)
	}
	if out, err := pm.run("exec", "c2-"+net, "ping", "-c", "1", "-W", "2", ip1); err != nil {
		t.Errorf("c2 → c1 ping: %v\n%s", err, out)
	}
	// -p 18080:80 reaches the server in c2 through the node's address (the bridge gateway).
	if err := httpGet(node, "10.110.0.1:18080", "/passwd"); err != nil {
		t.Errorf("published port: %v", err)
	}
	// Identity: podman passes the container name.
	pods, _ := exec.Command(filepath.Join(testutil.Binaries(t), "weft"), "pod", "ls", "--socket", w.Socket()).Output()
	if !strings.Contains(string(pods), "c2-"+net) {
		t.Errorf("weft pod ls lacks the container name:\n%s", pods)
	}
	// network connect / disconnect.
	pm.must("network", "connect", net+"b", "c1-"+net)
	if out := pm.must("exec", "c1-"+net, "ip", "-4", "-o", "addr", "show", "eth1"); !strings.Contains(out, "10.111.0.") {
		t.Errorf("connect: eth1 has no address from the second network: %s", out)
	}
	pm.must("network", "disconnect", net+"b", "c1-"+net)
	if out, _ := pm.run("exec", "c1-"+net, "ip", "-o", "link"); strings.Contains(out, "eth1") {
		t.Errorf("disconnect left eth1:\n%s", out)
	}
	// Allocations equal the live containers' attachments.
	ids := strings.Fields(pm.must("ps", "-q", "--no-trunc"))
	sort.Strings(ids)
	if got := allocatedContainers(t, w); strings.Join(got, " ") != strings.Join(ids, " ") {
		t.Errorf("allocations %v, live containers %v", got, ids)
	}
	pm.must(append([]string{"rm", "-f", "-t", "0"}, names...)...)
	names = nil
	if got := allocatedContainers(t, w); len(got) != 0 {
		t.Errorf("podman rm -f left allocations: %v", got)
	}
	testutil.CheckRootUnchanged(t, before)
}

// httpGet fetches path from addr inside ns and checks for a 200.
func httpGet(ns testutil.NS, addr, path string) error {
	c, err := probe.DialTCP(ns.Path, netip.MustParseAddrPort(addr), 3*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.0\r\n\r\n", path); err != nil {
		return err
	}
	buf := make([]byte, 512)
	n, _ := c.Read(buf)
	if !strings.Contains(string(buf[:n]), "200") {
		return fmt.Errorf("no 200: %q", buf[:n])
	}
	return nil
}
