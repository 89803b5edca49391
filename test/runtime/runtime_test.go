// Package runtime_test drives weft from real container runtimes: podman (CNI backend),
// containerd through ctr and through its CRI plugin with crictl. Each runs with only its
// network namespace switched to a node namespace of the test's, as RUNTIMES.md describes.
package runtime_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/weftnet/weft/internal/testutil"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testutil.CleanupBinaries()
	os.Exit(code)
}

// busyboxRootfs builds a minimal root filesystem from the static busybox.
func busyboxRootfs(t *testing.T, dir string) string {
	t.Helper()
	bb := testutil.RequireTool(t, "busybox")
	rf := filepath.Join(dir, "rootfs")
	for _, d := range []string{"bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "root", "var/run", "usr/bin", "usr/sbin"} {
		if err := os.MkdirAll(filepath.Join(rf, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rf, "bin/busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("chroot", rf, "/bin/busybox", "--install", "-s", "/bin").CombinedOutput(); err != nil {
		t.Fatalf("busybox --install: %v %s", err, out)
	}
	files := map[string]string{"etc/passwd": "root:x:0:0:root:/root:/bin/sh\n", "etc/group": "root:x:0:\n", "etc/hosts": "", "etc/resolv.conf": ""}
	for f, c := range files {
		if err := os.WriteFile(filepath.Join(rf, f), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	_ = os.Chmod(filepath.Join(rf, "tmp"), 0o1777)
	return rf
}

// allocatedContainers lists the container IDs weftd holds addresses for.
func allocatedContainers(t *testing.T, w *testutil.Weftd) []string {
	t.Helper()
	allocs, err := w.Allocations()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, a := range allocs {
		key, _, _ := strings.Cut(a, "=")
		parts := strings.Split(key, "/")
		ids = append(ids, parts[1])
	}
	sort.Strings(ids)
	return ids
}
