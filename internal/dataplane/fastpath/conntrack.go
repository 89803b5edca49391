package fastpath

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"runtime"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"
)

// Asking conntrack. A packet from or to a service endpoint's port may belong to a
// connection the service proxy translated: its reply must go through conntrack, which
// reverses the DNAT. But most such packets belong to connections made straight to the pod,
// which need nothing from the kernel. The programs tell them apart by asking conntrack
// itself (the bpf_skb_ct_lookup kfunc): a packet whose flow conntrack holds, in either
// direction, takes the kernel's path; one it does not hold takes the short cut. Both
// directions of a flow get the same answer on every node, so a flow is either tracked
// from its first packet or never: the short cut never creates an entry, and an entry only
// appears through the kernel's path.
//
// A second lookup, with the tuple reversed, keeps a new connection off the short cut
// while conntrack holds an older one whose reply looks the same: a closed connection
// through a service, in TIME_WAIT, from the same client port to the same backend. The
// kernel's path then gives the new connection another source port (nf_nat's clash
// handling), where the short cut would send its replies into the old entry's DNAT. Only a
// connection's first packet needs it (a TCP SYN; every UDP datagram, which has no first):
// once the SYN is on the kernel's path, the flow is tracked and the first lookup answers
// for the rest.
//
// The kfuncs are callable only from programs with a GPL-compatible license: the fast
// path's programs are dual-licensed BSD/GPL, like weft's other kernel programs (sockproxy,
// nodeportlb). Where the kernel has no such kfunc (before 5.18, no BTF, conntrack not
// loaded), the programs are built without the lookup and every endpoint packet takes the
// kernel's path, as before. Only "no such flow" (-ENOENT) counts as untracked: a kernel
// that refuses the call (an older bpf_ct_opts size, say) returns NULL with another error,
// or none, and the packet takes the kernel's path.

// programLicense is the license the kernel sees for the fast path's programs.
const programLicense = "Dual BSD/GPL"

// Stack slots of the lookup (below policy.go's).
const (
	stackFamily     = -168 // byte: 4 or 6, written by endpointPacket
	stackTCPFlags   = -167 // byte: a TCP packet's flags (0xff: not read), from endpointPacket
	stackCtOpts     = -184 // struct bpf_ct_opts, 16 bytes
	stackCtTuple    = -224 // struct bpf_sock_tuple, 12 (IPv4) or 36 (IPv6) bytes
	stackSrcTrieKey = -252 // RemoteKey of the source, 20 bytes, its address 8-aligned (endpointGate)
)

// enoent is -ENOENT as bpf_ct_opts.error holds it: the lookup ran and found nothing.
const enoent = -2

// ctKfuncs locates bpf_skb_ct_lookup and bpf_ct_release in the kernel's BTF.
type ctKfuncs struct {
	lookup, release btf.TypeID
	// module holds nf_conntrack's BTF when the kfuncs live there (a modular conntrack);
	// nil when they are in vmlinux.
	module *btf.Handle
}

// findCtKfuncs finds the conntrack kfuncs, in vmlinux or in the nf_conntrack module.
func findCtKfuncs() (*ctKfuncs, error) {
	kernel, err := btf.LoadKernelSpec()
	if err != nil {
		return nil, fmt.Errorf("kernel BTF: %w", err)
	}
	if k, err := kfuncIDs(kernel); err == nil {
		return k, nil
	}
	mod, err := btf.LoadKernelModuleSpec("nf_conntrack")
	if err != nil {
		return nil, fmt.Errorf("nf_conntrack BTF: %w", err)
	}
	k, err := kfuncIDs(mod)
	if err != nil {
		return nil, err
	}
	if k.module, err = btf.FindHandle(func(info *btf.HandleInfo) bool {
		return info.IsModule() && info.Name == "nf_conntrack"
	}); err != nil {
		return nil, fmt.Errorf("nf_conntrack BTF handle: %w", err)
	}
	return k, nil
}

func kfuncIDs(spec *btf.Spec) (*ctKfuncs, error) {
	var k ctKfuncs
	for name, id := range map[string]*btf.TypeID{"bpf_skb_ct_lookup": &k.lookup, "bpf_ct_release": &k.release} {
		var fn *btf.Func
		if err := spec.TypeByName(name, &fn); err != nil {
			return nil, fmt.Errorf("kfunc %s: %w", name, err)
		}
		var err error
		if *id, err = spec.TypeID(fn); err != nil {
			return nil, err
		}
	}
	return &k, nil
}

func (k *ctKfuncs) close() {
	if k != nil && k.module != nil {
		k.module.Close()
	}
}

// call is a kfunc call instruction: in a module, Offset indexes the program's fd_array
// (slot 1 holds the module's BTF; see loadProgram).
func (k *ctKfuncs) call(id btf.TypeID) asm.Instruction {
	ins := asm.Instruction{
		OpCode:   asm.OpCode(asm.JumpClass).SetJumpOp(asm.Call),
		Src:      asm.PseudoKfuncCall,
		Constant: int64(id),
	}
	if k.module != nil {
		ins.Offset = 1
	}
	return ins
}

// ctCheck goes on to untracked only if conntrack holds no flow for the packet
// endpointPacket read (TCP or UDP; addresses, ports, protocol and TCP flags on the stack),
// looked up as it is and, for a connection's first packet, reversed; anything else (a flow
// it holds, another protocol, a failed lookup) goes to tracked. The first instruction
// carries label entry. R6 is the context; it clobbers R0-R5.
func ctCheck(k *ctKfuncs, entry, tracked, untracked string) asm.Instructions {
	p := entry + "_ct"
	insns := asm.Instructions{
		asm.LoadMem(asm.R5, asm.R10, -70, asm.Byte).WithSymbol(entry), // the protocol
		asm.JEq.Imm(asm.R5, unix.IPPROTO_TCP, p+"_fwd"),
		asm.JNE.Imm(asm.R5, unix.IPPROTO_UDP, tracked),
	}
	insns = append(insns, ctLookup(k, p+"_fwd", false, tracked)...)
	insns = append(insns,
		asm.LoadMem(asm.R5, asm.R10, -70, asm.Byte),
		asm.JNE.Imm(asm.R5, unix.IPPROTO_TCP, p+"_rev"),
		asm.LoadMem(asm.R5, asm.R10, stackTCPFlags, asm.Byte),
		asm.JEq.Imm(asm.R5, 0xff, p+"_rev"),  // flags not read: ask as for a SYN
		asm.And.Imm(asm.R5, 0x12),            // SYN|ACK
		asm.JNE.Imm(asm.R5, 0x02, untracked), // not a SYN: the first lookup answered
	)
	insns = append(insns, ctLookup(k, p+"_rev", true, tracked)...)
	return append(insns, asm.Ja.Label(untracked))
}

// ctLookup asks conntrack for the packet's flow (reversed: for the flow its reply would
// start) and goes to tracked unless the answer is "no such flow".
func ctLookup(k *ctKfuncs, label string, reversed bool, tracked string) asm.Instructions {
	// Offsets of the source and destination address, port in endpointPacket's keys.
	src4, src6, sport := int16(-76), int16(-88), int16(-72)
	dst4, dst6, dport := int16(-100), int16(-112), int16(-96)
	if reversed {
		src4, src6, sport, dst4, dst6, dport = dst4, dst6, dport, src4, src6, sport
	}
	t := int16(stackCtTuple)
	insns := asm.Instructions{
		// struct bpf_ct_opts: netns_id BPF_F_CURRENT_NETNS, error out, l4proto, the rest 0.
		asm.Mov.Imm(asm.R5, 0).WithSymbol(label),
		asm.StoreMem(asm.R10, stackCtOpts, asm.R5, asm.DWord),
		asm.StoreMem(asm.R10, stackCtOpts+8, asm.R5, asm.DWord),
		asm.StoreImm(asm.R10, stackCtOpts, -1, asm.Word),
		asm.LoadMem(asm.R5, asm.R10, -70, asm.Byte),
		asm.StoreMem(asm.R10, stackCtOpts+8, asm.R5, asm.Byte),

		// struct bpf_sock_tuple: saddr, daddr, sport, dport, for the family.
		asm.LoadMem(asm.R5, asm.R10, stackFamily, asm.Byte),
		asm.JEq.Imm(asm.R5, 6, label+"_6"),
		asm.LoadMem(asm.R5, asm.R10, src4, asm.Word),
		asm.StoreMem(asm.R10, t, asm.R5, asm.Word),
		asm.LoadMem(asm.R5, asm.R10, dst4, asm.Word),
		asm.StoreMem(asm.R10, t+4, asm.R5, asm.Word),
		asm.LoadMem(asm.R5, asm.R10, sport, asm.Half),
		asm.StoreMem(asm.R10, t+8, asm.R5, asm.Half),
		asm.LoadMem(asm.R5, asm.R10, dport, asm.Half),
		asm.StoreMem(asm.R10, t+10, asm.R5, asm.Half),
		asm.Mov.Imm(asm.R3, 12),
		asm.Ja.Label(label + "_call"),
	}
	v6 := append(stackCopy(t, src6, 16), stackCopy(t+16, dst6, 16)...)
	v6[0] = v6[0].WithSymbol(label + "_6")
	insns = append(insns, v6...)
	return append(insns, asm.Instructions{
		asm.LoadMem(asm.R5, asm.R10, sport, asm.Half),
		asm.StoreMem(asm.R10, t+32, asm.R5, asm.Half),
		asm.LoadMem(asm.R5, asm.R10, dport, asm.Half),
		asm.StoreMem(asm.R10, t+34, asm.R5, asm.Half),
		asm.Mov.Imm(asm.R3, 36),

		asm.Mov.Reg(asm.R1, asm.R6).WithSymbol(label + "_call"),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, int32(t)),
		asm.Mov.Reg(asm.R4, asm.R10),
		asm.Add.Imm(asm.R4, stackCtOpts),
		asm.Mov.Imm(asm.R5, 16),
		k.call(k.lookup),
		asm.JEq.Imm(asm.R0, 0, label+"_none"),
		asm.Mov.Reg(asm.R1, asm.R0), // conntrack holds it: let go of the reference
		k.call(k.release),
		asm.Ja.Label(tracked),
		asm.LoadMem(asm.R5, asm.R10, stackCtOpts+4, asm.Word).WithSymbol(label + "_none"),
		asm.JNE.Imm32(asm.R5, enoent, tracked),
	}...)
}

// loadProgram loads spec. A program that calls the conntrack kfuncs in a module is loaded
// here with the module's BTF in its fd_array, which cilium/ebpf fills only for programs it
// reads from an ELF object; every other one through cilium/ebpf.
func loadProgram(spec *ebpf.ProgramSpec, k *ctKfuncs) (*ebpf.Program, error) {
	if k == nil || k.module == nil {
		return ebpf.NewProgram(spec)
	}
	return loadRaw(spec, []int32{int32(k.module.FD()), int32(k.module.FD())})
}

// loadRaw loads spec with the BPF_PROG_LOAD system call itself, with fdArray.
func loadRaw(spec *ebpf.ProgramSpec, fdArray []int32) (*ebpf.Program, error) {
	var code bytes.Buffer
	if err := spec.Instructions.Marshal(&code, nativeOrder()); err != nil {
		return nil, err
	}
	license := append([]byte(spec.License), 0)
	attr := progLoadAttr{
		ProgType: uint32(spec.Type),
		InsnCnt:  uint32(code.Len() / asm.InstructionSize),
		Insns:    uint64(uintptr(unsafe.Pointer(&code.Bytes()[0]))),
		License:  uint64(uintptr(unsafe.Pointer(&license[0]))),
	}
	if len(fdArray) > 0 {
		attr.FdArray = uint64(uintptr(unsafe.Pointer(&fdArray[0])))
	}
	copy(attr.ProgName[:15], spec.Name)
	fd, err := bpfProgLoad(&attr)
	if err != nil {
		// Again with the verifier's log, to say why.
		log := make([]byte, 1<<20)
		attr.LogLevel, attr.LogSize = 1, uint32(len(log))
		attr.LogBuf = uint64(uintptr(unsafe.Pointer(&log[0])))
		if _, err2 := bpfProgLoad(&attr); err2 != nil {
			if i := bytes.IndexByte(log, 0); i >= 0 {
				log = log[:i]
			}
			err = fmt.Errorf("%w: %s", err, lastLines(log, 5))
		}
		runtime.KeepAlive(log)
	}
	runtime.KeepAlive(code.Bytes())
	runtime.KeepAlive(license)
	runtime.KeepAlive(fdArray)
	if err != nil {
		return nil, fmt.Errorf("load program %s: %w", spec.Name, err)
	}
	return ebpf.NewProgramFromFD(fd)
}

// nativeOrder is the host's byte order, as cilium/ebpf's asm names it (it does not take
// binary.NativeEndian).
func nativeOrder() binary.ByteOrder {
	x := uint16(1)
	if *(*byte)(unsafe.Pointer(&x)) == 1 {
		return binary.LittleEndian
	}
	return binary.BigEndian
}

// progLoadAttr is union bpf_attr's BPF_PROG_LOAD part, up to fd_array.
type progLoadAttr struct {
	ProgType           uint32
	InsnCnt            uint32
	Insns              uint64
	License            uint64
	LogLevel           uint32
	LogSize            uint32
	LogBuf             uint64
	KernVersion        uint32
	ProgFlags          uint32
	ProgName           [16]byte
	ProgIfindex        uint32
	ExpectedAttachType uint32
	ProgBTFFd          uint32
	FuncInfoRecSize    uint32
	FuncInfo           uint64
	FuncInfoCnt        uint32
	LineInfoRecSize    uint32
	LineInfo           uint64
	LineInfoCnt        uint32
	AttachBTFID        uint32
	AttachProgFd       uint32
	CoreReloCnt        uint32
	FdArray            uint64
}

func bpfProgLoad(attr *progLoadAttr) (int, error) {
	for {
		fd, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_LOAD, uintptr(unsafe.Pointer(attr)), unsafe.Sizeof(*attr))
		switch {
		case errno == unix.EAGAIN || errno == unix.EINTR:
			continue // the verifier was interrupted
		case errno != 0:
			return -1, errno
		}
		return int(fd), nil
	}
}

func lastLines(b []byte, n int) string {
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("; ")))
}
