// Package e2e_test runs weft's user-facing commands end to end.
package e2e_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weftnet/weft/internal/testutil"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testutil.CleanupBinaries()
	os.Exit(code)
}

// TestLabDemo runs the README's main job and checks it leaves nothing behind.
func TestLabDemo(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.Binaries(t)
	for _, mode := range []string{"bridge", "ptp"} {
		t.Run(mode, func(t *testing.T) {
			name := fmt.Sprintf("d%d", os.Getpid()%1000000)
			out, err := exec.Command(filepath.Join(bin, "weft"), "lab", "demo", "--name", name, "--mode", mode).CombinedOutput()
			if err != nil {
				t.Fatalf("weft lab demo: %v\n%s", err, out)
			}
			for _, want := range []string{"12 of 12 pings answered", "pod3", "torn down"} {
				if !strings.Contains(string(out), want) {
					t.Errorf("demo output lacks %q:\n%s", want, out)
				}
			}
			left, _ := filepath.Glob("/run/netns/" + name + "-*")
			if len(left) > 0 {
				t.Errorf("namespaces left behind: %v", left)
			}
			if _, err := os.Stat("/run/weft-lab/" + name); err == nil {
				t.Errorf("lab state left behind")
			}
			// Down of a lab that is gone is fine.
			if out, err := exec.Command(filepath.Join(bin, "weft"), "lab", "down", "--name", name).CombinedOutput(); err != nil {
				t.Errorf("second down: %v\n%s", err, out)
			}
		})
	}
}
