// Package fastpath short-cuts pod-to-pod traffic with eBPF: on one node, to other nodes, and
// from the VXLAN tunnel into local pods.
//
// A tc ingress program on every host veth looks the packet's destination address up in a
// hash map of the node's local pods. On a hit it writes the destination pod's MAC into the
// frame and hands it to bpf_redirect_peer, which delivers it straight into the destination
// pod's namespace: the bridge or the node's routing, a second veth backlog pass and
// netfilter are skipped. On a miss (another node, the outside world, ARP, neighbour
// discovery) the packet continues on the normal path, so an empty or stale map only costs
// speed, never correctness.
//
// The programs are assembled here with cilium/ebpf's asm package: no C toolchain is needed
// to build weft, and each is the hundred or two instructions below.
package fastpath

import (
	"encoding/binary"
	"net"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// Key is a destination address: IPv6, or IPv4 mapped into IPv6 (::ffff:a.b.c.d).
type Key [16]byte

// Value says where a local pod address lives.
type Value struct {
	HostIfindex uint32  // the pod's host-side veth; redirect_peer delivers to its peer
	PodMAC      [6]byte // written as the frame's destination
	Flags       uint8   // FlagIngressPoliced, FlagEgressPoliced (policy.go)
	_           uint8
}

// __sk_buff offsets of data and data_end.
const (
	skbData    = 76
	skbDataEnd = 80
	skbPktType = 4
	skbIfindex = 40
	// tcActUnspec is TCX_NEXT: weft has no verdict, so the next tcx program and then the
	// legacy ingress qdisc (e.g. the bandwidth plugin's redirect to its IFB) still run.
	// Under cls_bpf with direct action it means the same: continue as if unclassified.
	tcActUnspec = -1
	tcActShot   = 2
	ethPIPv4LE  = 0x0008 // htons(0x0800) as a little-endian load sees it
	ethPIPv6LE  = 0xdd86 // htons(0x86dd)
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

// Indexes into the per-CPU stats map: packets each short cut took.
const (
	statLocal  = iota // delivered into a pod on this node
	statRemote        // sent straight to another node's block
	statDecap         // decapsulated from the tunnel into a pod
	numStats
)

func newStatsMapSpec() *ebpf.MapSpec {
	return &ebpf.MapSpec{Name: "weft_fp_stats", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: numStats}
}

// destKey stores, as the map key at r10-16, the destination of the IP packet behind the
// Ethernet header at base+eth (IPv4 mapped into IPv6), bounds-checked against R3
// (data_end), and continues at v4 or v6 by family. Another type, or a short packet, goes
// to miss. It clobbers R4 and R5; labels are named after v4 so two uses never collide.
func destKey(base asm.Register, eth int16, v4, v6, miss string) asm.Instructions {
	return addrKey(base, eth, 16, 24, v4, v6, miss)
}

// sourceKey is destKey for the source address.
func sourceKey(base asm.Register, eth int16, v4, v6, miss string) asm.Instructions {
	return addrKey(base, eth, 12, 8, v4, v6, miss)
}

// addrKey is destKey and sourceKey: off4 and off6 are the address's offsets in the IPv4
// and IPv6 headers.
func addrKey(base asm.Register, eth, off4, off6 int16, v4, v6, miss string) asm.Instructions {
	ip := eth + 14
	return asm.Instructions{
		asm.Mov.Imm(asm.R5, 0),
		asm.StoreMem(asm.R10, -16, asm.R5, asm.DWord),
		asm.StoreMem(asm.R10, -8, asm.R5, asm.DWord),
		asm.LoadMem(asm.R5, base, eth+12, asm.Half),
		asm.JEq.Imm(asm.R5, ethPIPv4LE, v4+"_ipv4"),
		asm.JEq.Imm(asm.R5, ethPIPv6LE, v4+"_ipv6"),
		asm.Ja.Label(miss),

		// IPv4: key = ::ffff:addr
		asm.Mov.Reg(asm.R4, base).WithSymbol(v4 + "_ipv4"),
		asm.Add.Imm(asm.R4, int32(ip)+20),
		asm.JGT.Reg(asm.R4, asm.R3, miss),
		asm.LoadMem(asm.R5, base, ip+off4, asm.Word),
		asm.StoreMem(asm.R10, -4, asm.R5, asm.Word),
		asm.Mov.Imm(asm.R5, 0xffff),
		asm.StoreMem(asm.R10, -6, asm.R5, asm.Half),
		asm.Ja.Label(v4),

		// IPv6
		asm.Mov.Reg(asm.R4, base).WithSymbol(v4 + "_ipv6"),
		asm.Add.Imm(asm.R4, int32(ip)+40),
		asm.JGT.Reg(asm.R4, asm.R3, miss),
		asm.LoadMem(asm.R5, base, ip+off6, asm.DWord),
		asm.StoreMem(asm.R10, -16, asm.R5, asm.DWord),
		asm.LoadMem(asm.R5, base, ip+off6+8, asm.DWord),
		asm.StoreMem(asm.R10, -8, asm.R5, asm.DWord),
		asm.Ja.Label(v6),
	}
}

// endpointPacket looks the IP packet behind the Ethernet header at base+eth up in the
// map of service endpoints twice: by its source (key at r10-88: source address as IPv6,
// source port, protocol) and by its destination (key at r10-112). Either hit goes to
// isEP: a reply from an endpoint may belong to a connection the service proxy DNATed
// (conntrack must translate it back), and then both directions of the connection must
// take the same path (with only its replies tracked, a connection stalled now and then).
// isEP is ctCheck (conntrack.go), which asks conntrack, or the kernel's path where the
// kernel cannot be asked. IPv4 fragments and IPv6 packets with extension headers, whose
// ports cannot be read here, go to noPorts (the kernel's path). Anything else continues
// after the routine. Protocol, family and TCP flags are left on the stack for ctCheck.
// It runs after destKey, which checked the family and the fixed IP header's bounds
// against R3 (data_end); the first instruction carries the label entry. It clobbers
// R0-R5.
func endpointPacket(eps *ebpf.Map, base asm.Register, eth int16, entry, noPorts, isEP string) asm.Instructions {
	ip := eth + 14
	p := entry + "_ep"
	return asm.Instructions{
		asm.Mov.Imm(asm.R5, 0).WithSymbol(entry),
		asm.StoreMem(asm.R10, -112, asm.R5, asm.DWord),
		asm.StoreMem(asm.R10, -104, asm.R5, asm.DWord),
		asm.StoreMem(asm.R10, -96, asm.R5, asm.DWord),
		asm.StoreMem(asm.R10, -88, asm.R5, asm.DWord),
		asm.StoreMem(asm.R10, -80, asm.R5, asm.DWord),
		asm.StoreMem(asm.R10, -72, asm.R5, asm.DWord),
		asm.LoadMem(asm.R5, base, eth+12, asm.Half),
		asm.JEq.Imm(asm.R5, ethPIPv6LE, p+"_v6"),

		// IPv4: not a fragment; source at 12, destination at 16; the L4 header after
		// IHL*4 bytes.
		asm.StoreImm(asm.R10, stackFamily, 4, asm.Byte),
		asm.LoadMem(asm.R5, base, ip+6, asm.Half),
		asm.And.Imm(asm.R5, 0xff3f), // htons(IP_MF|IP_OFFSET)
		asm.JNE.Imm(asm.R5, 0, noPorts),
		asm.LoadMem(asm.R5, base, ip+12, asm.Word),
		asm.StoreMem(asm.R10, -76, asm.R5, asm.Word),
		asm.LoadMem(asm.R5, base, ip+16, asm.Word),
		asm.StoreMem(asm.R10, -100, asm.R5, asm.Word),
		asm.Mov.Imm(asm.R5, 0xffff),
		asm.StoreMem(asm.R10, -78, asm.R5, asm.Half),
		asm.StoreMem(asm.R10, -102, asm.R5, asm.Half),
		asm.LoadMem(asm.R0, base, ip+9, asm.Byte),
		asm.LoadMem(asm.R5, base, ip, asm.Byte),
		asm.And.Imm(asm.R5, 0x0f),
		asm.LSh.Imm(asm.R5, 2),
		asm.Mov.Reg(asm.R4, base),
		asm.Add.Imm(asm.R4, int32(ip)),
		asm.Add.Reg(asm.R4, asm.R5),
		asm.Ja.Label(p + "_l4"),

		// IPv6: source at 8, destination at 24; the L4 header right after the fixed
		// header. (The bound is checked again: the verifier also walks here from destKey's
		// IPv4 branch.)
		asm.StoreImm(asm.R10, stackFamily, 6, asm.Byte).WithSymbol(p + "_v6"),
		asm.Mov.Reg(asm.R4, base),
		asm.Add.Imm(asm.R4, int32(ip)+40),
		asm.JGT.Reg(asm.R4, asm.R3, p+"_done"),
		asm.LoadMem(asm.R5, base, ip+8, asm.DWord),
		asm.StoreMem(asm.R10, -88, asm.R5, asm.DWord),
		asm.LoadMem(asm.R5, base, ip+16, asm.DWord),
		asm.StoreMem(asm.R10, -80, asm.R5, asm.DWord),
		asm.LoadMem(asm.R5, base, ip+24, asm.DWord),
		asm.StoreMem(asm.R10, -112, asm.R5, asm.DWord),
		asm.LoadMem(asm.R5, base, ip+32, asm.DWord),
		asm.StoreMem(asm.R10, -104, asm.R5, asm.DWord),
		asm.LoadMem(asm.R0, base, ip+6, asm.Byte),
		asm.JEq.Imm(asm.R0, unix.IPPROTO_HOPOPTS, noPorts),
		asm.JEq.Imm(asm.R0, unix.IPPROTO_ROUTING, noPorts),
		asm.JEq.Imm(asm.R0, unix.IPPROTO_FRAGMENT, noPorts),
		asm.JEq.Imm(asm.R0, unix.IPPROTO_DSTOPTS, noPorts),
		asm.Mov.Reg(asm.R4, base),
		asm.Add.Imm(asm.R4, int32(ip)+40),

		// R0: the protocol, R4: the L4 header.
		asm.JEq.Imm(asm.R0, unix.IPPROTO_TCP, p+"_port").WithSymbol(p + "_l4"),
		asm.JEq.Imm(asm.R0, unix.IPPROTO_UDP, p+"_port"),
		asm.JEq.Imm(asm.R0, unix.IPPROTO_SCTP, p+"_port"),
		asm.Ja.Label(p + "_done"),
		asm.Mov.Reg(asm.R5, asm.R4).WithSymbol(p + "_port"),
		asm.Add.Imm(asm.R5, 4),
		asm.JGT.Reg(asm.R5, asm.R3, p+"_done"),
		asm.LoadMem(asm.R5, asm.R4, 0, asm.Half),
		asm.StoreMem(asm.R10, -72, asm.R5, asm.Half),
		asm.StoreMem(asm.R10, -70, asm.R0, asm.Byte),
		asm.LoadMem(asm.R5, asm.R4, 2, asm.Half),
		asm.StoreMem(asm.R10, -96, asm.R5, asm.Half),
		asm.StoreMem(asm.R10, -94, asm.R0, asm.Byte),
		// TCP flags for ctCheck (0xff: not read).
		asm.StoreImm(asm.R10, stackTCPFlags, 0xff, asm.Byte),
		asm.JNE.Imm(asm.R0, unix.IPPROTO_TCP, p+"_lookup"),
		asm.Mov.Reg(asm.R5, asm.R4),
		asm.Add.Imm(asm.R5, 14),
		asm.JGT.Reg(asm.R5, asm.R3, p+"_lookup"),
		asm.LoadMem(asm.R5, asm.R4, 13, asm.Byte),
		asm.StoreMem(asm.R10, stackTCPFlags, asm.R5, asm.Byte),
		asm.LoadMapPtr(asm.R1, eps.FD()).WithSymbol(p + "_lookup"),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, -88),
		asm.FnMapLookupElem.Call(),
		asm.JNE.Imm(asm.R0, 0, isEP),
		asm.LoadMapPtr(asm.R1, eps.FD()),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, -112),
		asm.FnMapLookupElem.Call(),
		asm.JNE.Imm(asm.R0, 0, isEP),
		asm.Mov.Imm(asm.R0, 0).WithSymbol(p + "_done"),
	}
}

// endpointGate is endpointPacket followed, with ct, by ctCheck: a packet from or to an
// endpoint's port goes to kernel unless conntrack holds no flow for it. What may take the
// short cut continues after the last instruction. With podsOf set (every program but the
// host veths', whose source is their pod), the packet's source must also be in that trie
// of other nodes' pod blocks: only then does the flow's other direction take a short cut
// too (from a local pod to a remote block); a reply to a node or an outside client takes
// the kernel's path, so its request must as well, or conntrack would see the replies alone.
func endpointGate(eps *ebpf.Map, ct *ctKfuncs, podsOf *ebpf.Map, base asm.Register, eth int16, entry, kernel string) asm.Instructions {
	if ct == nil {
		return endpointPacket(eps, base, eth, entry, kernel, kernel)
	}
	insns := endpointPacket(eps, base, eth, entry, kernel, entry+"_hit")
	insns = append(insns, asm.Ja.Label(entry+"_checked"))
	check := entry + "_hit"
	if podsOf != nil {
		check = entry + "_srcpod"
		insns = append(insns, sourceInTrie(podsOf, entry+"_hit", kernel)...)
	}
	insns = append(insns, ctCheck(ct, check, kernel, entry+"_checked")...)
	return append(insns, asm.Mov.Imm(asm.R0, 0).WithSymbol(entry+"_checked"))
}

// sourceInTrie goes on after its last instruction only if the source address
// endpointPacket put on the stack is in the LPM trie m; else to miss.
// The first instruction carries label entry. It clobbers R0-R5.
func sourceInTrie(m *ebpf.Map, entry, miss string) asm.Instructions {
	insns := asm.Instructions{
		asm.StoreImm(asm.R10, stackSrcTrieKey, 128, asm.Word).WithSymbol(entry),
	}
	insns = append(insns, stackCopy(stackSrcTrieKey+4, -88, 16)...)
	return append(insns,
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, stackSrcTrieKey),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, miss),
	)
}

// stackCopy copies n bytes (a multiple of 8) from the stack at src to dst, through R5.
func stackCopy(dst, src int16, n int16) asm.Instructions {
	var insns asm.Instructions
	for off := int16(0); off < n; off += 8 {
		insns = append(insns,
			asm.LoadMem(asm.R5, asm.R10, src+off, asm.DWord),
			asm.StoreMem(asm.R10, dst+off, asm.R5, asm.DWord))
	}
	return insns
}

// EndpointKey is a service endpoint as a packet from it shows it: source address (IPv4
// mapped into IPv6), source port (network byte order), protocol.
type EndpointKey struct {
	Addr  [16]byte
	Port  [2]byte
	Proto uint8
	_     uint8
}

func newEndpointMapSpec() *ebpf.MapSpec {
	return &ebpf.MapSpec{Name: "weft_svc_eps", Type: ebpf.Hash, KeySize: 20, ValueSize: 4, MaxEntries: 65536}
}

// sourceCheck lets a packet on only if its source address is a pod of this node whose
// host veth is the device it arrived on, and its source MAC that pod's: anything else
// (a spoofed source, but also IPv6 link-local neighbour discovery and ARP) goes to "pass",
// the kernel's path, where the anti-spoofing table judges it. R6 is the context.
func sourceCheck(m *ebpf.Map) asm.Instructions {
	insns := ethernet("", "pass")
	insns = append(insns, sourceKey(asm.R2, 0, "src", "src", "pass")...)
	insns = append(insns, asm.Instructions{
		asm.LoadMapPtr(asm.R1, m.FD()).WithSymbol("src"),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, -16),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.LoadMem(asm.R5, asm.R0, 0, asm.Word),
		asm.LoadMem(asm.R4, asm.R6, skbIfindex, asm.Word),
		asm.JNE.Reg(asm.R5, asm.R4, "pass"),
	}...)
	insns = append(insns, ethernet("", "pass")...)
	return append(insns, asm.Instructions{
		asm.LoadMem(asm.R5, asm.R2, 6, asm.Word),
		asm.LoadMem(asm.R4, asm.R0, 4, asm.Word),
		asm.JNE.Reg(asm.R5, asm.R4, "pass"),
		asm.LoadMem(asm.R5, asm.R2, 10, asm.Half),
		asm.LoadMem(asm.R4, asm.R0, 8, asm.Half),
		asm.JNE.Reg(asm.R5, asm.R4, "pass"),
		// The source is this veth's pod: note its policy flags for policyCheck.
		asm.LoadMem(asm.R5, asm.R0, 10, asm.Byte),
		asm.StoreMem(asm.R10, stackSrcFlags, asm.R5, asm.Byte),
		asm.StoreImm(asm.R10, stackSrcLocal, 1, asm.Byte),
	}...)
}

// ethernet loads the packet pointers from the context in R6 (R2 data, R3 data_end) and
// goes to miss unless an Ethernet header fits; the first instruction carries label (if
// any). Helper calls clobber R2-R5, so this follows each one before the packet is read.
func ethernet(label, miss string) asm.Instructions {
	first := asm.LoadMem(asm.R2, asm.R6, skbData, asm.Word)
	if label != "" {
		first = first.WithSymbol(label)
	}
	return asm.Instructions{
		first,
		asm.LoadMem(asm.R3, asm.R6, skbDataEnd, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 14),
		asm.JGT.Reg(asm.R4, asm.R3, miss),
	}
}

// count adds one to a counter. It clobbers R0-R5 (and the stack slot at r10-64).
func count(stats *ebpf.Map, stat int32, skip string) asm.Instructions {
	return asm.Instructions{
		asm.StoreImm(asm.R10, -64, int64(stat), asm.Word),
		asm.LoadMapPtr(asm.R1, stats.FD()),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, -64),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, skip),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
		asm.Add.Imm(asm.R1, 1),
		asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
	}
}

func newRemoteMapSpec() *ebpf.MapSpec {
	return &ebpf.MapSpec{Name: "weft_remote", Type: ebpf.LPMTrie, KeySize: 20, ValueSize: 24, MaxEntries: 4096, Flags: 1 /* BPF_F_NO_PREALLOC */}
}

// programSpec assembles the program. With tun set it is the uplink variant: VXLAN packets
// for a local pod are decapsulated in place first (see decapPrologue). With pod set it is
// the host veth variant: only what the pod sends from its own address and MAC is taken
// (see sourceCheck).
func programSpec(m, remote, stats, eps, pol *ebpf.Map, ct *ctKfuncs, tun *Tunnel, pod bool) *ebpf.ProgramSpec {
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.StoreImm(asm.R10, stackSrcFlags, 0, asm.Half), // and stackSrcLocal: not known
	}
	if tun != nil {
		insns = append(insns, decapPrologue(m, remote, stats, eps, ct, tun)...)
	}
	if pod {
		insns = append(insns, sourceCheck(m)...)
	}
	insns = append(insns, ethernet("plain", "pass")...)
	insns = append(insns, destKey(asm.R2, 0, "lookup", "lookup", "pass")...)
	podsOf := remote
	if pod {
		podsOf = nil // sourceCheck made sure the source is this veth's pod
	}
	insns = append(insns, endpointGate(eps, ct, podsOf, asm.R2, 0, "lookup", "pass")...)
	insns = append(insns, asm.Instructions{
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, -16),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "remote"),
		asm.Mov.Reg(asm.R7, asm.R0),
	}...)
	insns = append(insns, policyCheck(pol, "pass")...)
	insns = append(insns, count(stats, statLocal, "counted_local")...)
	// The helper calls clobbered the packet pointers: load and bound them again.
	insns = append(insns, ethernet("counted_local", "pass")...)
	insns = append(insns, asm.Instructions{
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
		// with bpf_redirect_neigh, past this node's routing and netfilter; not from a
		// policed pod (the kernel's path decides on its traffic with other nodes).
		asm.LoadMem(asm.R5, asm.R10, stackSrcFlags, asm.Byte).WithSymbol("remote"),
		asm.JNE.Imm(asm.R5, 0, "pass"),
		asm.Mov.Imm(asm.R5, 128),
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
		asm.Mov.Reg(asm.R7, asm.R0),
	}...)
	insns = append(insns, count(stats, statRemote, "counted_remote")...)
	insns = append(insns, asm.Instructions{
		// struct bpf_redir_neigh { u32 nh_family; union { be32 v4; u32 v6[4]; } } at r10-60
		asm.LoadMem(asm.R5, asm.R7, 4, asm.Word).WithSymbol("counted_remote"),
		asm.StoreMem(asm.R10, -60, asm.R5, asm.Word),
		asm.LoadMem(asm.R5, asm.R7, 8, asm.DWord),
		asm.StoreMem(asm.R10, -56, asm.R5, asm.DWord),
		asm.LoadMem(asm.R5, asm.R7, 16, asm.DWord),
		asm.StoreMem(asm.R10, -48, asm.R5, asm.DWord),
		asm.LoadMem(asm.R1, asm.R7, 0, asm.Word),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, -60),
		asm.Mov.Imm(asm.R3, 20),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnRedirectNeigh.Call(),
		asm.Return(),

		asm.Mov.Imm(asm.R0, tcActUnspec).WithSymbol("pass"),
		asm.Return(),
	}...)
	return &ebpf.ProgramSpec{Name: "weft_fastpath", Type: ebpf.SchedCLS, License: programLicense, Instructions: insns}
}

// Tunnel describes this node's VXLAN endpoint, for the uplink program to recognise the
// packets the kernel's VXLAN device would accept.
type Tunnel struct {
	Port    uint16
	VNI     uint32
	VTEPMAC net.HardwareAddr
}

// bpf_skb_adjust_room arguments.
const (
	adjRoomMAC       = 1
	adjRoomFixedGSO  = 1 << 0
	adjRoomDecapIPv4 = 1 << 7 // BPF_F_ADJ_ROOM_DECAP_L3_IPV4: the new L3 header is IPv4
	adjRoomDecapIPv6 = 1 << 8
)

// decapPrologue decapsulates, on the uplink's ingress, a VXLAN packet whose inner
// destination is a local pod, and hands it to the pod like the local path does. That skips
// the tunnel's whole receive side: the outer IP and UDP receive, the VXLAN device and its
// GRO cell, and a second pass through the stack. Only the common case is taken: an
// unfragmented outer IPv4 (no options) or IPv6 (no extension headers) packet addressed to
// this node's MAC, to the cluster's UDP port, with exactly the VNI and the VTEP MAC that
// the kernel's device would accept. Everything else, and any miss, continues at "plain"
// unmodified, so the kernel's device still takes it. The outer Ethernet header stays: its
// destination becomes the pod's MAC and its type the inner packet's.
//
// GSO aggregates are decapsulated too, with their segment size kept (FIXED_GSO), as
// Calico's eBPF dataplane does: leaving them to the kernel's device while single packets
// of the same flow take this path reorders the flow (measured: spurious retransmits and a
// throughput loss). Unlike the kernel's device, this kernel's helper cannot clear an
// aggregate's tunnel GSO flags (BPF_F_ADJ_ROOM_DECAP_L4_UDP comes in a later kernel);
// they matter only to a pod that forwards the aggregate out of a device that has to
// segment it in software.
//
// Registers kept across helper calls: R6 the context, R7 the pod's map value, R8 the
// decap flags (naming the inner family), R9 the number of bytes to strip.
func decapPrologue(m, remote, stats, eps *ebpf.Map, ct *ctKfuncs, tun *Tunnel) asm.Instructions {
	le16 := func(b []byte) int32 { return int32(binary.LittleEndian.Uint16(b)) }
	le32 := func(b []byte) int32 { return int32(binary.LittleEndian.Uint32(b)) }
	var port [2]byte
	binary.BigEndian.PutUint16(port[:], tun.Port)
	var vni [4]byte // VNI in the first three bytes, then a reserved zero byte
	binary.BigEndian.PutUint32(vni[:], tun.VNI<<8)
	mac := tun.VTEPMAC
	insns := asm.Instructions{
		asm.LoadMem(asm.R2, asm.R6, skbPktType, asm.Word),
		asm.JNE.Imm(asm.R2, 0, "plain"), // not PACKET_HOST
		asm.LoadMem(asm.R2, asm.R6, skbData, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, skbDataEnd, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 14),
		asm.JGT.Reg(asm.R4, asm.R3, "plain"),
		asm.LoadMem(asm.R5, asm.R2, 12, asm.Half),
		asm.JEq.Imm(asm.R5, ethPIPv4LE, "tun4"),
		asm.JEq.Imm(asm.R5, ethPIPv6LE, "tun6"),
		asm.Ja.Label("plain"),

		// Outer IPv4: 20 bytes, UDP, not a fragment.
		asm.Mov.Reg(asm.R4, asm.R2).WithSymbol("tun4"),
		asm.Add.Imm(asm.R4, 34),
		asm.JGT.Reg(asm.R4, asm.R3, "plain"),
		asm.LoadMem(asm.R5, asm.R2, 14, asm.Byte),
		asm.JNE.Imm(asm.R5, 0x45, "plain"),
		asm.LoadMem(asm.R5, asm.R2, 23, asm.Byte),
		asm.JNE.Imm(asm.R5, unix.IPPROTO_UDP, "plain"),
		asm.LoadMem(asm.R5, asm.R2, 20, asm.Half),
		asm.And.Imm(asm.R5, 0xff3f), // htons(IP_MF|IP_OFFSET)
		asm.JNE.Imm(asm.R5, 0, "plain"),
		asm.Mov.Imm(asm.R9, 20+8+8+14),
		asm.Mov.Reg(asm.R1, asm.R2),
		asm.Add.Imm(asm.R1, 34),
		asm.Ja.Label("udp"),

		// Outer IPv6: UDP right after the fixed header.
		asm.Mov.Reg(asm.R4, asm.R2).WithSymbol("tun6"),
		asm.Add.Imm(asm.R4, 54),
		asm.JGT.Reg(asm.R4, asm.R3, "plain"),
		asm.LoadMem(asm.R5, asm.R2, 20, asm.Byte),
		asm.JNE.Imm(asm.R5, unix.IPPROTO_UDP, "plain"),
		asm.Mov.Imm(asm.R9, 40+8+8+14),
		asm.Mov.Reg(asm.R1, asm.R2),
		asm.Add.Imm(asm.R1, 54),

		// R1: the UDP header; then 8 bytes of VXLAN header and the inner Ethernet header.
		asm.Mov.Reg(asm.R4, asm.R1).WithSymbol("udp"),
		asm.Add.Imm(asm.R4, 8+8+14),
		asm.JGT.Reg(asm.R4, asm.R3, "plain"),
		asm.LoadMem(asm.R5, asm.R1, 2, asm.Half),
		asm.JNE.Imm(asm.R5, le16(port[:]), "plain"),
		asm.LoadMem(asm.R5, asm.R1, 8, asm.Word),
		asm.JNE.Imm32(asm.R5, 0x08, "plain"), // flags: only "VNI valid"
		asm.LoadMem(asm.R5, asm.R1, 12, asm.Word),
		asm.JNE.Imm32(asm.R5, le32(vni[:]), "plain"),
		asm.LoadMem(asm.R5, asm.R1, 16, asm.Word),
		// 32-bit compares: a 64-bit one would sign-extend the immediate.
		asm.JNE.Imm32(asm.R5, le32(mac[0:4]), "plain"),
		asm.LoadMem(asm.R5, asm.R1, 20, asm.Half),
		asm.JNE.Imm(asm.R5, le16(mac[4:6]), "plain"),
	}
	insns = append(insns, destKey(asm.R1, 16, "in4", "in6", "plain")...)
	insns = append(insns, asm.Instructions{
		asm.Mov.Imm(asm.R8, adjRoomDecapIPv4|adjRoomFixedGSO).WithSymbol("in4"),
		asm.Ja.Label("tunlookup"),
		asm.Mov.Imm(asm.R8, adjRoomDecapIPv6|adjRoomFixedGSO).WithSymbol("in6"),
	}...)
	// A packet from or to a service endpoint's port stays in the tunnel if conntrack
	// holds its flow (or cannot be asked): the kernel's path, where conntrack sees both
	// directions (and reverses a DNAT).
	insns = append(insns, endpointGate(eps, ct, remote, asm.R1, 16, "tunlookup", "plain")...)
	insns = append(insns, asm.Instructions{
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, -16),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "plain"), // not a local pod: the VXLAN device takes it
		asm.LoadMem(asm.R5, asm.R0, 10, asm.Byte),
		asm.JNE.Imm(asm.R5, 0, "plain"), // a policed pod: so does it (policy.go)
		asm.Mov.Reg(asm.R7, asm.R0),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, 0),
		asm.Sub.Reg(asm.R2, asm.R9),
		asm.Mov.Imm(asm.R3, adjRoomMAC),
		asm.Mov.Reg(asm.R4, asm.R8),
		asm.FnSkbAdjustRoom.Call(),
		asm.JNE.Imm(asm.R0, 0, "pass"), // nothing was changed
	}...)
	insns = append(insns, count(stats, statDecap, "counted_decap")...)
	return append(insns, asm.Instructions{
		// The Ethernet type changes only when the families differ.
		asm.JEq.Imm(asm.R8, adjRoomDecapIPv4|adjRoomFixedGSO, "type4").WithSymbol("counted_decap"),
		asm.JEq.Imm(asm.R9, 40+8+8+14, "rewrite"),
		asm.Mov.Imm(asm.R5, ethPIPv6LE),
		asm.Ja.Label("settype"),
		asm.JEq.Imm(asm.R9, 20+8+8+14, "rewrite").WithSymbol("type4"),
		asm.Mov.Imm(asm.R5, ethPIPv4LE),
		asm.StoreMem(asm.R10, -24, asm.R5, asm.Half).WithSymbol("settype"),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, 12),
		asm.Mov.Reg(asm.R3, asm.R10),
		asm.Add.Imm(asm.R3, -24),
		asm.Mov.Imm(asm.R4, 2),
		asm.Mov.Imm(asm.R5, 0),
		asm.FnSkbStoreBytes.Call(),
		asm.JEq.Imm(asm.R0, 0, "rewrite"),
		asm.Mov.Imm(asm.R0, tcActShot), // a frame whose type lies must not go on
		asm.Return(),
	}...)
}
