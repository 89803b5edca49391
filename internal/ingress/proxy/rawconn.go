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

	// A held write (holdNextWrite) goes out from inside the next Read's wait instead: see
	// sendThenRead.
	holdWrite bool
	held      []byte // the held bytes (a copy), nil when none
	heldBuf   []byte

	readFn, writeFn, sendReadFn func(fd uintptr) bool // bound once: no closure per call
}

// newRawConn wraps tc; it returns tc itself if its socket cannot be reached.
func newRawConn(tc *net.TCPConn) net.Conn {
	rc, err := tc.SyscallConn()
	if err != nil {
		return tc
	}
	c := &rawConn{TCPConn: tc, rc: rc}
	c.readFn, c.writeFn, c.sendReadFn = c.read, c.write, c.sendThenRead
	return c
}

// holdNextWrite keeps the next Write back for the Read that must follow it: a request to
// an endpoint, then the wait for its answer. Sent from inside that Read (after Go's poller
// has forgotten the socket's earlier readiness, so the answer's arrival is never missed),
// the request needs no read that finds nothing before the wait, a system call a request
// that nginx does not make either.
func (c *rawConn) holdNextWrite() { c.holdWrite = true }

// sendThenRead is the Read callback while a write is held: the first call sends it and
// waits (false) for the answer; later calls read.
func (c *rawConn) sendThenRead(fd uintptr) bool {
	if c.held == nil {
		return c.read(fd)
	}
	c.wbuf, c.wn, c.werr = c.held, 0, 0
	sent := c.write(fd)
	c.wbuf = nil
	switch {
	case !sent: // the send buffer is full: Read sends the rest the usual way
		c.held = c.held[c.wn:]
		return true
	case c.werr != 0:
		c.held = nil
		return true
	}
	c.held = nil
	return false
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
	var err error
	if c.held != nil {
		c.werr, c.rerr, c.rn = 0, 0, 0
		err = c.rc.Read(c.sendReadFn)
		if c.werr != 0 && err == nil {
			c.rbuf = nil
			return 0, &net.OpError{Op: "write", Net: "tcp", Err: c.werr}
		}
		if rest := c.held; rest != nil {
			c.held, c.rbuf = nil, nil
			if err != nil {
				return 0, err
			}
			if _, err := c.Write(rest); err != nil {
				return 0, err
			}
			return c.Read(b)
		}
	} else {
		err = c.rc.Read(c.readFn)
	}
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
	if c.holdWrite {
		c.holdWrite = false
		c.heldBuf = append(c.heldBuf[:0], b...) // b is the caller's buffer, written again before the Read
		c.held = c.heldBuf
		return len(b), nil
	}
	if c.held != nil { // never followed by a Read: send it first
		rest := c.held
		c.held = nil
		if _, err := c.Write(rest); err != nil {
			return 0, err
		}
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
