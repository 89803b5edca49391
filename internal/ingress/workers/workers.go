// Package workers runs weft-ingress as nginx does: a master process that holds the
// listening sockets and the cluster store, and worker processes of one Go P each that
// accept on the shared sockets and proxy. The kernel then schedules each worker as it does
// one of nginx's: a worker it preempts holds up only its own connections. In one process
// of several Ps, a thread the kernel preempts keeps its P's queue of runnable goroutines
// waiting until the other P runs dry, which under load it seldom does: that was most of
// weft-ingress's p99 (docs/benchmarks.md, "Ingress").
//
// The master sends each worker every configuration snapshot (JSON lines on the worker's
// stdin); a worker exits when its stdin closes, so none outlives the master. The master
// restarts a worker that dies, and answers for all of them: status (upstream health, the
// worst any worker sees) and metrics (each worker's, labelled worker="N").
package workers

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/ingress/controller"
)

const (
	// EnvIndex in a process's environment makes it worker number N.
	EnvIndex = "WEFT_INGRESS_WORKER"
	// EnvSocket is where a worker serves its health and metrics to the master.
	EnvSocket = "WEFT_INGRESS_WORKER_SOCKET"
	// FirstListenerFD is the descriptor of the first inherited listening socket; the
	// others follow in the order of the command line's addresses.
	FirstListenerFD = 3

	stopGrace = 10 * time.Second
)

// Master starts and supervises the workers. It implements controller.Target.
type Master struct {
	Exe  string   // the weft-ingress binary
	Args []string // the command line, given to every worker as is
	// Listeners are the workers' listening sockets: Listeners[i] worker i's, one per
	// address (SO_REUSEPORT: the kernel spreads new connections over the workers
	// evenly, and wakes only the worker it picked). The master keeps them open, so a
	// restarted worker takes over its socket, connections queued there included.
	Listeners [][]*os.File
	Dir       string // private directory for the workers' sockets
	Log       *slog.Logger
	// CPUs, if set, is the CPU of each worker (CPUsFor): all its threads stay on it.
	CPUs []int

	workers []*worker // fixed by NewMaster
	client  http.Client
	mu      sync.Mutex
	keys    [][]byte             // session ticket keys, newest first
	snap    *controller.Snapshot // the last one applied
	last    []byte               // the same with the keys, one JSON line
}

// Session ticket keys: a new one a day, each kept for decryption a week (Go's own policy
// for the keys it makes itself).
const (
	ticketKeyEvery = 24 * time.Hour
	ticketKeysKept = 7
)

type worker struct {
	index  int
	socket string
	kick   chan struct{} // a newer snapshot is waiting
}

// NewMaster prepares len(listeners) workers of exe with args, their sockets in dir.
func NewMaster(exe string, args []string, listeners [][]*os.File, dir string, log *slog.Logger) *Master {
	m := &Master{Exe: exe, Args: args, Listeners: listeners, Dir: dir, Log: log}
	m.client = http.Client{
		Timeout: 2 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			host, _, _ := net.SplitHostPort(addr) // the worker's index (get)
			i, _ := strconv.Atoi(host)
			var d net.Dialer
			return d.DialContext(ctx, "unix", m.workers[i].socket)
		}},
	}
	for i := range listeners {
		m.workers = append(m.workers, &worker{index: i, socket: filepath.Join(dir, "w"+strconv.Itoa(i)+".sock"), kick: make(chan struct{}, 1)})
	}
	m.newTicketKey()
	return m
}

// newTicketKey makes the key new tickets are encrypted with; older ones still decrypt.
func (m *Master) newTicketKey() {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	m.mu.Lock()
	m.keys = append([][]byte{k}, m.keys[:min(len(m.keys), ticketKeysKept-1)]...)
	snap := m.snap
	m.mu.Unlock()
	if snap != nil {
		_ = m.Apply(*snap)
	}
}

// Run starts the workers and keeps them running until ctx ends, then stops them (SIGTERM,
// then SIGKILL after a grace period) and returns once all have exited.
func (m *Master) Run(ctx context.Context) {
	go func() {
		tick := time.NewTicker(ticketKeyEvery)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				m.newTicketKey()
			}
		}
	}()
	var wg sync.WaitGroup
	for _, w := range m.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.supervise(ctx, w)
		}()
	}
	wg.Wait()
}

// supervise runs one worker, again and again, with a growing pause when it keeps dying.
func (m *Master) supervise(ctx context.Context, w *worker) {
	pause := 100 * time.Millisecond
	for {
		start := time.Now()
		err := m.runOnce(ctx, w)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > 10*time.Second {
			pause = 100 * time.Millisecond
		}
		m.Log.Warn("ingress worker exited; restarting it", "worker", w.index, "err", err, "after", pause.String())
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
		pause = min(2*pause, 5*time.Second)
	}
}

func (m *Master) runOnce(ctx context.Context, w *worker) error {
	cmd := exec.Command(m.Exe, m.Args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.ExtraFiles = m.Listeners[w.index]
	cmd.Env = append(os.Environ(), EnvIndex+"="+strconv.Itoa(w.index), EnvSocket+"="+w.socket)
	if w.index < len(m.CPUs) {
		cmd.Env = append(cmd.Env, EnvCPU+"="+strconv.Itoa(m.CPUs[w.index]))
	}
	if os.Getenv("GOMAXPROCS") == "" {
		cmd.Env = append(cmd.Env, "GOMAXPROCS=1")
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	_ = os.Remove(w.socket)
	if err := cmd.Start(); err != nil {
		in.Close()
		return err
	}
	var waitErr error
	exited := make(chan struct{}) // closed once Wait has returned waitErr
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()

	// Feed it: the latest snapshot now, and each newer one (older ones are skipped).
	select {
	case w.kick <- struct{}{}:
	default:
	}
	fed := make(chan struct{})
	go func() {
		defer close(fed)
		for {
			select {
			case <-exited:
				return
			case <-ctx.Done():
				return
			case <-w.kick:
				m.mu.Lock()
				line := m.last
				m.mu.Unlock()
				if line == nil {
					continue
				}
				if _, err := in.Write(line); err != nil {
					return // it died: Wait says why
				}
			}
		}
	}()

	select {
	case <-exited:
	case <-ctx.Done():
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(stopGrace):
			_ = cmd.Process.Kill()
			<-exited
		}
	}
	in.Close()
	<-fed
	return waitErr
}

// Apply sends s to every worker (and to every worker started later).
func (m *Master) Apply(s controller.Snapshot) error {
	m.mu.Lock()
	m.snap = &s
	s.TicketKeys = m.keys
	line, err := json.Marshal(s)
	if err == nil {
		m.last = append(line, '\n')
	}
	m.mu.Unlock()
	if err != nil {
		return err
	}
	for _, w := range m.workers {
		select {
		case w.kick <- struct{}{}:
		default: // already kicked: it will send the newest
		}
	}
	return nil
}

// Health merges the workers' views of the upstreams: an upstream is as bad as the worst
// any worker reports (down, then ejected, then healthy).
func (m *Master) Health() map[string]string {
	rank := map[string]int{"healthy": 0, "ejected": 1, "down": 2}
	out := map[string]string{}
	for _, w := range m.workers {
		var h map[string]string
		if err := m.get(w, "/health", func(r io.Reader) error { return json.NewDecoder(r).Decode(&h) }); err != nil {
			continue // restarting: the others answer
		}
		for addr, state := range h {
			if cur, ok := out[addr]; !ok || rank[state] > rank[cur] {
				out[addr] = state
			}
		}
	}
	return out
}

// Gather collects every worker's metrics (already labelled with its index), for
// prometheus.Gatherers.
func (m *Master) Gather() ([]*dto.MetricFamily, error) {
	var out []*dto.MetricFamily
	var errs []error
	for _, w := range m.workers {
		err := m.get(w, "/metrics", func(r io.Reader) error {
			p := expfmt.NewTextParser(model.UTF8Validation)
			fams, err := p.TextToMetricFamilies(r)
			for _, f := range fams {
				out = append(out, f)
			}
			return err
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("worker %d: %w", w.index, err))
		}
	}
	return out, errors.Join(errs...)
}

func (m *Master) get(w *worker, path string, read func(io.Reader) error) error {
	resp, err := m.client.Get("http://" + strconv.Itoa(w.index) + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", path, resp.Status)
	}
	return read(resp.Body)
}

// Index says whether this process is a worker, and which.
func Index() (int, bool) {
	v, ok := os.LookupEnv(EnvIndex)
	if !ok {
		return 0, false
	}
	i, err := strconv.Atoi(v)
	return i, err == nil && i >= 0
}

// Listeners returns a worker's inherited listening sockets, n of them.
func Listeners(n int) ([]net.Listener, error) {
	var out []net.Listener
	for i := range n {
		f := os.NewFile(uintptr(FirstListenerFD+i), "listener"+strconv.Itoa(i))
		ln, err := net.FileListener(f)
		f.Close() // FileListener holds a copy
		if err != nil {
			for _, l := range out {
				l.Close()
			}
			return nil, fmt.Errorf("inherited listener %d: %w", i, err)
		}
		out = append(out, ln)
	}
	return out, nil
}

// Follow applies each snapshot the master sends on r until r ends (the master is gone)
// or a line is not a snapshot.
func Follow(r io.Reader, apply func(controller.Snapshot) error, log *slog.Logger) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 256<<20)
	for sc.Scan() {
		var s controller.Snapshot
		if err := json.Unmarshal(sc.Bytes(), &s); err != nil {
			return fmt.Errorf("snapshot from the master: %w", err)
		}
		if err := apply(s); err != nil {
			log.Warn("ingress snapshot applied with problems", "err", err)
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return errors.New("the master closed the configuration stream")
}

// ListenFile makes a listening TCP socket on addr for the workers, with SO_REUSEPORT (one
// per worker and address) and returns it with the address it is bound to. It is made with the socket calls themselves and left blocking: a
// net.Listener would sit in the master's poller, which would then wake on every new
// connection that a worker accepts. Wildcard addresses are dual-stack, as in Go's net.
func ListenFile(addr string) (*os.File, string, error) {
	ta, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		return nil, "", err
	}
	wildcard := ta.IP == nil || ta.IP.IsUnspecified()
	var sa unix.Sockaddr
	family, v6only := unix.AF_INET, 0
	switch ip4 := ta.IP.To4(); {
	case wildcard:
		family, sa = unix.AF_INET6, &unix.SockaddrInet6{Port: ta.Port}
	case ip4 != nil:
		sa = &unix.SockaddrInet4{Port: ta.Port, Addr: [4]byte(ip4)}
	default:
		family, v6only = unix.AF_INET6, 1
		sa = &unix.SockaddrInet6{Port: ta.Port, Addr: [16]byte(ta.IP.To16())}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil && wildcard { // no IPv6 here: IPv4 only
		family, sa = unix.AF_INET, &unix.SockaddrInet4{Port: ta.Port}
		fd, err = unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	}
	if err != nil {
		return nil, "", os.NewSyscallError("socket", err)
	}
	fail := func(call string, err error) (*os.File, string, error) {
		unix.Close(fd)
		return nil, "", fmt.Errorf("listen on %s: %w", addr, os.NewSyscallError(call, err))
	}
	for _, opt := range []int{unix.SO_REUSEADDR, unix.SO_REUSEPORT} {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, opt, 1); err != nil {
			return fail("setsockopt", err)
		}
	}
	if family == unix.AF_INET6 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, v6only); err != nil {
			return fail("setsockopt", err)
		}
	}
	if err := unix.Bind(fd, sa); err != nil {
		return fail("bind", err)
	}
	if err := unix.Listen(fd, 4096); err != nil { // the kernel caps it at somaxconn
		return fail("listen", err)
	}
	bound, err := unix.Getsockname(fd)
	if err != nil {
		return fail("getsockname", err)
	}
	var ap netip.AddrPort
	switch b := bound.(type) {
	case *unix.SockaddrInet4:
		ap = netip.AddrPortFrom(netip.AddrFrom4(b.Addr), uint16(b.Port))
	case *unix.SockaddrInet6:
		ap = netip.AddrPortFrom(netip.AddrFrom16(b.Addr).Unmap(), uint16(b.Port))
	}
	return os.NewFile(uintptr(fd), "listener "+ap.String()), ap.String(), nil
}
