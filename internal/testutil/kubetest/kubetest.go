// Package kubetest runs a real Kubernetes control plane for tests: kube-apiserver (and
// later kube-controller-manager) built from k8s.io/kubernetes in tools/kube, over an
// in-process etcd, on loopback.
package kubetest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/weftnet/weft/internal/probe"
)

// KubeVersion is the Kubernetes release the tests' control plane is built from
// (tools/kube's go.mod).
const KubeVersion = "v1.37.2"

// Binaries returns a folder holding the commands named (kube-apiserver,
// kube-controller-manager, kubectl) built from tools/kube: $WEFT_KUBE_DIR if set, else
// GOPATH/weft-kube-VERSION, where what is missing is built the first time (kube-apiserver
// takes about 4 minutes on 2 cores) and reused after.
func Binaries(t testing.TB, cmds ...string) string {
	t.Helper()
	dir := os.Getenv("WEFT_KUBE_DIR")
	if dir == "" {
		gopath, err := exec.Command("go", "env", "GOPATH").Output()
		if err != nil {
			t.Fatal(err)
		}
		dir = filepath.Join(strings.TrimSpace(string(gopath)), "weft-kube-"+KubeVersion)
	}
	var pkgs []string
	for _, c := range cmds {
		if _, err := os.Stat(filepath.Join(dir, c)); err != nil {
			pkgs = append(pkgs, "k8s.io/kubernetes/cmd/"+c)
		}
	}
	if len(pkgs) == 0 {
		return dir
	}
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatal(err)
	}
	ldflags := fmt.Sprintf("-X k8s.io/component-base/version.gitVersion=%s -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37", KubeVersion)
	cmd := exec.Command("go", append([]string{"build", "-o", dir + "/", "-ldflags", ldflags}, pkgs...)...)
	cmd.Dir = filepath.Join(filepath.Dir(strings.TrimSpace(string(out))), "tools", "kube")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the Kubernetes control plane: %v\n%s", err, out)
	}
	return dir
}

// KubeAPI is a kube-apiserver for one test, on loopback, over an etcd of its own.
type KubeAPI struct {
	Config *rest.Config // admin (group system:masters), by bearer token
	URL    string
	token  string
}

// StartKubeAPI runs etcd (in process) and kube-apiserver on free loopback ports, and
// stops both when t ends. Admission plugins that need kube-controller-manager's objects
// (ServiceAccount) are off, so objects can be created without it. With netns set, both
// run on that network namespace's loopback (where a weftd in it reaches them), and
// Config dials into it.
func StartKubeAPI(t testing.TB, netns string) *KubeAPI {
	t.Helper()
	bin := Binaries(t, "kube-apiserver")
	dir := t.TempDir()
	inNS := func(fn func()) {
		if netns == "" {
			fn()
			return
		}
		if err := probe.InNS(netns, func() error { fn(); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	var etcdURL string
	inNS(func() { etcdURL = StartEtcd(t, filepath.Join(dir, "etcd")) }) // its listeners are made here

	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "sa.key")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600); err != nil {
		t.Fatal(err)
	}
	token := rand.Text()
	if err := os.WriteFile(filepath.Join(dir, "tokens.csv"), []byte(token+",admin,admin,system:masters\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var port int
	inNS(func() { port = freeLoopbackPort(t) })
	cmd := exec.Command(filepath.Join(bin, "kube-apiserver"),
		"--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", port),
		"--cert-dir="+filepath.Join(dir, "certs"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+keyFile, "--service-account-signing-key-file="+keyFile,
		"--token-auth-file="+filepath.Join(dir, "tokens.csv"),
		"--authorization-mode=RBAC",
		"--service-cluster-ip-range=10.96.0.0/16",
		"--disable-admission-plugins=ServiceAccount",
		"--enable-priority-and-fairness=false",
		"--allow-privileged=true", // as kubeadm sets it: CNI and proxy DaemonSets are privileged
		// Loopback may be advertised only without the reconciler of the default
		// "kubernetes" service's endpoints (nothing here needs that service).
		"--endpoint-reconciler-type=none",
	)
	if netns != "" {
		cmd.Args = append([]string{"nsenter", "--net=" + netns, "--", cmd.Path}, cmd.Args[1:]...)
		cmd.Path, _ = exec.LookPath("nsenter")
	}
	logf, err := os.Create(filepath.Join(dir, "kube-apiserver.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		logf.Close()
	})
	api := &KubeAPI{URL: fmt.Sprintf("https://127.0.0.1:%d", port), token: token}
	api.Config = &rest.Config{Host: api.URL, BearerToken: token, TLSClientConfig: rest.TLSClientConfig{Insecure: true}}
	dial := (&net.Dialer{Timeout: time.Second}).DialContext
	if netns != "" {
		// A socket made in the namespace stays there: only the dial switches.
		dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := probe.InNS(netns, func() (err error) {
				c, err = (&net.Dialer{Timeout: time.Second}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		}
		api.Config.Dial = dial
	}
	// The server's certificate is self-signed (--cert-dir): a test on loopback trusts it.
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DialContext: dial, TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		req, _ := http.NewRequest(http.MethodGet, api.URL+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return api
			}
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("kube-apiserver exited:\n%s", tail(string(b), 20))
		default:
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("kube-apiserver not ready after 90 s:\n%s", tail(string(b), 40))
		}
	}
}

// Client is a typed client of the API server, as its admin.
func (a *KubeAPI) Client(t testing.TB) *kubernetes.Clientset {
	t.Helper()
	c, err := kubernetes.NewForConfig(a.Config)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// WriteKubeconfig writes an admin kubeconfig for the server (as seen from its own
// namespace) and returns its path.
func (a *KubeAPI) WriteKubeconfig(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {server: %q, insecure-skip-tls-verify: true}
users:
- name: admin
  user: {token: %q}
contexts:
- name: test
  context: {cluster: test, user: admin}
current-context: test
`, a.URL, a.token)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// StartEtcd runs an embedded single-member etcd on free loopback ports for the test and
// returns its client URL (http://127.0.0.1:PORT).
func StartEtcd(t testing.TB, dir string) string {
	t.Helper()
	cfg := embed.NewConfig()
	cfg.Name, cfg.Dir, cfg.LogLevel = "kube", dir, "error"
	client, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", freeLoopbackPort(t)))
	peer, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", freeLoopbackPort(t)))
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*client}, []url.URL{*client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*peer}, []url.URL{*peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		t.Fatal(err)
	case <-ctx.Done():
		t.Fatal("etcd not ready")
	}
	return client.String()
}

func freeLoopbackPort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func tail(s string, lines int) string {
	all := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(all[max(0, len(all)-lines):], "\n")
}
