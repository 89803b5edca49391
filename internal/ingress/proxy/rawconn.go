package proxy

import (
	"io"
	"net"
	"syscall"
	"unsafe"
)

// rawConn reads and writes a TCP connection with raw system calls, still waiting for
// readiness in Go's poller (Config.RawSyscalls). A read or write of a non-blocking
// socket never blocks, but on loopback or a veth a write does the receiver's TCP work
// inline and often outlasts the runtime's 20 µs system call threshold; through net.Conn
// the runtime then hands the P to another thread. With one P per process (weft-ingress's
// workers) that hand-off is pure cost: +17 % requests a second measured (docs/benchmarks.md).
type rawConn struct {
	*net.TCPConn
	rc syscall.RawConn

	rbuf []byte // the Read in progress
	rn   int
	rerr syscall.Errno
	wbuf []byte // the Write in progress
	wn   int
	werr syscall.Errno

	readFn, writeFn func(fd uintptr) bool // bound once: no closure per call
}

// newRawConn wraps tc; it returns tc itself if its socket cannot be reached.
func newRawConn(tc *net.TCPConn) net.Conn {
	rc, err := tc.SyscallConn()
	if err != nil {
		return tc
	}
	c := &rawConn{TCPConn: tc, rc: rc}
	c.readFn, c.writeFn = c.read, c.write
	return c
}

func (c *rawConn) read(fd uintptr) bool {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&c.rbuf[0])), uintptr(len(c.rbuf)))
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false // park until readable
		}
		c.rn, c.rerr = int(n), e
		return true
	}
}

func (c *rawConn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	c.rbuf = b
	err := c.rc.Read(c.readFn)
	c.rbuf = nil
	switch {
	case err != nil:
		return 0, err // the poller's (deadline, closed), already a *net.OpError
	case c.rerr != 0:
		return 0, &net.OpError{Op: "read", Net: "tcp", Err: c.rerr}
	case c.rn == 0:
		return 0, io.EOF
	}
	return c.rn, nil
}

func (c *rawConn) write(fd uintptr) bool {
	for c.wn < len(c.wbuf) {
		p := c.wbuf[c.wn:]
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		switch e {
		case 0:
			c.wn += int(n)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false // park until writable, then write the rest
		default:
			c.werr = e
			return true
		}
	}
	return true
}

func (c *rawConn) Write(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	c.wbuf, c.wn, c.werr = b, 0, 0
	err := c.rc.Write(c.writeFn)
	n := c.wn
	c.wbuf = nil
	if err != nil {
		return n, err
	}
	if c.werr != 0 {
		return n, &net.OpError{Op: "write", Net: "tcp", Err: c.werr}
	}
	return n, nil
}
