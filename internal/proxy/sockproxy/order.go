package sockproxy

import "encoding/binary"

// The programs keep addresses and ports as the socket hooks hand them over: in network
// byte order, loaded as native integers. These convert from and to the bytes on the wire.

func nativeWord(b []byte) uint32 { return binary.NativeEndian.Uint32(b) }

func putNativeWord(b []byte, w uint32) { binary.NativeEndian.PutUint32(b, w) }

func netPort(port uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], port)
	return binary.NativeEndian.Uint16(b[:])
}

func hostPort(p uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], p)
	return binary.BigEndian.Uint16(b[:])
}
