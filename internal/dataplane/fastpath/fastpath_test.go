package fastpath

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/weftnet/weft/internal/testutil"
)

const tcActRedirect = 7

func frame(etherType uint16, payload []byte) []byte {
	b := make([]byte, 14, 14+len(payload))
	copy(b[0:6], []byte{2, 0, 0, 0, 0, 0xaa})  // gateway MAC, as a ptp pod addresses it
	copy(b[6:12], []byte{2, 0, 0, 0, 0, 0xbb}) // sender
	binary.BigEndian.PutUint16(b[12:], etherType)
	return append(b, payload...)
}

func addressed(f []byte, mac net.HardwareAddr) []byte {
	copy(f[0:6], mac)
	return f
}

func ipv4(dst string) []byte {
	h := make([]byte, 20)
	h[0] = 0x45
	d := netip.MustParseAddr(dst).As4()
	copy(h[16:20], d[:])
	return append(h, make([]byte, 26)...)
}

func ipv6(dst string) []byte {
	h := make([]byte, 40)
	h[0] = 0x60
	d := netip.MustParseAddr(dst).As16()
	copy(h[24:40], d[:])
	return append(h, make([]byte, 20)...)
}

// TestProgram runs the program on crafted frames (BPF_PROG_TEST_RUN): local pods are
// redirected with their MAC written in, anything else passes untouched.
func TestProgram(t *testing.T) {
	testutil.RequireRoot(t)
	f, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	podMAC := net.HardwareAddr{0x0a, 1, 2, 3, 4, 5}
	err = f.Sync(map[Key]Value{
		KeyOf(netip.MustParseAddr("10.1.0.5")): ValueOf(42, podMAC),
		KeyOf(netip.MustParseAddr("fd00::5")):  ValueOf(43, podMAC),
	})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		in   []byte
		want uint32
	}{
		{"local IPv4 pod", frame(0x0800, ipv4("10.1.0.5")), tcActRedirect},
		{"local IPv6 pod", frame(0x86dd, ipv6("fd00::5")), tcActRedirect},
		{"bridge frame already addressed to the pod", addressed(frame(0x0800, ipv4("10.1.0.5")), podMAC), tcActRedirect},
		{"remote IPv4", frame(0x0800, ipv4("10.1.0.6")), 0},
		{"remote IPv6", frame(0x86dd, ipv6("fd00::6")), 0},
		{"ARP", frame(0x0806, make([]byte, 28)), 0},
	}
	for _, c := range cases {
		// Short frames are not tested here: BPF_PROG_TEST_RUN itself refuses frames shorter
		// than the headers this program reads, and the verifier checks its bounds.
		in := c.in
		ret, out, err := runProg(f.prog, in)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if ret != c.want {
			t.Errorf("%s: returned %d, want %d", c.name, ret, c.want)
		}
		if c.want == tcActRedirect && !bytes.Equal(out[0:6], podMAC) {
			t.Errorf("%s: destination MAC %x, want %x", c.name, out[0:6], podMAC)
		}
		if c.want == 0 && !bytes.Equal(out[:len(in)], in) {
			t.Errorf("%s: a passed frame was modified", c.name)
		}
	}
	// Another node's block goes out with bpf_redirect_neigh.
	if err := f.SyncRemote(map[RemoteKey]RemoteValue{
		RemoteKeyOf(netip.MustParsePrefix("10.2.0.0/24")): RemoteValueOf(42, netip.MustParseAddr("192.168.1.2")),
	}); err != nil {
		t.Fatal(err)
	}
	if ret, out, _ := runProg(f.prog, frame(0x0800, ipv4("10.2.0.9"))); ret != tcActRedirect || !bytes.Equal(out[:14], frame(0x0800, ipv4("10.2.0.9"))[:14]) {
		t.Errorf("remote block: returned %d", ret)
	}
	if ret, _, _ := runProg(f.prog, frame(0x0800, ipv4("10.3.0.9"))); ret != 0 {
		t.Errorf("unknown block: returned %d, want to pass", ret)
	}
	if err := f.SyncRemote(map[RemoteKey]RemoteValue{}); err != nil {
		t.Fatal(err)
	}
	if ret, _, _ := runProg(f.prog, frame(0x0800, ipv4("10.2.0.9"))); ret != 0 {
		t.Errorf("after the block left: returned %d", ret)
	}

	// Sync removes what is no longer wanted.
	if err := f.Sync(map[Key]Value{}); err != nil {
		t.Fatal(err)
	}
	if ret, _, _ := runProg(f.prog, frame(0x0800, ipv4("10.1.0.5"))); ret != 0 {
		t.Errorf("after the pod left, returned %d", ret)
	}
}

func runProg(p *ebpf.Program, in []byte) (uint32, []byte, error) {
	out := make([]byte, len(in)+256)
	opts := &ebpf.RunOptions{Data: in, DataOut: out}
	ret, err := p.Run(opts)
	return ret, opts.DataOut, err
}
