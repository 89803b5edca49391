package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strconv"
)

// This file is weft's HTTP/1.1 message parser: strict where a lenient parser would let two
// hops read one message differently (request smuggling), and allocation-free per request
// (its slices point into the connection's read buffer, valid until the next read).
//
// Refused (RFC 9112 and the smuggling literature): Content-Length together with
// Transfer-Encoding, two Content-Lengths, a Transfer-Encoding other than "chunked",
// obs-fold, a bare LF or CR, whitespace before a header's colon, control characters in
// a value, a request without exactly one Host (HTTP/1.1), a header block over the limit.

// httpError is a request the proxy answers with status and closes.
type httpError struct {
	status int
	msg    string
}

func (e *httpError) Error() string { return e.msg }

var (
	errHeaderTooLarge = &httpError{431, "request header fields too large"}
	errTooManyHeaders = &httpError{431, "too many header fields"}
	errBadRequest     = &httpError{400, "bad request"}
)

func bad(msg string) error { return &httpError{400, msg} }

type header struct{ name, value []byte }

// message is one parsed request or response head.
type message struct {
	// request line or status line
	method, target, proto []byte
	status                int
	reason                []byte

	headers []header

	contentLength int64 // -1: none given
	chunked       bool
	close         bool // Connection: close, or HTTP/1.0 without keep-alive
	upgrade       []byte
	host          []byte
	http10        bool
}

func (m *message) reset() {
	m.method, m.target, m.proto, m.reason, m.upgrade, m.host = nil, nil, nil, nil, nil, nil
	m.status = 0
	m.headers = m.headers[:0]
	m.contentLength = -1
	m.chunked, m.close, m.http10 = false, false, false
}

// get returns the first value of a header (name in lower case).
func (m *message) get(lower string) ([]byte, bool) {
	for _, h := range m.headers {
		if equalFold(h.name, lower) {
			return h.value, true
		}
	}
	return nil, false
}

// readHead reads one message head (up to and including the empty line) from r, at most
// limit bytes, and returns it; the slice is valid until the next read from r.
func readHead(r *bufio.Reader, limit int) ([]byte, error) {
	n := 0
	for {
		buf, err := r.Peek(max(r.Buffered(), 1))
		if i := bytes.Index(buf[n:], crlfcrlf); i >= 0 {
			end := n + i + 4
			if end > limit {
				return nil, errHeaderTooLarge
			}
			head, _ := r.Peek(end)
			_, _ = r.Discard(end)
			return head, nil
		}
		if len(buf) >= limit {
			return nil, errHeaderTooLarge
		}
		if err != nil {
			if len(buf) == 0 && errors.Is(err, io.EOF) {
				return nil, io.EOF
			}
			if errors.Is(err, bufio.ErrBufferFull) {
				return nil, errHeaderTooLarge
			}
			return nil, err
		}
		n = max(len(buf)-3, 0)
		if _, err := r.Peek(len(buf) + 1); err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			if errors.Is(err, io.EOF) && len(buf) > 0 {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
}

var crlfcrlf = []byte("\r\n\r\n")

// parseRequest parses a request head.
func parseRequest(m *message, head []byte, maxHeaders int) error {
	m.reset()
	line, rest, err := nextLine(head)
	if err != nil {
		return err
	}
	sp1 := bytes.IndexByte(line, ' ')
	sp2 := bytes.LastIndexByte(line, ' ')
	if sp1 <= 0 || sp2 <= sp1+1 {
		return bad("malformed request line")
	}
	m.method, m.target, m.proto = line[:sp1], line[sp1+1:sp2], line[sp2+1:]
	if !isToken(m.method) {
		return bad("malformed method")
	}
	for _, c := range m.target {
		if c <= ' ' || c == 0x7f {
			return bad("malformed request target")
		}
	}
	switch string(m.proto) {
	case "HTTP/1.1":
	case "HTTP/1.0":
		m.http10, m.close = true, true
	default:
		return &httpError{505, "HTTP version not supported"}
	}
	if err := parseHeaders(m, rest, maxHeaders); err != nil {
		return err
	}
	hosts := 0
	for _, h := range m.headers {
		if equalFold(h.name, "host") {
			hosts++
			m.host = h.value
		}
	}
	if hosts > 1 || (hosts == 0 && !m.http10) {
		return bad("a request needs exactly one Host header")
	}
	if m.chunked && m.http10 {
		return bad("Transfer-Encoding in HTTP/1.0")
	}
	return nil
}

// parseResponse parses a response head (an upstream's: the same rules, so a response
// cannot smuggle either).
func parseResponse(m *message, head []byte, maxHeaders int) error {
	m.reset()
	line, rest, err := nextLine(head)
	if err != nil {
		return err
	}
	if len(line) < 12 || line[8] != ' ' || (len(line) > 12 && line[12] != ' ') {
		return bad("malformed status line")
	}
	m.proto = line[:8]
	switch string(m.proto) {
	case "HTTP/1.1":
	case "HTTP/1.0":
		m.http10, m.close = true, true
	default:
		return bad("malformed status line")
	}
	code, err := strconv.Atoi(string(line[9:12]))
	if err != nil || code < 100 || code > 999 {
		return bad("malformed status code")
	}
	m.status = code
	if len(line) > 13 {
		m.reason = line[13:]
	}
	return parseHeaders(m, rest, maxHeaders)
}

// nextLine cuts the first CRLF-terminated line; a bare CR or LF inside is an error.
func nextLine(b []byte) (line, rest []byte, err error) {
	i := bytes.IndexByte(b, '\n')
	if i < 1 || b[i-1] != '\r' {
		return nil, nil, bad("line not terminated by CRLF")
	}
	line = b[:i-1]
	if bytes.IndexByte(line, '\r') >= 0 {
		return nil, nil, bad("bare CR")
	}
	return line, b[i+1:], nil
}

func parseHeaders(m *message, b []byte, maxHeaders int) error {
	sawCL := false
	for {
		line, rest, err := nextLine(b)
		if err != nil {
			return err
		}
		b = rest
		if len(line) == 0 {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			return bad("obsolete line folding")
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return bad("malformed header line")
		}
		name := line[:colon]
		if !isToken(name) {
			return bad("malformed header name") // also whitespace before the colon
		}
		value := trimOWS(line[colon+1:])
		for _, c := range value {
			if (c < ' ' && c != '\t') || c == 0x7f {
				return bad("control character in a header value")
			}
		}
		if len(m.headers) >= maxHeaders {
			return errTooManyHeaders
		}
		m.headers = append(m.headers, header{name, value})
		switch {
		case equalFold(name, "content-length"):
			if sawCL {
				return bad("more than one Content-Length")
			}
			sawCL = true
			n, ok := parseDecimal(value)
			if !ok {
				return bad("malformed Content-Length")
			}
			m.contentLength = n
		case equalFold(name, "transfer-encoding"):
			if m.chunked || !equalFold(value, "chunked") {
				return &httpError{501, "only Transfer-Encoding: chunked is implemented"}
			}
			m.chunked = true
		case equalFold(name, "connection"):
			forEachToken(value, func(t []byte) {
				switch {
				case equalFold(t, "close"):
					m.close = true
				case equalFold(t, "keep-alive") && m.http10:
					m.close = false
				}
			})
		case equalFold(name, "upgrade"):
			m.upgrade = value
		}
	}
	if sawCL && m.chunked {
		return bad("both Content-Length and Transfer-Encoding")
	}
	return nil
}

func parseDecimal(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// forEachToken calls fn for each comma-separated token of a list header.
func forEachToken(v []byte, fn func([]byte)) {
	for len(v) > 0 {
		i := bytes.IndexByte(v, ',')
		var t []byte
		if i < 0 {
			t, v = v, nil
		} else {
			t, v = v[:i], v[i+1:]
		}
		if t = trimOWS(t); len(t) > 0 {
			fn(t)
		}
	}
}

var tokenChars = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-32] = true, true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return
}()

func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !tokenChars[c] {
			return false
		}
	}
	return true
}

// equalFold compares ASCII case-insensitively; lower is already lower case.
func equalFold[T []byte | string](b []byte, lower T) bool {
	if len(b) != len(lower) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 32
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// hopByHop headers end at each hop (RFC 9110 7.6.1); the proxy writes its own.
func hopByHop(name []byte) bool {
	switch len(name) {
	case 2:
		return equalFold(name, "te")
	case 7:
		return equalFold(name, "upgrade") || equalFold(name, "trailer")
	case 10:
		return equalFold(name, "connection") || equalFold(name, "keep-alive")
	case 14:
		return equalFold(name, "content-length")
	case 16:
		return equalFold(name, "proxy-connection")
	case 17:
		return equalFold(name, "transfer-encoding")
	case 19:
		return equalFold(name, "proxy-authorization")
	}
	return false
}

// listedInConnection reports whether name is listed in m's Connection headers (those
// are hop-by-hop too).
func listedInConnection(m *message, name []byte) bool {
	found := false
	for _, h := range m.headers {
		if equalFold(h.name, "connection") {
			forEachToken(h.value, func(t []byte) {
				if len(t) == len(name) && bytes.EqualFold(t, name) {
					found = true
				}
			})
		}
	}
	return found
}

// copyChunked copies a chunked body from r to w re-chunked canonically (extensions
// dropped), and the trailer section, up to limit bytes of data (-1: none). It returns the
// data bytes copied.
func copyChunked(w *bufio.Writer, r *bufio.Reader, limit int64, maxLine int) (int64, error) {
	var total int64
	for {
		line, err := readLine(r, maxLine)
		if err != nil {
			return total, err
		}
		if i := bytes.IndexByte(line, ';'); i >= 0 {
			line = line[:i]
		}
		size, ok := parseHex(trimOWS(line))
		if !ok {
			return total, bad("malformed chunk size")
		}
		if size == 0 {
			// Trailer section: up to the empty line, passed on.
			if _, err := w.WriteString("0\r\n"); err != nil {
				return total, err
			}
			for {
				tl, err := readLine(r, maxLine)
				if err != nil {
					return total, err
				}
				if len(tl) == 0 {
					_, err := w.WriteString("\r\n")
					return total, err
				}
				if tl[0] == ' ' || tl[0] == '\t' || bytes.IndexByte(tl, ':') <= 0 {
					return total, bad("malformed trailer")
				}
				_, _ = w.Write(tl)
				_, _ = w.WriteString("\r\n")
			}
		}
		total += size
		if limit >= 0 && total > limit {
			return total, &httpError{413, "request body too large"}
		}
		w.WriteString(strconv.FormatInt(size, 16))
		w.WriteString("\r\n")
		if _, err := io.CopyN(w, r, size); err != nil {
			return total, err
		}
		crlf, err := readLine(r, 2)
		if err != nil || len(crlf) != 0 {
			return total, bad("chunk not followed by CRLF")
		}
		if _, err := w.WriteString("\r\n"); err != nil {
			return total, err
		}
	}
}

// readLine reads a CRLF-terminated line of at most max bytes (without the CRLF).
func readLine(r *bufio.Reader, maxLen int) ([]byte, error) {
	line, err := r.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, bad("line too long")
		}
		return nil, err
	}
	if len(line) < 2 || line[len(line)-2] != '\r' || len(line)-2 > maxLen {
		return nil, bad("malformed line")
	}
	return line[:len(line)-2], nil
}

func parseHex(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 15 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, false
		}
		n = n<<4 | int64(d)
	}
	return n, true
}
