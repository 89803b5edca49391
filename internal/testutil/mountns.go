package testutil

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/netns"
)

// freshEnv carries, to a re-executed test binary, the name of the test it runs inside a
// fresh mount namespace.
const freshEnv = "WEFT_FRESH_MOUNTNS_TEST"

// binEnv hands the parent's built binaries to the re-executed test binary.
const binEnv = "WEFT_TEST_BINARIES"

// InFreshMountNS runs the calling top-level test again, in a copy of the test binary inside
// a new private mount namespace whose /run/netns is a plain directory, as on a machine that
// has never run `ip netns`. It returns true in that copy (the caller then runs its
// scenario) and false in the parent, which fails t with the copy's output if it failed:
//
//	if !testutil.InFreshMountNS(t) { return }
func InFreshMountNS(t *testing.T) bool {
	t.Helper()
	if os.Getenv(freshEnv) == t.Name() {
		if err := plainNetnsDir(); err != nil {
			t.Fatal(err)
		}
		return true
	}
	RequireRoot(t)
	RequireTool(t, "unshare")
	bin := Binaries(t)
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "--",
		os.Args[0], "-test.run", "^"+t.Name()+"$", "-test.v", "-test.count=1", "-test.timeout=10m")
	cmd.Env = append(os.Environ(), freshEnv+"="+t.Name(), binEnv+"="+bin)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("in a fresh mount namespace: %v\n%s", err, out)
	}
	t.Logf("in a fresh mount namespace:\n%s", out)
	return false
}

// plainNetnsDir detaches every mount stacked on netns.Dir, leaving the plain directory
// underneath. It refuses to run in its parent's mount namespace (the test binary that
// started it through unshare).
func plainNetnsDir() error {
	self, err1 := os.Readlink("/proc/self/ns/mnt")
	parent, err2 := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", os.Getppid()))
	if err1 != nil || err2 != nil || self == parent {
		return errors.New("refusing to unmount /run/netns outside a private mount namespace")
	}
	for {
		err := unix.Unmount(netns.Dir, unix.MNT_DETACH)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			break
		}
		if err != nil {
			return err
		}
	}
	return os.MkdirAll(netns.Dir, 0o755)
}

// IsMountPoint says whether path is the mount point of a mount in this mount namespace.
func IsMountPoint(path string) bool {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == path {
			return true
		}
	}
	return false
}
