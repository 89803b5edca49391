package main_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/testutil"
	"github.com/weftnet/weft/internal/testutil/kubetest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testutil.CleanupBinaries()
	os.Exit(code)
}

// TestWorkers runs weft-ingress as a master and two workers on loopback (no privileges):
// both workers serve, TLS sessions resume on either, a route added later reaches every worker, a killed worker is
// restarted with the current routes, and SIGTERM to the master ends all three.
func TestWorkers(t *testing.T) {
	bin := testutil.Binaries(t)
	dir := t.TempDir()
	// etcd, not bolt: the test's weft commands write while weft-ingress reads.
	store := "etcd://" + strings.TrimPrefix(kubetest.StartEtcd(t, filepath.Join(dir, "etcd")), "http://")
	weft := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(filepath.Join(bin, "weft"), append(args, "--store", store)...).CombinedOutput(); err != nil {
			t.Fatalf("weft %v: %v\n%s", args, err, out)
		}
	}
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "path "+r.URL.Path)
	}))
	defer backend.Close()
	weft("cluster", "init", "--cluster-cidr", "10.200.0.0/16", "--service-cidr", "10.201.0.0/16")
	weft("service", "create", "be", "--port", "80:"+strings.Split(backend.Listener.Addr().String(), ":")[1]+"/tcp",
		"--endpoint", backend.Listener.Addr().String())
	apply := func(paths ...string) {
		t.Helper()
		var routes []string
		for _, p := range paths {
			routes = append(routes, fmt.Sprintf("{path: %s, backends: [{service: be, port: 80}]}", p))
		}
		f := filepath.Join(dir, "ingress.yaml")
		manifest := "apiVersion: weft/v1\nkind: Ingress\nmetadata: {name: t}\nspec:\n  hosts:\n  - routes: [" + strings.Join(routes, ", ") + "]\n  tls: [{certificate: c}]\n"
		if err := os.WriteFile(f, []byte(manifest), 0o644); err != nil {
			t.Fatal(err)
		}
		weft("apply", "-f", f)
	}
	certFile, keyFile := selfSigned(t, dir)
	weft("ingress", "cert", "add", "c", "--cert", certFile, "--key", keyFile)
	apply("/a")

	httpAddr, httpsAddr, metricsAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	master := exec.Command(filepath.Join(bin, "weft-ingress"), "--store", store, "--workers", "2",
		"--http", httpAddr, "--https", httpsAddr, "--metrics-addr", metricsAddr, "--access-log=false")
	var log strings.Builder
	master.Stdout, master.Stderr = &log, &log
	wantCPUs := startOnCPUs(t, master, 2) // two workers on two CPUs: one each
	exited := make(chan struct{})
	go func() { _ = master.Wait(); close(exited) }()
	defer func() {
		_ = master.Process.Kill()
		<-exited
		if t.Failed() {
			t.Log(log.String())
		}
	}()

	// every asks n new connections for path until all get want (each connection lands on
	// whichever worker accepts it first).
	every := func(path, want string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for ok := 0; ok < 20; {
			got := get(httpAddr, path)
			if got == want {
				ok++
				continue
			}
			ok = 0
			if time.Now().After(deadline) {
				t.Fatalf("GET %s: %q, want %q", path, got, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	every("/a", "path /a")
	t.Log("serving")
	workers := children(t, master.Process.Pid, 2)
	checkPinned(t, workers, wantCPUs)

	// A second weft-ingress on the same address is refused, not let into the workers'
	// SO_REUSEPORT group.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // if it runs: it must not
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(bin, "weft-ingress"), "--store", store, "--workers", "2",
		"--http", httpAddr, "--https", "", "--metrics-addr", "").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "address already in use") {
		t.Errorf("a second weft-ingress on %s: %v, %s; want address already in use", httpAddr, err, out)
	}

	metrics := get(metricsAddr, "/metrics")
	for _, w := range []string{`worker="0"`, `worker="1"`} {
		if !strings.Contains(metrics, "go_goroutines{"+w+"}") {
			t.Errorf("/metrics has no series of %s", w)
		}
	}
	var status struct {
		Upstreams []struct{ Address, Health string }
	}
	if err := json.Unmarshal([]byte(get(metricsAddr, "/status")), &status); err != nil || len(status.Upstreams) != 1 || status.Upstreams[0].Health != "healthy" {
		t.Errorf("status: %+v (%v), want the backend healthy", status, err)
	}

	// TLS sessions resume on either worker: they share the master's ticket keys. (The
	// kernel spreads connections over the workers by their ports: 20 land on both.)
	cache := tls.NewLRUClientSessionCache(4)
	for i := range 20 {
		c, err := tls.Dial("tcp", httpsAddr, &tls.Config{InsecureSkipVerify: true, ClientSessionCache: cache})
		if err != nil {
			t.Fatal(err)
		}
		// TLS 1.3 tickets arrive after the handshake: a request and its answer bring them.
		fmt.Fprintf(c, "GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		_, _ = io.ReadAll(c)
		if resumed := c.ConnectionState().DidResume; i > 0 && !resumed {
			t.Errorf("TLS connection %d did not resume its session", i)
		}
		c.Close()
	}

	apply("/a", "/b")
	every("/b", "path /b")
	t.Log("route added")

	if err := syscall.Kill(workers[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		now := children(t, master.Process.Pid, -1)
		if len(now) == 2 && now[0] != workers[0] && now[1] != workers[0] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("workers %v after killing %d: not restarted", now, workers[0])
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Log("restarted")
	every("/b", "path /b") // the new worker has the routes too
	every("/a", "path /a")

	workers = children(t, master.Process.Pid, 2)
	checkPinned(t, workers, wantCPUs) // the restarted one on its predecessor's CPU
	_ = master.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(15 * time.Second):
		t.Fatal("the master did not stop within 15 s of SIGTERM")
	}
	for _, pid := range workers {
		if syscall.Kill(pid, 0) == nil {
			if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); strings.Contains(string(b), "weft-ingress") {
				t.Errorf("worker %d outlived its master", pid)
			}
		}
	}
}

// startOnCPUs starts cmd allowed on n CPUs of this process's (it inherits the affinity of
// the thread that starts it) and returns them, or nil if this machine has fewer.
func startOnCPUs(t *testing.T, cmd *exec.Cmd, n int) []int {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var old unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		t.Fatal(err)
	}
	var cpus []int
	var set unix.CPUSet
	for cpu := 0; cpu < len(old)*64 && len(cpus) < n; cpu++ {
		if old.IsSet(cpu) {
			cpus = append(cpus, cpu)
			set.Set(cpu)
		}
	}
	if len(cpus) < n {
		cpus, set = nil, old
	}
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		t.Fatal(err)
	}
	err := cmd.Start()
	if err2 := unix.SchedSetaffinity(0, &old); err2 != nil {
		t.Fatal(err2)
	}
	if err != nil {
		t.Fatal(err)
	}
	return cpus
}

// checkPinned checks that all the threads of each worker keep to one of cpus, a CPU no
// other worker has. (With cpus nil, a machine of one CPU, there is nothing to check.)
func checkPinned(t *testing.T, workers, cpus []int) {
	t.Helper()
	if cpus == nil {
		t.Log("fewer CPUs than workers: pinning not checked")
		return
	}
	seen := map[string]int{}
	for _, pid := range workers {
		lists := map[string]bool{}
		files, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
		for _, f := range files {
			b, _ := os.ReadFile(f)
			for _, line := range strings.Split(string(b), "\n") {
				if v, ok := strings.CutPrefix(line, "Cpus_allowed_list:"); ok {
					lists[strings.TrimSpace(v)] = true
				}
			}
		}
		if len(lists) != 1 {
			t.Errorf("worker %d: threads allowed on %v, want all on one set", pid, lists)
			continue
		}
		for l := range lists {
			seen[l]++
		}
	}
	for _, cpu := range cpus {
		if seen[strconv.Itoa(cpu)] != 1 {
			t.Errorf("workers' CPUs %v, want one worker on each of %v", seen, cpus)
			break
		}
	}
}

func get(addr, path string) string {
	c := http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// children lists pid's child processes, sorted; with want ≥ 0 it waits until there are
// that many.
func children(t *testing.T, pid, want int) []int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var out []int // the children of every thread of pid
		files, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
		for _, f := range files {
			b, _ := os.ReadFile(f)
			for _, field := range strings.Fields(string(b)) {
				n, _ := strconv.Atoi(field)
				out = append(out, n)
			}
		}
		if want < 0 || len(out) == want {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d has children %v, want %d", pid, out, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// selfSigned writes a certificate and key for 127.0.0.1 into dir.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// freeAddr is a loopback address with a port nothing listens on now.
func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
