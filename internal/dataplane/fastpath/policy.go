package fastpath

import (
	"net/netip"
	"slices"
	"sort"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/policy"
)

// Network policy on the fast path. A policed pod stays in the local pod map with the
// directions a policy selects it in (Value.Flags), and a TCP packet between two local
// pods takes the short cut only when the policies would allow it as a new connection and
// its reply as one: the test weft-policy's raw chain makes (nftpolicy), on the same
// compiled rules. Everything else of a policed pod (other protocols, other nodes, what
// the test refuses) goes to the kernel's path, where the raw chain decides again and
// conntrack and the forward chain enforce. A packet this program lets through is one the
// raw chain would leave untracked too, so the two never disagree about a connection.

// Value.Flags bits: the directions a policy selects the pod in.
const (
	FlagIngressPoliced = 1
	FlagEgressPoliced  = 2
)

// PolicyKey.Dir values.
const (
	DirIngress = 1
	DirEgress  = 2
)

// PolicyKey is an LPM trie key: a policed pod, one of its directions, and a prefix of
// peers (addresses IPv6, or IPv4 mapped into IPv6).
type PolicyKey struct {
	PrefixLen uint32
	Dir       uint8
	_         [3]byte
	Pod       [16]byte
	Peer      [16]byte
}

// maxPolicyRanges bounds the port ranges of one trie entry (the program checks them in
// turn). An entry that would need more is left out, which only sends its packets to the
// kernel's path.
const maxPolicyRanges = 8

// PortRange is an inclusive range of ports, in host byte order.
type PortRange struct{ First, Last uint16 }

// PolicyValue is the TCP port ranges an entry's peers are allowed on: its prefix's own
// and those of every shorter prefix of the same pod and direction that covers it, so the
// longest match answers for all of them.
type PolicyValue struct {
	N      uint32
	Ranges [maxPolicyRanges]PortRange
}

// policyKeyBits is a full-length lookup: direction and padding, pod, peer.
const policyKeyBits = 32 + 128 + 128

func newPolicyMapSpec() *ebpf.MapSpec {
	return &ebpf.MapSpec{Name: "weft_policy", Type: ebpf.LPMTrie, KeySize: 40, ValueSize: 36, MaxEntries: 65536, Flags: 1 /* BPF_F_NO_PREALLOC */}
}

// PolicyEntries compiles the policed pods' rules (by pod address) into trie entries.
// Only TCP is decided on the fast path, so only TCP ports and the peers allowed on every
// port count.
func PolicyEntries(pods map[netip.Addr]policy.PodRules) map[PolicyKey]PolicyValue {
	out := map[PolicyKey]PolicyValue{}
	for pod, rules := range pods {
		for _, d := range []struct {
			dir   uint8
			rules *policy.Rules
		}{{DirIngress, rules.Ingress}, {DirEgress, rules.Egress}} {
			if d.rules == nil {
				continue
			}
			for peer, ranges := range coveredRanges(d.rules) {
				if len(ranges) > maxPolicyRanges {
					continue
				}
				v := PolicyValue{N: uint32(len(ranges))}
				copy(v.Ranges[:], ranges)
				out[policyKey(d.dir, pod, peer)] = v
			}
		}
	}
	return out
}

// FlagsOf is a pod's Value.Flags.
func FlagsOf(r policy.PodRules) uint8 {
	var f uint8
	if r.Ingress != nil {
		f |= FlagIngressPoliced
	}
	if r.Egress != nil {
		f |= FlagEgressPoliced
	}
	return f
}

func policyKey(dir uint8, pod netip.Addr, peer netip.Prefix) PolicyKey {
	bits := peer.Bits()
	if peer.Addr().Is4() {
		bits += 96
	}
	return PolicyKey{PrefixLen: uint32(32 + 128 + bits), Dir: dir, Pod: pod.As16(), Peer: peer.Masked().Addr().As16()}
}

// coveredRanges gives each peer prefix of r the merged TCP port ranges of every prefix
// of r that contains it (itself included).
func coveredRanges(r *policy.Rules) map[netip.Prefix][]PortRange {
	own := map[netip.Prefix][]PortRange{}
	for _, p := range r.Any {
		own[p.Masked()] = append(own[p.Masked()], PortRange{0, 65535})
	}
	for _, pr := range r.Ports {
		if pr.Proto == "TCP" {
			own[pr.Peer.Masked()] = append(own[pr.Peer.Masked()], PortRange{uint16(pr.First), uint16(pr.Last)})
		}
	}
	out := make(map[netip.Prefix][]PortRange, len(own))
	for p := range own {
		// The prefixes covering p are its own shorter versions: at most 33 (129) lookups,
		// whatever the number of peers.
		var all []PortRange
		for bits := p.Bits(); bits >= 0; bits-- {
			q, _ := p.Addr().Prefix(bits)
			all = append(all, own[q]...)
		}
		out[p] = mergeRanges(all)
	}
	return out
}

func mergeRanges(rs []PortRange) []PortRange {
	sort.Slice(rs, func(i, j int) bool { return rs[i].First < rs[j].First })
	var out []PortRange
	for _, r := range rs {
		if n := len(out); n > 0 && int(r.First) <= int(out[n-1].Last)+1 {
			out[n-1].Last = max(out[n-1].Last, r.Last)
			continue
		}
		out = append(out, r)
	}
	return slices.Clip(out)
}

// Stack slots the policy check uses (below endpointPacket's keys at r10-112..-65):
// the source pod's flags and whether the source is a local pod at all, and the trie key.
const (
	stackSrcFlags = -120 // byte
	stackSrcLocal = -119 // byte: 1 when sourceCheck found the source to be this veth's pod
	stackPolicy   = -160 // PolicyKey, 40 bytes
)

// policyCheck lets a packet from a local pod to the local pod whose map value is in R7
// continue only if neither is policed, or it is TCP and every test of the policed
// directions passes; anything else goes to fail (the kernel's path). It runs after
// endpointPacket, which left the source (r10-88) and destination (r10-112) addresses,
// the source port (r10-72), the destination port (r10-96) and the protocol (r10-70, zero
// when it read no ports) on the stack. It clobbers R0-R5, R8 and R9.
func policyCheck(pol *ebpf.Map, fail string) asm.Instructions {
	insns := asm.Instructions{
		asm.LoadMem(asm.R8, asm.R7, 10, asm.Byte),             // the destination's flags
		asm.LoadMem(asm.R9, asm.R10, stackSrcFlags, asm.Byte), // the source's
		asm.Mov.Reg(asm.R5, asm.R8),
		asm.Or.Reg(asm.R5, asm.R9),
		asm.JEq.Imm(asm.R5, 0, "policy_ok"),
		asm.LoadMem(asm.R5, asm.R10, stackSrcLocal, asm.Byte),
		asm.JEq.Imm(asm.R5, 0, fail), // from another node, or not checked: the kernel decides
		asm.LoadMem(asm.R5, asm.R10, -70, asm.Byte),
		asm.JNE.Imm(asm.R5, unix.IPPROTO_TCP, fail),
	}
	const src, dst, sport, dport = -88, -112, -72, -96
	// The packet as a new connection: the source's egress to the destination, the
	// destination's ingress from the source, on the destination port; its reply as one:
	// the destination's egress to the source, the source's ingress from the destination,
	// on the source port.
	insns = append(insns, policyTest(pol, "pt1", asm.R9, FlagEgressPoliced, DirEgress, src, dst, dport, fail)...)
	insns = append(insns, policyTest(pol, "pt2", asm.R8, FlagIngressPoliced, DirIngress, dst, src, dport, fail)...)
	insns = append(insns, policyTest(pol, "pt3", asm.R8, FlagEgressPoliced, DirEgress, dst, src, sport, fail)...)
	insns = append(insns, policyTest(pol, "pt4", asm.R9, FlagIngressPoliced, DirIngress, src, dst, sport, fail)...)
	return append(insns, asm.Mov.Imm(asm.R0, 0).WithSymbol("policy_ok"))
}

// policyTest looks (dir, pod, peer) up in the trie if flags (a register) has flag, and
// goes to fail unless the entry found allows the port (a big-endian half word on the
// stack). pod, peer and port are stack offsets; name prefixes its labels.
func policyTest(pol *ebpf.Map, name string, flags asm.Register, flag int32, dir uint8, pod, peer, port int16, fail string) asm.Instructions {
	done := name + "_done"
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R5, flags),
		asm.And.Imm(asm.R5, flag),
		asm.JEq.Imm(asm.R5, 0, done),
		asm.StoreImm(asm.R10, stackPolicy, policyKeyBits, asm.Word),
		asm.StoreImm(asm.R10, stackPolicy+4, int64(dir), asm.Word),
	}
	insns = append(insns, stackCopy(stackPolicy+8, pod, 16)...)
	insns = append(insns, stackCopy(stackPolicy+24, peer, 16)...)
	insns = append(insns, asm.Instructions{
		asm.LoadMapPtr(asm.R1, pol.FD()),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, stackPolicy),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, fail),
		asm.LoadMem(asm.R4, asm.R10, port, asm.Half),
		asm.HostTo(asm.BE, asm.R4, asm.Half), // network to host order (a swap either way)
		asm.LoadMem(asm.R3, asm.R0, 0, asm.Word),
	}...)
	for i := range maxPolicyRanges {
		next := name + "_r" + string(rune('0'+i+1))
		first := asm.JLE.Imm(asm.R3, int32(i), fail) // no range left
		if i > 0 {
			first = first.WithSymbol(name + "_r" + string(rune('0'+i)))
		}
		insns = append(insns,
			first,
			asm.LoadMem(asm.R5, asm.R0, int16(4+4*i), asm.Half),
			asm.JGT.Reg(asm.R5, asm.R4, next),
			asm.LoadMem(asm.R5, asm.R0, int16(6+4*i), asm.Half),
			asm.JGE.Reg(asm.R5, asm.R4, done),
		)
	}
	return append(insns,
		asm.Ja.Label(fail).WithSymbol(name+"_r"+string(rune('0'+maxPolicyRanges))),
		asm.Mov.Imm(asm.R5, 0).WithSymbol(done),
	)
}
