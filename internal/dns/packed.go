package dns

import (
	"encoding/binary"
	"sync"

	mdns "github.com/miekg/dns"
)

// The zone's answers, packed once per snapshot. An answer from Records depends only on
// the question, the client's EDNS buffer size and the request's ID, RD and CD bits, so
// the first query of a kind is answered the slow way (unpack, Answer, pack) and its wire
// form kept; the next ones copy it and patch those fields, without unpacking the request
// or packing anything. Only plain queries take this path: one lower-case question of
// class IN, no other records but an OPT without options; anything else goes the slow way.

// packedMax bounds a snapshot's packed answers (a flood of distinct names cannot grow
// it further; those are answered the slow way).
const packedMax = 50000

type packedAnswers struct {
	mu sync.RWMutex
	m  map[string]packedAnswer
}

type packedAnswer struct {
	wire  []byte // ID 0, RD and CD clear
	qtype uint16
	rcode int
}

// plainQuery is what the fast path reads from a request.
type plainQuery struct {
	key     [255 + 5]byte // question name, type, EDNS flag and buffer size
	keyLen  int
	qtype   uint16
	nameEnd int // where the question's name ends in the request
}

// parsePlain reads a plain query from b, or returns false.
func parsePlain(b []byte, q *plainQuery) bool {
	if len(b) < 12+5 || b[2]&0xfe != 0 || // QR, opcode, AA, TC must be 0 (RD may be set)
		binary.BigEndian.Uint16(b[4:]) != 1 || binary.BigEndian.Uint16(b[6:]) != 0 || binary.BigEndian.Uint16(b[8:]) != 0 {
		return false
	}
	arcount := binary.BigEndian.Uint16(b[10:])
	if arcount > 1 {
		return false
	}
	i := 12
	for {
		if i >= len(b) {
			return false
		}
		l := int(b[i])
		if l == 0 {
			i++
			break
		}
		if l > 63 || i+1+l > len(b) || i+1+l-12 > 255 {
			return false // a pointer, a reserved label type, or too long
		}
		for _, c := range b[i+1 : i+1+l] {
			if 'A' <= c && c <= 'Z' {
				return false // mixed case: the slow path echoes it in every owner name
			}
		}
		i += 1 + l
	}
	q.nameEnd = i
	if i+4 > len(b) || binary.BigEndian.Uint16(b[i+2:]) != mdns.ClassINET {
		return false
	}
	q.qtype = binary.BigEndian.Uint16(b[i:])
	n := copy(q.key[:], b[12:i+2])
	size := uint16(0)
	i += 4
	if arcount == 1 {
		// OPT: root name, type 41, class = buffer size, TTL = ext-rcode/version/flags,
		// RDLENGTH 0 (options, such as cookies, go the slow way).
		if i+11 != len(b) || b[i] != 0 || binary.BigEndian.Uint16(b[i+1:]) != mdns.TypeOPT ||
			b[i+6] != 0 || binary.BigEndian.Uint16(b[i+9:]) != 0 {
			return false
		}
		size = binary.BigEndian.Uint16(b[i+3:])
		q.key[n] = 1
	} else {
		if i != len(b) {
			return false
		}
		q.key[n] = 0
	}
	binary.BigEndian.PutUint16(q.key[n+1:], size)
	q.keyLen = n + 3
	return true
}

// packed answers b from the snapshot's packed answers, appending to out; false when b is
// not a plain query or its answer is not packed yet.
func (r *Records) packed(b []byte, out []byte) ([]byte, packedAnswer, bool) {
	var q plainQuery
	if !parsePlain(b, &q) {
		return nil, packedAnswer{}, false
	}
	r.pack.mu.RLock()
	a, ok := r.pack.m[string(q.key[:q.keyLen])]
	r.pack.mu.RUnlock()
	if !ok {
		return nil, packedAnswer{}, false
	}
	out = append(out[:0], a.wire...)
	copy(out, b[:2])      // ID
	out[2] |= b[2] & 0x01 // RD
	out[3] |= b[3] & 0x10 // CD
	return out, a, true
}

// keepPacked remembers wire, the slow path's answer to b, if b is a plain query.
func (r *Records) keepPacked(b, wire []byte, rcode int) {
	var q plainQuery
	if !parsePlain(b, &q) || len(wire) < 12 {
		return
	}
	w := append([]byte(nil), wire...)
	w[0], w[1] = 0, 0
	w[2] &^= 0x01
	w[3] &^= 0x10
	r.pack.mu.Lock()
	defer r.pack.mu.Unlock()
	if r.pack.m == nil {
		r.pack.m = map[string]packedAnswer{}
	}
	if len(r.pack.m) < packedMax {
		r.pack.m[string(q.key[:q.keyLen])] = packedAnswer{wire: w, qtype: q.qtype, rcode: rcode}
	}
}
