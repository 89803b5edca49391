// Package testutil holds helpers for weft's privileged tests: root gating, throwaway network
// namespaces, the project's binaries built once per test binary, and a weftd harness.
package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	cnins "github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"

	"github.com/weftnet/weft/internal/netns"
)

// RequiredEnv, when "1", turns every would-be skip of a privileged test into a failure.
// The test command sets it, so CI can never pass with privileged tests silently skipped.
const RequiredEnv = "WEFT_REQUIRE_PRIVILEGED"

// RequireRoot skips t unless running as root (fails instead under RequiredEnv=1).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(t, "needs root (network namespaces)")
	}
}

// RequireTool skips t unless the named program is on PATH (fails under RequiredEnv=1), and
// returns its path.
func RequireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		skipOrFail(t, name+" is not installed")
	}
	return p
}

func skipOrFail(t testing.TB, why string) {
	t.Helper()
	if os.Getenv(RequiredEnv) == "1" {
		t.Fatalf("%s, and %s=1 forbids skipping", why, RequiredEnv)
	}
	t.Skip(why)
}

var nsSeq atomic.Int64

// NS is a named network namespace made for one test.
type NS struct {
	Name string
	Path string
}

// NewNS creates a namespace with a name unique to this process, brings its loopback up,
// and deletes it when t ends.
func NewNS(t testing.TB, hint string) NS {
	t.Helper()
	name := fmt.Sprintf("wt%d-%s%d", os.Getpid(), hint, nsSeq.Add(1))
	n, err := CreateNS(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = DeleteNS(n.Name) })
	return n
}

// CreateNS makes a named namespace (as `ip netns add` does).
func CreateNS(name string) (NS, error) {
	path, err := netns.Create(name)
	return NS{Name: name, Path: path}, err
}

// DeleteNS removes a named namespace.
func DeleteNS(name string) error { return netns.Delete(name) }

// Handle returns a netlink handle in ns, closed when t ends.
func (n NS) Handle(t testing.TB) *netlink.Handle {
	t.Helper()
	nsh, err := vnetns.GetFromPath(n.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// Command returns cmd run inside ns (nsenter switches only the network namespace).
func (n NS) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=" + n.Path, "--", name}, args...)...)
}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// Binaries builds weft-cni, weftd, weft and weft-ingress once per test binary and returns their folder.
func Binaries(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		if dir := os.Getenv(binEnv); dir != "" { // a re-executed test binary reuses its parent's
			binDir = dir
			return
		}
		binDir, buildErr = os.MkdirTemp("", "weft-bin-")
		if buildErr != nil {
			return
		}
		root, err := moduleRoot()
		if err != nil {
			buildErr = err
			return
		}
		// The same flags as scripts/lib.sh: a static, stripped weft-cni starts ~0.5 ms faster.
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", binDir+"/", "./cmd/weft-cni", "./cmd/weftd", "./cmd/weft", "./cmd/weft-ingress")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// CleanupBinaries removes what Binaries built; call it from TestMain after m.Run.
func CleanupBinaries() {
	if binDir != "" && os.Getenv(binEnv) == "" {
		_ = os.RemoveAll(binDir)
	}
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not inside the weft module")
	}
	return filepath.Dir(mod), nil
}

// RunIn runs fn on a locked thread inside the namespace at path.
func RunIn(path string, fn func() error) error {
	return cnins.WithNetNSPath(path, func(cnins.NetNS) error { return fn() })
}
