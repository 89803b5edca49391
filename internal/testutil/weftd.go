package testutil

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/bpffs"
	"github.com/weftnet/weft/internal/cniapi"
)

// Weftd is a weftd process running in a node namespace for a test.
type Weftd struct {
	t        testing.TB
	Node     NS
	Bin      string
	StateDir string
	RunDir   string
	Args     []string

	mu  sync.Mutex
	cmd *exec.Cmd
	log *lockedBuffer
}

// lockedBuffer collects a child's output while tests read it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// StartWeftd runs weftd in node with the given pod CIDRs and stops it when t ends.
func StartWeftd(t testing.TB, node NS, podCIDRs string, extra ...string) *Weftd {
	t.Helper()
	dir := t.TempDir()
	w := &Weftd{
		t: t, Node: node, Bin: filepath.Join(Binaries(t), "weftd"),
		StateDir: filepath.Join(dir, "state"), RunDir: filepath.Join(dir, "run"),
	}
	w.Args = []string{"--state-dir", w.StateDir, "--run-dir", w.RunDir, "--node-name", node.Name, "--log-level", "debug"}
	if podCIDRs != "" {
		w.Args = append(w.Args, "--pod-cidr", podCIDRs)
	}
	w.Args = append(w.Args, extra...)
	t.Cleanup(func() {
		w.Stop()
		if err := bpffs.Unmount(filepath.Join(w.RunDir, "bpf")); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("weftd log:\n%s", w.Log())
		}
	})
	w.Start()
	return w
}

// Socket is the agent's socket path.
func (w *Weftd) Socket() string { return filepath.Join(w.RunDir, "weft.sock") }

// Start launches weftd and waits until it answers.
func (w *Weftd) Start() {
	w.t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.log == nil {
		w.log = &lockedBuffer{}
	}
	cmd := w.Node.Command(w.Bin, w.Args...)
	cmd.Stdout, cmd.Stderr = w.log, w.log
	if err := cmd.Start(); err != nil {
		w.t.Fatalf("start weftd: %v", err)
	}
	w.cmd = cmd
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := (cniapi.Client{Socket: w.Socket(), Timeout: time.Second}).Do(cniapi.Request{Op: cniapi.OpStatus}); err == nil {
			if _, err := os.Stat(filepath.Join(w.RunDir, cniapi.NodeContractFile)); err == nil {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	w.t.Fatalf("weftd did not come up:\n%s", w.log.String())
}

// Kill sends SIGKILL to weftd (nsenter execs, so the PID is weftd's) and reaps it.
func (w *Weftd) Kill() { w.signal(syscall.SIGKILL) }

// Stop ends weftd with SIGTERM.
func (w *Weftd) Stop() { w.signal(syscall.SIGTERM) }

func (w *Weftd) signal(sig syscall.Signal) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cmd == nil {
		return
	}
	_ = w.cmd.Process.Signal(sig)
	done := make(chan struct{})
	go func() { _ = w.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = w.cmd.Process.Kill()
		<-done
	}
	w.cmd = nil
}

// Restart stops (with sig) and starts weftd again.
func (w *Weftd) Restart(sig syscall.Signal) {
	w.signal(sig)
	w.Start()
}

// Log returns what weftd printed.
func (w *Weftd) Log() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.log == nil {
		return ""
	}
	return w.log.String()
}

// Allocations lists the agent's allocations.
func (w *Weftd) Allocations() ([]string, error) {
	resp, err := cniapi.Client{Socket: w.Socket()}.Do(cniapi.Request{Op: cniapi.OpList})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, a := range resp.Allocations {
		var ips []string
		for _, ip := range a.IPs {
			ips = append(ips, ip.Address.Addr().String())
		}
		out = append(out, fmt.Sprintf("%s=%s", a.Key, strings.Join(ips, ",")))
	}
	return out, nil
}
