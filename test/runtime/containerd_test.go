package runtime_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/testutil"
)

// containerd is one containerd (CRI plugin on) running in a node namespace of the test's,
// with all its state under the test's directory.
type containerd struct {
	t      *testing.T
	dir    string
	node   testutil.NS
	sock   string
	cniBin string
	netd   string // ctr's CNI configs (bind-mounted over /etc/cni/net.d for ctr only)
	crinet string // CRI's CNI configs
	cmd    *exec.Cmd
}

func startContainerd(t *testing.T, node testutil.NS, weftSocket string) *containerd {
	t.Helper()
	testutil.RequireTool(t, "containerd")
	testutil.RequireTool(t, "ctr")
	testutil.RequireTool(t, "runc")
	dir, err := os.MkdirTemp("", "weft-ctd-") // short: containerd's socket paths must fit
	if err != nil {
		t.Fatal(err)
	}
	c := &containerd{t: t, dir: dir, node: node, sock: filepath.Join(dir, "c.sock"),
		cniBin: filepath.Join(dir, "bin"), netd: filepath.Join(dir, "net.d"), crinet: filepath.Join(dir, "cri-net.d")}
	for _, d := range []string{c.cniBin, c.netd, c.crinet, filepath.Join(dir, "fifo")} {
		_ = os.MkdirAll(d, 0o755)
	}
	_ = os.Symlink(filepath.Join(testutil.Binaries(t), "weft-cni"), filepath.Join(c.cniBin, "weft-cni"))
	_ = os.Symlink("/usr/lib/cni/loopback", filepath.Join(c.cniBin, "loopback"))
	conflist := func(name string) string {
		return fmt.Sprintf(`{"cniVersion":"1.0.0","name":%q,"plugins":[{"type":"weft-cni","mode":"bridge","socket":%q,
			"capabilities":{"portMappings":true,"dns":true}}]}`, name, weftSocket)
	}
	_ = os.WriteFile(filepath.Join(c.netd, "10-weft.conflist"), []byte(conflist("weftctr")), 0o644)
	_ = os.WriteFile(filepath.Join(c.crinet, "10-weft.conflist"), []byte(conflist("weftcri")), 0o644)
	cfg := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
[grpc]
  address = %[3]q
[ttrpc]
  address = "%[3]s.ttrpc"
[debug]
  address = "%[1]s/debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "%[1]s/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/weft-pause:1"
  stream_server_address = "127.0.0.1"
  enable_selinux = false
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[4]q
    conf_dir = %[5]q
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.sock, c.cniBin, c.crinet)
	_ = os.WriteFile(filepath.Join(dir, "config.toml"), []byte(cfg), 0o644)
	_, runBefore := os.Stat("/run/containerd")
	log, _ := os.Create(filepath.Join(dir, "containerd.log"))
	c.cmd = node.Command("containerd", "--config", filepath.Join(dir, "config.toml"))
	c.cmd.Stdout, c.cmd.Stderr = log, log
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = c.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = c.cmd.Process.Kill()
			<-done
		}
		log.Close()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "containerd.log"))
			t.Logf("containerd log (tail):\n%s", tail(string(b), 3000))
		}
		unmountUnder(dir)
		_ = os.RemoveAll(dir)
		// The shims keep state under /run/containerd whatever the config says.
		if os.IsNotExist(runBefore) {
			_ = os.RemoveAll("/run/containerd")
		}
	})
	for i := 0; ; i++ {
		if out, err := exec.Command("ctr", "-a", c.sock, "version").CombinedOutput(); err == nil {
			break
		} else if i > 100 {
			t.Fatalf("containerd did not come up: %s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return c
}

// unmountUnder unmounts whatever a crashed test left mounted below dir (sandbox shm, rootfs).
func unmountUnder(dir string) {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return
	}
	var mounts []string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 1 && strings.HasPrefix(f[1], dir+"/") {
			mounts = append(mounts, f[1])
		}
	}
	for i := len(mounts) - 1; i >= 0; i-- {
		_ = syscall.Unmount(mounts[i], syscall.MNT_DETACH)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func (c *containerd) ctr(args ...string) (string, error) {
	out, err := exec.Command("ctr", append([]string{"-a", c.sock}, args...)...).CombinedOutput()
	return string(out), err
}

// importImage packs rootfs as ref into namespace ns.
func (c *containerd) importImage(rootfs, ref, namespace string, entrypoint ...string) {
	c.t.Helper()
	_, file, _, _ := runtime.Caller(0)
	script := filepath.Join(filepath.Dir(file), "testdata", "oci-image.sh")
	tarball := filepath.Join(c.dir, strings.NewReplacer("/", "_", ":", "_").Replace(ref)+".tar")
	if out, err := exec.Command(script, append([]string{rootfs, tarball, ref}, entrypoint...)...).CombinedOutput(); err != nil {
		c.t.Fatalf("build image: %v %s", err, out)
	}
	base := ref[:strings.LastIndex(ref, ":")]
	if out, err := c.ctr("-n", namespace, "images", "import", "--base-name", base, tarball); err != nil {
		c.t.Fatalf("import: %v %s", err, out)
	}
}

// ctrCNI runs ctr with CNI as ctr 1.6 insists on having it: configs from /etc/cni/net.d and
// plugins from /opt/cni/bin, which a private mount namespace points at the test's folders.
func (c *containerd) ctrCNI(args ...string) (string, error) {
	if _, err := os.Stat("/etc/cni/net.d"); err != nil {
		c.t.Fatalf("/etc/cni/net.d must exist to bind-mount over it for ctr: %v", err)
	}
	script := fmt.Sprintf(`mount --bind %q /etc/cni/net.d && mount -t tmpfs tmpfs /opt && mkdir -p /opt/cni/bin &&
		mount --bind %q /opt/cni/bin && exec nsenter --net=%q ctr -a %q "$@"`, c.netd, c.cniBin, c.node.Path, c.sock)
	out, err := exec.Command("unshare", append([]string{"-m", "--propagation", "private", "sh", "-c", script, "ctrcni"}, args...)...).CombinedOutput()
	return string(out), err
}

func TestContainerdCtrRunCNI(t *testing.T) {
	testutil.RequireRoot(t)
	before := testutil.RootSnapshot(t)
	node := testutil.NewNS(t, "ctd")
	w := testutil.StartWeftd(t, node, "10.112.0.0/24")
	c := startContainerd(t, node, w.Socket())
	rootfs := busyboxRootfs(t, t.TempDir())
	c.importImage(rootfs, "localhost/weft-busybox:1", "default")

	out, err := c.ctrCNI("run", "--rm", "--cni", "--fifo-dir", filepath.Join(c.dir, "fifo"), "localhost/weft-busybox:1",
		fmt.Sprintf("k%d", os.Getpid()), "/bin/sh", "-c", "ip -4 -o addr show eth0; ping -c1 -W2 10.112.0.1")
	if err != nil || !strings.Contains(out, "10.112.0.") || !strings.Contains(out, "1 packets received") {
		t.Fatalf("ctr run --cni: %v\n%s", err, out)
	}
	// --rm ran ADD, the command, then DEL: nothing stays allocated.
	if got := allocatedContainers(t, w); len(got) != 0 {
		t.Errorf("ctr run --rm left allocations: %v", got)
	}
	testutil.CheckRootUnchanged(t, before)
}

func TestContainerdCRIWithCrictl(t *testing.T) {
	testutil.RequireRoot(t)
	crictl := crictlPath(t)
	before := testutil.RootSnapshot(t)
	node := testutil.NewNS(t, "cri")
	w := testutil.StartWeftd(t, node, "10.113.0.0/24")
	c := startContainerd(t, node, w.Socket())
	rootfs := busyboxRootfs(t, t.TempDir())
	c.importImage(rootfs, "localhost/weft-pause:1", "k8s.io", "/bin/sleep", "2147483647")
	c.importImage(rootfs, "localhost/weft-busybox:1", "k8s.io")

	crictlConf := filepath.Join(c.dir, "crictl.yaml")
	_ = os.WriteFile(crictlConf, []byte(fmt.Sprintf("runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 60\n", c.sock, c.sock)), 0o644)
	cr := func(args ...string) string {
		t.Helper()
		// crictl must run in the node namespace: exec's stream server listens on 127.0.0.1 there.
		cmd := node.Command(crictl, append([]string{"--config", crictlConf}, args...)...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("crictl %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.String())
		}
		return strings.TrimSpace(string(out))
	}
	podSpec := func(name string) string {
		f := filepath.Join(c.dir, name+".json")
		spec := fmt.Sprintf(`{"metadata":{"name":%q,"namespace":"default","uid":"uid-%s","attempt":0},"hostname":%q,
			"log_directory":%q,"dns_config":{"servers":["10.96.0.10"],"searches":["default.svc.cluster.local"],"options":["ndots:5"]},"linux":{}}`,
			name, name, name, filepath.Join(c.dir, "logs", name))
		_ = os.WriteFile(f, []byte(spec), 0o644)
		return f
	}
	// Whatever happens, the sandboxes go (and their cni-* namespaces with them) before
	// containerd stops.
	t.Cleanup(func() {
		_ = node.Command(crictl, "--config", crictlConf, "rmp", "-a", "-f").Run()
	})
	ctrSpec := filepath.Join(c.dir, "ctr.json")
	_ = os.WriteFile(ctrSpec, []byte(`{"metadata":{"name":"app"},"image":{"image":"localhost/weft-busybox:1"},"command":["/bin/sleep","3600"],"log_path":"app.log","linux":{}}`), 0o644)

	var sandboxes []string
	for _, name := range []string{"p1", "p2"} {
		spec := podSpec(name)
		id := cr("runp", spec)
		sandboxes = append(sandboxes, id)
		ctrID := cr("create", id, ctrSpec, spec)
		cr("start", ctrID)
	}
	ip2 := cr("inspectp", "-o", "go-template", "--template", "{{.status.network.ip}}", sandboxes[1])
	ctrs := strings.Fields(cr("ps", "-q", "-p", sandboxes[0]))
	if len(ctrs) != 1 {
		t.Fatalf("containers of p1: %v", ctrs)
	}
	if out := cr("exec", ctrs[0], "ping", "-c", "2", "-W", "2", ip2); !strings.Contains(out, "0% packet loss") {
		t.Errorf("p1 → p2: %s", out)
	}
	if out := cr("exec", ctrs[0], "cat", "/etc/resolv.conf"); !strings.Contains(out, "10.96.0.10") {
		t.Errorf("resolv.conf: %s", out)
	}
	pods, _ := exec.Command(filepath.Join(testutil.Binaries(t), "weft"), "pod", "ls", "--socket", w.Socket()).Output()
	if !strings.Contains(string(pods), "p1") || !strings.Contains(string(pods), "default") {
		t.Errorf("weft pod ls lacks the CRI pod identity:\n%s", pods)
	}
	if got := allocatedContainers(t, w); len(got) != 2 {
		t.Errorf("allocations %v, want the 2 sandboxes", got)
	}
	// stopp sends DEL with the netns, rmp sends it again with none and no prevResult.
	for _, id := range sandboxes {
		cr("stopp", id)
		cr("rmp", id)
	}
	if got := allocatedContainers(t, w); len(got) != 0 {
		t.Errorf("stopp/rmp left allocations: %v", got)
	}
	testutil.CheckRootUnchanged(t, before)
}

func crictlPath(t *testing.T) string {
	if p, err := exec.LookPath("crictl"); err == nil {
		return p
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		p := filepath.Join(strings.TrimSpace(string(out)), "bin", "crictl")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return testutil.RequireTool(t, "crictl")
}
