package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	sigsyaml "sigs.k8s.io/yaml"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/lab"
	"github.com/weftnet/weft/internal/manifest"
	"github.com/weftnet/weft/internal/policy"
	"github.com/weftnet/weft/internal/probe"
	"github.com/weftnet/weft/internal/testutil"
	"github.com/weftnet/weft/internal/testutil/kubetest"
)

// TestPolicyExplainInLab applies a Kubernetes NetworkPolicy manifest to a lab and asks
// `weft policy explain` about pods the lab published: the model's decision, from the CLI.
// (Enforcement in the kernel comes with issue 15's next part.)
func TestPolicyExplainInLab(t *testing.T) {
	l := labFor(t, "q")
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

// TestPolicyEnforcedInLab: a NetworkPolicy applied to a lab is enforced on the node of the
// pod it selects (across nodes and between pods on the same bridge, stateful, fast path
// yielded), a namespace label change flips a cell within a second, and removing the
// policies opens everything again.
func TestPolicyEnforcedInLab(t *testing.T) {
	l := labFor(t, "r")
	l.must("up", "-d", "--nodes", "2", "--fabric", "vxlan")
	l.must("pod", "add", "web", "--node", "1", "--labels", "app=web", "--serve", "tcp:8080")
	l.must("pod", "add", "client", "--node", "2", "--labels", "app=client", "--serve", "tcp:8080")
	l.must("pod", "add", "other", "--node", "1", "--labels", "app=other", "--serve", "tcp:8080")
	s := l.status()
	pod := map[string]string{}
	addr := map[string]netip.Addr{}
	for _, p := range s.Pods {
		pod[p.Name], addr[p.Name] = p.Netns, p.IPs[0]
	}
	var state struct{ Underlay, Store string }
	b, _ := os.ReadFile(filepath.Join("/run/weft-lab", l.name, "lab.json"))
	if err := json.Unmarshal(b, &state); err != nil {
		t.Fatal(err)
	}
	weft := func(args ...string) {
		t.Helper()
		out, err := testutil.NS{Path: state.Underlay}.Command(l.bin, append(args, "--store", state.Store)...).CombinedOutput()
		if err != nil {
			t.Fatalf("weft %v: %v\n%s", args, err, out)
		}
	}
	apply := func(yaml string) {
		t.Helper()
		f := filepath.Join(t.TempDir(), "np.yaml")
		if err := os.WriteFile(f, []byte(yaml), 0o644); err != nil {
			t.Fatal(err)
		}
		l.must("apply", "-f", f)
	}
	reach := func(from, to string) bool {
		return probe.TCPEcho(pod[from], netip.AddrPortFrom(addr[to], 8080), 200*time.Millisecond) == nil
	}
	// logShows waits up to 3 s for node1's `weft policy log --pod POD` to contain every want.
	logShows := func(pod string, wants ...string) {
		t.Helper()
		for start := time.Now(); ; time.Sleep(100 * time.Millisecond) {
			out, err := exec.Command("nsenter", "--net="+s.Nodes[0].Netns, "--", l.bin, "policy", "log", "--pod", pod,
				"--socket", filepath.Join("/run/weft-lab", l.name, "node1", "run", "weft.sock")).CombinedOutput()
			all := err == nil
			for _, w := range wants {
				all = all && strings.Contains(string(out), w)
			}
			if all {
				return
			}
			if time.Since(start) > 3*time.Second {
				t.Fatalf("weft policy log --pod %s lacks %q: %v\n%s", pod, wants, err, out)
			}
		}
	}
	// node1Metrics is node1's weftd /metrics.
	node1Metrics := func() []byte {
		t.Helper()
		resp, err := testutil.NS{Path: s.Nodes[0].Netns}.HTTPClient().Get("http://" + lab.MetricsAddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return b
	}
	// cells waits up to a second for every listed cell to hold.
	cells := func(what string, want map[[2]string]bool) {
		t.Helper()
		start := time.Now()
		for {
			var wrong []string
			for c, w := range want {
				if got := reach(c[0], c[1]); got != w {
					wrong = append(wrong, fmt.Sprintf("%s->%s %v", c[0], c[1], got))
				}
			}
			if len(wrong) == 0 {
				t.Logf("%s: held after %v", what, time.Since(start).Round(time.Millisecond))
				return
			}
			if time.Since(start) > time.Second {
				t.Fatalf("%s: after %v: %s", what, time.Since(start).Round(time.Millisecond), strings.Join(wrong, ", "))
			}
		}
	}
	cells("no policy", map[[2]string]bool{{"other", "web"}: true, {"client", "web"}: true})

	apply(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-clients}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{protocol: TCP, port: 8080}]
`)
	cells("web takes clients only", map[[2]string]bool{
		{"client", "web"}:   true,  // across nodes
		{"other", "web"}:    false, // same node, same bridge
		{"web", "other"}:    true,  // web's egress is open; its replies pass (stateful)
		{"other", "client"}: true,
	})
	if _, err := probe.Ping(pod["client"], addr["web"], 56, false, 500*time.Millisecond); err == nil {
		t.Error("ping client -> web passed: the policy allows TCP 8080 only")
	}
	// A crash and restart of node1's weftd opens no window: the table outlives weftd and
	// the restarted one neither drops it nor puts web back on the fast path. (Whether the
	// fast path or the first policy sync runs first after a start is a race this cannot
	// force; nftpolicy.Policed seeds the fast path from the table for the case it loses.)
	l.must("node", "restart", "node1", "--kill")
	for start := time.Now(); time.Since(start) < 2*time.Second; {
		if reach("other", "web") {
			t.Fatalf("other reached web %v after node1's weftd restarted", time.Since(start).Round(time.Millisecond))
		}
	}
	// The drops are in the node's log, with their 5-tuple.
	logShows("default/web", addr["other"].String()+":", addr["web"].String()+":8080 dropped at the ingress of default/web")
	// The drops are counted for the pod, on its node.
	metrics := node1Metrics()
	if m := regexp.MustCompile(`weft_policy_drops_total\{direction="ingress",pod="default/web",policies="default/web-from-clients"\} (\d+)`).FindSubmatch(metrics); m == nil || string(m[1]) == "0" {
		t.Errorf("no ingress drops counted for default/web: %s", m)
	}

	// DNS to the node's resolver is egress like any other: denied by a default-deny egress
	// policy, allowed by the usual "allow kube-dns" rule (weft's node DNS stands for it).
	dnsWorks := func() bool {
		var c net.Conn
		if err := probe.InNS(pod["client"], func() (err error) { c, err = net.Dial("udp", dnsAddr.String()); return err }); err != nil {
			return false
		}
		defer c.Close()
		req := new(mdns.Msg)
		req.SetQuestion("nothing.default.svc.cluster.local.", mdns.TypeA)
		co := &mdns.Conn{Conn: c}
		_ = c.SetDeadline(time.Now().Add(300 * time.Millisecond))
		if co.WriteMsg(req) != nil {
			return false
		}
		_, err := co.ReadMsg()
		return err == nil
	}
	if !dnsWorks() {
		t.Fatal("DNS from client fails before any egress policy")
	}
	apply(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
`)
	for start := time.Now(); dnsWorks(); time.Sleep(50 * time.Millisecond) {
		if time.Since(start) > 2*time.Second {
			t.Fatal("DNS still answers a pod whose egress is denied")
		}
	}
	apply(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-dns}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}, podSelector: {matchLabels: {k8s-app: kube-dns}}}]
    ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]
`)
	for start := time.Now(); !dnsWorks(); time.Sleep(50 * time.Millisecond) {
		if time.Since(start) > 2*time.Second {
			t.Fatal("DNS does not answer once a policy allows kube-dns")
		}
	}
	weft("policy", "rm", "client-egress")
	weft("policy", "rm", "client-dns")

	// A second policy lets in namespaces labelled team=blue: labelling default flips other->web.
	apply(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-blue}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: blue}}}]
`)
	cells("blue not labelled yet", map[[2]string]bool{{"other", "web"}: false})
	weft("namespace", "label", "default", "team=blue")
	cells("default labelled team=blue", map[[2]string]bool{{"other", "web"}: true, {"client", "web"}: true})
	// other and web share node1 and the policies now allow other's connections to web both
	// ways without state: the fast path carries them though web is policed.
	localShortCuts := func() int {
		t.Helper()
		m := regexp.MustCompile(`weft_fastpath_packets_total\{path="local"\} (\d+)`).FindSubmatch(node1Metrics())
		if m == nil {
			t.Fatal("node1 reports no fast path counter")
		}
		n, _ := strconv.Atoi(string(m[1]))
		return n
	}
	before := localShortCuts()
	for range 5 {
		if !reach("other", "web") {
			t.Fatal("other cannot reach web")
		}
	}
	if got := localShortCuts() - before; got < 5*4 {
		t.Errorf("5 connections from other to web took the fast path for %d packets, want at least 20", got)
	}

	weft("policy", "rm", "web-from-clients")
	weft("policy", "rm", "web-from-blue")
	cells("no policy again", map[[2]string]bool{{"other", "web"}: true, {"client", "web"}: true})
	for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
		out, err := exec.Command("nsenter", "--net="+s.Nodes[0].Netns, "--", "nft", "list", "table", "inet", "weft-policy").CombinedOutput()
		if err != nil {
			break
		}
		if time.Since(start) > time.Second {
			t.Fatalf("node1 still has the policy table a second after the last policy went:\n%s", out)
		}
	}

	// Anti-spoofing (on by default): other gives itself web's address and sends from it to
	// client, on the other node; the datagram is dropped on other's node, logged and counted.
	udp, err := probe.ListenUDP(pod["client"], ":9999")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	sendFrom := func(src netip.Addr) bool {
		got := make(chan bool, 1)
		go func() {
			_ = udp.SetReadDeadline(time.Now().Add(time.Second))
			for {
				_, from, err := udp.ReadFrom(make([]byte, 64))
				if err != nil {
					got <- false
					return
				}
				if from.(*net.UDPAddr).AddrPort().Addr().Unmap() == src {
					got <- true
					return
				}
			}
		}()
		if err := probe.InNS(pod["other"], func() error {
			c, err := net.DialUDP("udp", &net.UDPAddr{IP: src.AsSlice()}, &net.UDPAddr{IP: addr["client"].AsSlice(), Port: 9999})
			if err != nil {
				return err
			}
			defer c.Close()
			for range 5 {
				_, _ = c.Write([]byte("who am i"))
				time.Sleep(50 * time.Millisecond)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return <-got
	}
	if !sendFrom(addr["other"]) {
		t.Fatal("a datagram from other's own address did not arrive")
	}
	oh := testutil.NS{Path: pod["other"]}.Handle(t)
	eth0, err := oh.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if err := oh.AddrAdd(eth0, &netlink.Addr{IPNet: &net.IPNet{IP: addr["web"].AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
		t.Fatal(err)
	}
	if sendFrom(addr["web"]) {
		t.Error("a datagram from a spoofed source (web's address, sent by other) arrived")
	}
	logShows("default/other", addr["web"].String()+":", addr["client"].String()+":9999 dropped at the egress of default/other: spoofed source")
	metrics = node1Metrics()
	if m := regexp.MustCompile(`weft_antispoof_drops_total\{pod="default/other"\} (\d+)`).FindSubmatch(metrics); m == nil || string(m[1]) == "0" {
		t.Errorf("no spoofed drops counted for default/other: %s", m)
	}
}

// TestPolicyMatrixInLab measures the upstream netpol e2e matrix with real TCP probes:
// pods a, b, c in namespaces x, y, z spread over three nodes; for each case, every one of
// the 81 cells must match what the model (internal/policy, checked on its own against
// the written-out truth tables) decides, within a second or two of applying it.
// The kubernetes variant takes the policies from the lab's Kubernetes API (created there,
// as kubectl apply would) instead of weft's store, over fabric bgp whose node mesh comes
// from the Node objects.
func TestPolicyMatrixInLab(t *testing.T) {
	testutil.RequireRoot(t)
	for _, fabric := range []string{"vxlan", "direct"} {
		t.Run(fabric, func(t *testing.T) { testPolicyMatrix(t, fabric, false) })
	}
	// BGP here: the node mesh from Node objects (TestKubernetesInLab covers vxlan).
	t.Run("bgp-kubernetes", func(t *testing.T) {
		t.Setenv("WEFT_KUBE_DIR", kubetest.Binaries(t, "kube-apiserver", "kube-controller-manager"))
		testPolicyMatrix(t, "bgp", true)
	})
}

func testPolicyMatrix(t *testing.T, fabric string, kube bool) {
	l := labFor(t, "m")
	up := []string{"up", "-d", "--nodes", "3", "--fabric", fabric}
	if kube {
		up = append(up, "--kubernetes")
	}
	l.must(up...)
	var pods []v1.Pod
	netnsOf := map[string]string{}
	i := 0
	for _, ns := range []string{"x", "y", "z"} {
		for _, name := range []string{"a", "b", "c"} {
			i++
			l.must("pod", "add", ns+"-"+name, "--namespace", ns, "--node", fmt.Sprint(1+i%3), "--labels", "pod="+name, "--serve", "tcp:80")
		}
	}
	for _, p := range l.status().Pods {
		ns, name, _ := strings.Cut(p.Name, "-")
		pods = append(pods, v1.Pod{Name: p.Name, Namespace: ns, IPs: p.IPs, Labels: map[string]string{"pod": name}})
		netnsOf[p.Name] = p.Netns
	}
	ipOf := func(name string) string {
		for _, p := range pods {
			if p.Name == name {
				return p.IPs[0].String()
			}
		}
		t.Fatalf("no pod %s", name)
		return ""
	}
	measure := func() map[[2]string]bool {
		out := map[[2]string]bool{}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, s := range pods {
			for _, d := range pods {
				wg.Add(1)
				go func() {
					defer wg.Done()
					ok := probe.TCPEcho(netnsOf[s.Name], netip.AddrPortFrom(d.IPs[0], 80), 300*time.Millisecond) == nil
					mu.Lock()
					out[[2]string{s.Name, d.Name}] = ok
					mu.Unlock()
				}()
			}
		}
		wg.Wait()
		return out
	}
	cases := []struct{ name, yaml string }{
		{"default deny ingress in x", `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}`},
		{"x/a from namespace y", `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: 'y'}}}]}]`},
		{"x/a from pods b of namespace y", `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-yb, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: 'y'}}, podSelector: {matchLabels: {pod: b}}}]}]`},
		{"x/a only on port 81", `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: port-81, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {}}], ports: [{protocol: TCP, port: 81}]}]`},
		{"x/a may send to the pod networks except y/b", `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: except-yb, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.244.0.0/16, except: [` + ipOf("y-b") + `/32]}}]}]`},
		{"both directions: x/a sends only to y, y/b takes only x/a", `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: out, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: 'y'}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: in, namespace: 'y'}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}, podSelector: {matchLabels: {pod: a}}}]}]`},
	}
	var state struct{ Underlay, Store string }
	b, _ := os.ReadFile(filepath.Join("/run/weft-lab", l.name, "lab.json"))
	if err := json.Unmarshal(b, &state); err != nil {
		t.Fatal(err)
	}
	for _, tc := range cases {
		objs, err := manifest.Parse([]byte(tc.yaml))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		var policies []v1.NetworkPolicy
		for _, o := range objs {
			policies = append(policies, *o.Policy)
		}
		model := policy.New(policies, nil)
		want := map[[2]string]bool{}
		denied := 0
		for _, s := range pods {
			for _, d := range pods {
				ok := model.Decide(policy.Endpoint{Pod: &s, IP: s.IPs[0]}, policy.Endpoint{Pod: &d, IP: d.IPs[0]}, "TCP", 80).Allowed
				want[[2]string{s.Name, d.Name}] = ok
				if !ok {
					denied++
				}
			}
		}
		var remove func()
		if kube {
			remove = applyInKubernetes(t, l.name, tc.yaml)
		} else {
			f := filepath.Join(t.TempDir(), "np.yaml")
			if err := os.WriteFile(f, []byte(tc.yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			l.must("apply", "-f", f)
			remove = func() {
				for _, p := range policies {
					out, err := testutil.NS{Path: state.Underlay}.Command(l.bin, "policy", "rm", p.Name, "-n", p.Namespace, "--store", state.Store).CombinedOutput()
					if err != nil {
						t.Fatalf("policy rm: %v\n%s", err, out)
					}
				}
			}
		}
		start := time.Now()
		for {
			got := measure()
			var wrong []string
			for k, w := range want {
				if got[k] != w {
					wrong = append(wrong, fmt.Sprintf("%s->%s %v", k[0], k[1], got[k]))
				}
			}
			if len(wrong) == 0 {
				t.Logf("%s: all 81 cells as the model says (%d denied) after %v", tc.name, denied, time.Since(start).Round(time.Millisecond))
				break
			}
			if time.Since(start) > 2*time.Second {
				sort.Strings(wrong)
				t.Fatalf("%s: %d of 81 cells differ from the model after %v: %s", tc.name, len(wrong), time.Since(start).Round(time.Millisecond), strings.Join(wrong, ", "))
			}
		}
		remove()
	}
}

// applyInKubernetes creates the NetworkPolicies of a YAML stream through a Kubernetes
// lab's API (from the host, with the lab's kubeconfig) and returns what deletes them.
func applyInKubernetes(t *testing.T, labName, stream string) func() {
	t.Helper()
	lb, err := lab.Load(labName)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", lb.Kubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var made []*networkingv1.NetworkPolicy
	for _, doc := range regexp.MustCompile(`(?m)^---$`).Split(stream, -1) {
		var np networkingv1.NetworkPolicy
		if err := sigsyaml.UnmarshalStrict([]byte(doc), &np); err != nil {
			t.Fatal(err)
		}
		if _, err := client.NetworkingV1().NetworkPolicies(np.Namespace).Create(ctx, &np, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		made = append(made, &np)
	}
	return func() {
		for _, np := range made {
			if err := client.NetworkingV1().NetworkPolicies(np.Namespace).Delete(ctx, np.Name, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
}
