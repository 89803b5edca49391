// Package fastpath short-cuts pod-to-pod traffic on one node with eBPF.
//
// A tc ingress program on every host veth looks the packet's destination address up in a
// hash map of the node's local pods. On a hit it writes the destination pod's MAC into the
// frame and hands it to bpf_redirect_peer, which delivers it straight into the destination
// pod's namespace: the bridge or the node's routing, a second veth backlog pass and
// netfilter are skipped. On a miss (another node, the outside world, ARP, neighbour
// discovery) the packet continues on the normal path, so an empty or stale map only costs
// speed, never correctness.
//
// The program is assembled here with cilium/ebpf's asm package: no C toolchain is needed
// to build weft, and the whole program is the few dozen instructions below.
package fastpath

import (
	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// Key is a destination address: IPv6, or IPv4 mapped into IPv6 (::ffff:a.b.c.d).
type Key [16]byte

// Value says where a local pod address lives.
type Value struct {
	HostIfindex uint32  // the pod's host-side veth; redirect_peer delivers to its peer
	PodMAC      [6]byte // written as the frame's destination
	_           [2]byte
}

// __sk_buff offsets of data and data_end.
const (
	skbData    = 76
	skbDataEnd = 80
	tcActOK    = 0
	ethPIPv4LE = 0x0008 // htons(0x0800) as a little-endian load sees it
	ethPIPv6LE = 0xdd86 // htons(0x86dd)
)

func newMapSpec() *ebpf.MapSpec {
	return &ebpf.MapSpec{Name: "weft_local_pods", Type: ebpf.Hash, KeySize: 16, ValueSize: 12, MaxEntries: 65536}
}

// RemoteKey is an LPM trie key: a prefix of IPv6 (or IPv4-mapped) addresses.
type RemoteKey struct {
	PrefixLen uint32
	Addr      [16]byte
}

// RemoteValue says where to send a pod block of another node: out of Ifindex (the
// underlay, or the VXLAN device) to next hop NextHop, resolved by the neighbour table.
type RemoteValue struct {
	Ifindex uint32
	Family  uint32   // AF_INET or AF_INET6, of NextHop
	NextHop [16]byte // IPv4 in the first 4 bytes
}

func newRemoteMapSpec() *ebpf.MapSpec {
	return &ebpf.MapSpec{Name: "weft_remote", Type: ebpf.LPMTrie, KeySize: 20, ValueSize: 24, MaxEntries: 4096, Flags: 1 /* BPF_F_NO_PREALLOC */}
}

func programSpec(m, remote *ebpf.Map) *ebpf.ProgramSpec {
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, skbData, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, skbDataEnd, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 14),
		asm.JGT.Reg(asm.R4, asm.R3, "pass"),
		// key := 0
		asm.Mov.Imm(asm.R5, 0),
		asm.StoreMem(asm.R10, -16, asm.R5, asm.DWord),
		asm.StoreMem(asm.R10, -8, asm.R5, asm.DWord),
		asm.LoadMem(asm.R5, asm.R2, 12, asm.Half),
		asm.JEq.Imm(asm.R5, ethPIPv4LE, "v4"),
		asm.JEq.Imm(asm.R5, ethPIPv6LE, "v6"),
		asm.Ja.Label("pass"),

		// IPv4: destination at 14+16; key = ::ffff:dst
		asm.Mov.Reg(asm.R4, asm.R2).WithSymbol("v4"),
		asm.Add.Imm(asm.R4, 34),
		asm.JGT.Reg(asm.R4, asm.R3, "pass"),
		asm.LoadMem(asm.R5, asm.R2, 30, asm.Word),
		asm.StoreMem(asm.R10, -4, asm.R5, asm.Word),
		asm.Mov.Imm(asm.R5, 0xffff),
		asm.StoreMem(asm.R10, -6, asm.R5, asm.Half),
		asm.Ja.Label("lookup"),

		// IPv6: destination at 14+24
		asm.Mov.Reg(asm.R4, asm.R2).WithSymbol("v6"),
		asm.Add.Imm(asm.R4, 54),
		asm.JGT.Reg(asm.R4, asm.R3, "pass"),
		asm.LoadMem(asm.R5, asm.R2, 38, asm.DWord),
		asm.StoreMem(asm.R10, -16, asm.R5, asm.DWord),
		asm.LoadMem(asm.R5, asm.R2, 46, asm.DWord),
		asm.StoreMem(asm.R10, -8, asm.R5, asm.DWord),

		asm.LoadMapPtr(asm.R1, m.FD()).WithSymbol("lookup"),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, -16),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "remote"),
		asm.Mov.Reg(asm.R7, asm.R0),
		// The helper call clobbered the packet pointers: load and bound them again.
		asm.LoadMem(asm.R2, asm.R6, skbData, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, skbDataEnd, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 14),
		asm.JGT.Reg(asm.R4, asm.R3, "pass"),
		// Rewrite the destination MAC only when it differs (a ptp pod addresses its
		// gateway; a bridge pod already addresses the peer). The program never writes
		// the packet directly, so the verifier adds no un-cloning prologue and frames that
		// need no rewrite are never copied.
		asm.LoadMem(asm.R5, asm.R2, 0, asm.Word),
		asm.LoadMem(asm.R8, asm.R7, 4, asm.Word),
		asm.JNE.Reg(asm.R5, asm.R8, "rewrite"),
		asm.LoadMem(asm.R5, asm.R2, 4, asm.Half),
		asm.LoadMem(asm.R8, asm.R7, 8, asm.Half),
		asm.JEq.Reg(asm.R5, asm.R8, "redirect"),
		asm.Mov.Reg(asm.R1, asm.R6).WithSymbol("rewrite"),
		asm.Mov.Imm(asm.R2, 0),
		asm.Mov.Reg(asm.R3, asm.R7),
		asm.Add.Imm(asm.R3, 4),
		asm.Mov.Imm(asm.R4, 6),
		asm.Mov.Imm(asm.R5, 0),
		asm.FnSkbStoreBytes.Call(),
		asm.JNE.Imm(asm.R0, 0, "pass"),
		asm.LoadMem(asm.R1, asm.R7, 0, asm.Word).WithSymbol("redirect"),
		asm.Mov.Imm(asm.R2, 0),
		asm.FnRedirectPeer.Call(),
		asm.Return(),

		// Another node's pod: send it out of the underlay (or VXLAN) device to the next hop
		// with bpf_redirect_neigh, past this node's routing and netfilter.
		asm.Mov.Imm(asm.R5, 128).WithSymbol("remote"),
		asm.StoreMem(asm.R10, -36, asm.R5, asm.Word),
		asm.LoadMem(asm.R5, asm.R10, -16, asm.DWord),
		asm.StoreMem(asm.R10, -32, asm.R5, asm.DWord),
		asm.LoadMem(asm.R5, asm.R10, -8, asm.DWord),
		asm.StoreMem(asm.R10, -24, asm.R5, asm.DWord),
		asm.LoadMapPtr(asm.R1, remote.FD()),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, -36),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass"),
		// struct bpf_redir_neigh { u32 nh_family; union { be32 v4; u32 v6[4]; } } at r10-60
		asm.LoadMem(asm.R5, asm.R0, 4, asm.Word),
		asm.StoreMem(asm.R10, -60, asm.R5, asm.Word),
		asm.LoadMem(asm.R5, asm.R0, 8, asm.DWord),
		asm.StoreMem(asm.R10, -56, asm.R5, asm.DWord),
		asm.LoadMem(asm.R5, asm.R0, 16, asm.DWord),
		asm.StoreMem(asm.R10, -48, asm.R5, asm.DWord),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.Word),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, -60),
		asm.Mov.Imm(asm.R3, 20),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnRedirectNeigh.Call(),
		asm.Return(),

		asm.Mov.Imm(asm.R0, tcActOK).WithSymbol("pass"),
		asm.Return(),
	}
	return &ebpf.ProgramSpec{Name: "weft_fastpath", Type: ebpf.SchedCLS, License: "Apache-2.0", Instructions: insns}
}
