package e2e_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weftnet/weft/internal/testutil"
)

// TestPolicyExplainInLab applies a Kubernetes NetworkPolicy manifest to a lab and asks
// `weft policy explain` about pods the lab published: the model's decision, from the CLI.
// (Enforcement in the kernel comes with issue 15's next part.)
func TestPolicyExplainInLab(t *testing.T) {
	testutil.RequireRoot(t)
	l := labCLI{t: t, name: fmt.Sprintf("q%d", os.Getpid()%100000), bin: filepath.Join(testutil.Binaries(t), "weft")}
	t.Cleanup(func() { _, _ = l.run("down") })
	l.must("up", "-d", "--nodes", "2", "--fabric", "direct")
	l.must("pod", "add", "web", "--node", "1", "--labels", "app=web")
	l.must("pod", "add", "client", "--node", "2", "--labels", "app=client")
	l.must("pod", "add", "other", "--node", "2", "--labels", "app=other")
	manifest := filepath.Join(t.TempDir(), "np.yaml")
	if err := os.WriteFile(manifest, []byte(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-clients}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{protocol: TCP, port: 8080}]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := l.must("apply", "-f", manifest); !strings.Contains(out, "networkpolicy default/web-from-clients: applied") {
		t.Fatalf("apply: %s", out)
	}
	var state struct{ Underlay, Store string }
	b, _ := os.ReadFile(filepath.Join("/run/weft-lab", l.name, "lab.json"))
	if err := json.Unmarshal(b, &state); err != nil {
		t.Fatal(err)
	}
	explain := func(args ...string) (string, error) {
		cmd := testutil.NS{Path: state.Underlay}.Command(l.bin, append(append([]string{"policy", "explain"}, args...), "--store", state.Store)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := explain("client", "web", "8080"); err != nil || !strings.Contains(out, "allowed by default/web-from-clients") {
		t.Errorf("client -> web 8080: %v\n%s", err, out)
	}
	out, err := explain("default/other", "web", "8080/tcp")
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(out, "denied: no rule of default/web-from-clients matches") {
		t.Errorf("other -> web: %v\n%s", err, out)
	}
	if out, err := explain("web", "client", "53/udp"); err != nil || !strings.Contains(out, "no policy selects default/client: open") {
		t.Errorf("web -> client: %v\n%s", err, out)
	}
}
