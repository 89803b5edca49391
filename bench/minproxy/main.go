// minproxy is a reference for bench/ingress.sh (REFERENCE=1), not a proxy to use: the
// least a Go HTTP/1.1 keep-alive proxy can do per request. Worker processes of one P
// each (as weft-ingress's), a goroutine per client connection, raw reads and writes
// through Go's poller, a pooled upstream connection per request in flight, the request
// head forwarded as it came and the answer relayed when its Content-Length is in. No
// header is checked or rewritten, nothing is counted: what it costs is the floor under
// weft-ingress's figures. -spin adds busy CPU time per request; -pin=false leaves the
// workers' placement to the kernel, which on a saturated machine is what moves the tail
// (docs/benchmarks.md, "Ingress").
package main

import (
	"bytes"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"time"
	"unsafe"

	ingressworkers "github.com/weftnet/weft/internal/ingress/workers"
)

var (
	listen   = flag.String("listen", "127.0.0.1:8087", "")
	upstream = flag.String("upstream", "127.0.0.1:8081", "")
	workers  = flag.Int("workers", 2, "")
	spin     = flag.Duration("spin", 0, "busy time per request")
	pin      = flag.Bool("pin", true, "keep each worker on a CPU of its own when they are as many as the CPUs, as weft-ingress does")
)

func main() {
	flag.Parse()
	if os.Getenv("MINPROXY_WORKER") == "" {
		var cmds []*exec.Cmd
		var cpus []int
		if *pin {
			cpus = ingressworkers.CPUsFor(*workers)
		}
		for i := 0; i < *workers; i++ {
			c := exec.Command(os.Args[0], os.Args[1:]...)
			c.Env = append(os.Environ(), "MINPROXY_WORKER=1", "GOMAXPROCS=1")
			if i < len(cpus) {
				c.Env = append(c.Env, ingressworkers.EnvCPU+"="+strconv.Itoa(cpus[i]))
			}
			c.Stdout, c.Stderr = os.Stdout, os.Stderr
			if err := c.Start(); err != nil {
				panic(err)
			}
			cmds = append(cmds, c)
		}
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		for _, c := range cmds {
			c.Process.Kill()
		}
		return
	}
	if _, _, err := ingressworkers.PinFromEnv(); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	serve(listenFD())
}

func listenFD() int {
	ap := net.TCPAddrFromAddrPort(mustAP(*listen))
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	check(err)
	check(syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1))
	check(syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, 0xf /*SO_REUSEPORT*/, 1))
	var sa syscall.SockaddrInet4
	copy(sa.Addr[:], ap.IP.To4())
	sa.Port = ap.Port
	check(syscall.Bind(fd, &sa))
	check(syscall.Listen(fd, 4096))
	return fd
}

func mustAP(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func dialUp() int {
	ap := net.TCPAddrFromAddrPort(mustAP(*upstream))
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	check(err)
	var sa syscall.SockaddrInet4
	copy(sa.Addr[:], ap.IP.To4())
	sa.Port = ap.Port
	check(syscall.Connect(fd, &sa))
	syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
	check(syscall.SetNonblock(fd, true))
	return fd
}

func rread(fd int, b []byte) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall(syscall.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	return int(n), e
}

func rwrite(fd int, b []byte) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	return int(n), e
}

// responseLen: total length of a complete response in b, or 0.
func responseLen(b []byte) int {
	i := bytes.Index(b, []byte("\r\n\r\n"))
	if i < 0 {
		return 0
	}
	head := b[:i]
	j := bytes.Index(head, []byte("Content-Length: "))
	if j < 0 {
		j = bytes.Index(head, []byte("content-length: "))
	}
	if j < 0 {
		return i + 4
	}
	v := head[j+16:]
	if k := bytes.IndexByte(v, '\r'); k >= 0 {
		v = v[:k]
	}
	n, _ := strconv.Atoi(string(v))
	if len(b) < i+4+n {
		return 0
	}
	return i + 4 + n
}

// ---- goroutine per connection, raw syscalls through Go's poller ----

type rconn struct {
	rc  syscall.RawConn
	f   *os.File
	buf []byte
	n   int
	b   []byte
	r   int
	e   syscall.Errno
	rd  func(uintptr) bool
}

// newRconn wraps a connection's raw descriptor (f, if any, keeps it open).
func newRconn(rc syscall.RawConn, f *os.File) *rconn {
	c := &rconn{rc: rc, f: f, buf: make([]byte, 16<<10)}
	c.rd = func(fd uintptr) bool {
		n, e := rread(int(fd), c.b)
		if e == syscall.EAGAIN {
			return false
		}
		c.r, c.e = n, e
		return true
	}
	return c
}

func (c *rconn) read(b []byte) int {
	c.b = b
	if err := c.rc.Read(c.rd); err != nil || c.e != 0 {
		return 0
	}
	return c.r
}

func (c *rconn) write(b []byte) bool {
	var e syscall.Errno
	c.rc.Write(func(fd uintptr) bool {
		for len(b) > 0 {
			var n int
			if n, e = rwrite(int(fd), b); e == syscall.EAGAIN {
				return false // wait until writable
			} else if e != 0 {
				return true
			}
			b = b[n:]
		}
		return true
	})
	return e == 0 && len(b) == 0
}

var upPool []*rconn // idle upstream connections; one P, and no await between take and use

func serve(lfd int) {
	f := os.NewFile(uintptr(lfd), "l")
	ln, err := net.FileListener(f)
	check(err)
	for {
		c, err := ln.Accept()
		check(err)
		tc := c.(*net.TCPConn)
		tc.SetNoDelay(true)
		raw, _ := tc.SyscallConn()
		go serveConn(raw)
	}
}

func serveConn(raw syscall.RawConn) {
	c := newRconn(raw, nil)
	for {
		i := bytes.Index(c.buf[:c.n], []byte("\r\n\r\n"))
		if i < 0 {
			if c.n == len(c.buf) {
				return
			}
			n := c.read(c.buf[c.n:])
			if n == 0 {
				return
			}
			c.n += n
			continue
		}
		if *spin > 0 {
			t := nanotime()
			for nanotime()-t < int64(*spin) {
			}
		}
		var up *rconn
		if k := len(upPool); k > 0 {
			up = upPool[k-1]
			upPool = upPool[:k-1]
		} else {
			f := os.NewFile(uintptr(dialUp()), "upstream")
			rc, err := f.SyscallConn()
			check(err)
			up = newRconn(rc, f)
		}
		if !up.write(c.buf[:i+4]) {
			return
		}
		copy(c.buf, c.buf[i+4:c.n])
		c.n -= i + 4
		for {
			m := responseLen(up.buf[:up.n])
			if m > 0 {
				if !c.write(up.buf[:m]) {
					return
				}
				copy(up.buf, up.buf[m:up.n])
				up.n -= m
				break
			}
			n := up.read(up.buf[up.n:])
			if n == 0 {
				return
			}
			up.n += n
		}
		upPool = append(upPool, up)
	}
}

func nanotime() int64 { return time.Now().UnixNano() }
