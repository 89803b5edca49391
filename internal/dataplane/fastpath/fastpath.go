package fastpath

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// FilterName names weft's tc filter on host veths.
const FilterName = "weft_fastpath"

// Fastpath is the loaded programs and their maps of local pods and remote blocks.
type Fastpath struct {
	pods   *ebpf.Map
	remote *ebpf.Map
	stats  *ebpf.Map
	eps    *ebpf.Map // service endpoints: packets from them take the kernel's path
	policy *ebpf.Map // policed pods' rules (policy.go)
	// What eps and policy were last synced to.
	epsMirror    mirror[EndpointKey, uint32]
	policyMirror mirror[PolicyKey, PolicyValue]
	pod          *ebpf.Program // on host veths: prog, after checking the pod's source address and MAC
	prog         *ebpf.Program // on the VXLAN device
	uplink       *ebpf.Program // on the underlay device: prog, plus VXLAN decapsulation

	// NoConntrack says why the programs cannot ask conntrack whether a packet to or from
	// an endpoint's port belongs to a translated flow (conntrack.go); nil when they can.
	// Without it all such packets take the kernel's path.
	NoConntrack error

	// pinDir is a bpffs instance of this weftd's own where tcx links are pinned, so the
	// programs stay attached across a weftd restart. Empty: tcx is not used.
	pinDir string
	tcx    bool // tcx works here; false after ErrNotSupported: legacy clsact filters
}

// Load creates the maps and loads the programs. With tun set (a VXLAN fabric) the uplink
// program also decapsulates the tunnel's packets for local pods. It fails on kernels
// without bpf_redirect_peer (5.10+) or without the rights to load tc programs.
func Load(tun *Tunnel) (*Fastpath, error) {
	if tun != nil && len(tun.VTEPMAC) != 6 {
		return nil, fmt.Errorf("VTEP MAC %q is not an Ethernet address", tun.VTEPMAC)
	}
	m, err := ebpf.NewMap(newMapSpec())
	if err != nil {
		return nil, fmt.Errorf("create local pod map: %w", err)
	}
	r, err := ebpf.NewMap(newRemoteMapSpec())
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("create remote block map: %w", err)
	}
	st, err := ebpf.NewMap(newStatsMapSpec())
	if err != nil {
		m.Close()
		r.Close()
		return nil, fmt.Errorf("create stats map: %w", err)
	}
	eps, err := ebpf.NewMap(newEndpointMapSpec())
	if err != nil {
		m.Close()
		r.Close()
		st.Close()
		return nil, fmt.Errorf("create service endpoint map: %w", err)
	}
	pol, err := ebpf.NewMap(newPolicyMapSpec())
	if err != nil {
		m.Close()
		r.Close()
		st.Close()
		eps.Close()
		return nil, fmt.Errorf("create policy map: %w", err)
	}
	f := &Fastpath{pods: m, remote: r, stats: st, eps: eps, policy: pol}
	ct, err := findCtKfuncs()
	if err == nil {
		err = f.loadPrograms(ct, tun)
		ct.close()
	}
	if err != nil {
		// Without the conntrack lookup every endpoint packet takes the kernel's path.
		f.NoConntrack = err
		f.closePrograms()
		if err := f.loadPrograms(nil, tun); err != nil {
			f.Close()
			return nil, err
		}
	}
	return f, nil
}

func (f *Fastpath) loadPrograms(ct *ctKfuncs, tun *Tunnel) (err error) {
	if f.prog, err = loadProgram(programSpec(f.pods, f.remote, f.stats, f.eps, f.policy, ct, nil, false), ct); err != nil {
		return fmt.Errorf("load fast path program: %w", err)
	}
	if f.pod, err = loadProgram(programSpec(f.pods, f.remote, f.stats, f.eps, f.policy, ct, nil, true), ct); err != nil {
		return fmt.Errorf("load fast path pod program: %w", err)
	}
	f.uplink = f.prog
	if tun != nil {
		if f.uplink, err = loadProgram(programSpec(f.pods, f.remote, f.stats, f.eps, f.policy, ct, tun, false), ct); err != nil {
			return fmt.Errorf("load fast path uplink program: %w", err)
		}
	}
	return nil
}

func (f *Fastpath) closePrograms() {
	if f.uplink != nil && f.uplink != f.prog {
		f.uplink.Close()
	}
	if f.pod != nil {
		f.pod.Close()
	}
	if f.prog != nil {
		f.prog.Close()
	}
	f.uplink, f.pod, f.prog = nil, nil, nil
}

// Close releases weftd's handles; attached filters keep the programs (and maps) alive.
func (f *Fastpath) Close() {
	f.closePrograms()
	f.pods.Close()
	f.remote.Close()
	f.stats.Close()
	f.eps.Close()
	f.policy.Close()
}

// SyncPolicy makes the policy trie hold exactly want (PolicyEntries); a thousand entries
// take a system call each, so only what changed is written.
func (f *Fastpath) SyncPolicy(want map[PolicyKey]PolicyValue) error {
	return f.policyMirror.sync(f.policy, want)
}

// mirror remembers what a map was last synced to, so a sync writes only the difference;
// every verifyEvery-th sync reads the kernel's map again (someone may have changed it).
type mirror[K, V comparable] struct {
	written map[K]V
	syncs   int
}

func (mr *mirror[K, V]) sync(m *ebpf.Map, want map[K]V) error {
	mr.syncs++
	var err error
	if mr.written == nil || mr.syncs%verifyEvery == 0 {
		err = syncMap(m, want)
	} else {
		err = syncDiff(m, mr.written, want)
	}
	if err != nil {
		mr.written = nil // the next sync reads the map again
		return err
	}
	mr.written = maps.Clone(want)
	return nil
}

// EndpointKeyOf builds an endpoint map key.
func EndpointKeyOf(ip netip.Addr, proto uint8, port uint16) EndpointKey {
	k := EndpointKey{Addr: ip.As16(), Proto: proto}
	k.Port[0], k.Port[1] = byte(port>>8), byte(port)
	return k
}

// SyncEndpoints makes the service endpoint map hold exactly want. The service proxy calls
// it before it programs a DNAT to them, so no reply ever takes the short cut. With 10,000
// endpoints, rewriting the whole map cost a system call per entry on every service change.
func (f *Fastpath) SyncEndpoints(want map[EndpointKey]uint32) error {
	return f.epsMirror.sync(f.eps, want)
}

// verifyEvery is how often a mirrored sync compares with the kernel's map instead of its
// own record.
const verifyEvery = 64

// syncDiff takes m from had (what it holds) to want, touching only what differs.
func syncDiff[K, V comparable](m *ebpf.Map, had, want map[K]V) error {
	for k := range had {
		if _, ok := want[k]; !ok {
			if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return err
			}
		}
	}
	for k, v := range want {
		if old, ok := had[k]; !ok || old != v {
			if err := m.Put(k, v); err != nil {
				return fmt.Errorf("update map: %w", err)
			}
		}
	}
	return nil
}

// Counters are the packets each short cut took since Load, summed over CPUs.
type Counters struct {
	Local  uint64 // delivered into a pod on this node
	Remote uint64 // sent straight to another node's block
	Decap  uint64 // decapsulated from the tunnel into a pod
}

// Counters reads the programs' counters.
func (f *Fastpath) Counters() (Counters, error) {
	var sums [numStats]uint64
	for i := range sums {
		var perCPU []uint64
		if err := f.stats.Lookup(uint32(i), &perCPU); err != nil {
			return Counters{}, fmt.Errorf("read counters: %w", err)
		}
		for _, n := range perCPU {
			sums[i] += n
		}
	}
	return Counters{Local: sums[statLocal], Remote: sums[statRemote], Decap: sums[statDecap]}, nil
}

// KeyOf converts an address to a map key.
func KeyOf(a netip.Addr) Key { return Key(a.As16()) }

// ValueOf builds a map value for an unpoliced pod (set Flags for a policed one).
func ValueOf(hostIfindex int, podMAC net.HardwareAddr) Value {
	v := Value{HostIfindex: uint32(hostIfindex)}
	copy(v.PodMAC[:], podMAC)
	return v
}

// Sync makes the local pod map hold exactly want.
func (f *Fastpath) Sync(want map[Key]Value) error { return syncMap(f.pods, want) }

// syncMap makes m hold exactly want: stale keys deleted, wanted ones written.
func syncMap[K comparable, V any](m *ebpf.Map, want map[K]V) error {
	var stale []K
	var k K
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		if _, ok := want[k]; !ok {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read map: %w", err)
	}
	for _, k := range stale {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
	for k, v := range want {
		if err := m.Put(k, v); err != nil {
			return fmt.Errorf("update map: %w", err)
		}
	}
	return nil
}

// RemoteKeyOf converts a prefix to an LPM key (IPv4 mapped into IPv6).
func RemoteKeyOf(p netip.Prefix) RemoteKey {
	bits := p.Bits()
	if p.Addr().Is4() {
		bits += 96
	}
	return RemoteKey{PrefixLen: uint32(bits), Addr: p.Masked().Addr().As16()}
}

// RemoteValueOf builds a remote value.
func RemoteValueOf(ifindex int, nextHop netip.Addr) RemoteValue {
	v := RemoteValue{Ifindex: uint32(ifindex), Family: unix.AF_INET6}
	if nextHop.Is4() {
		v.Family = unix.AF_INET
		b := nextHop.As4()
		copy(v.NextHop[:], b[:])
	} else {
		v.NextHop = nextHop.As16()
	}
	return v
}

// SyncRemote makes the remote block map hold exactly want.
func (f *Fastpath) SyncRemote(want map[RemoteKey]RemoteValue) error { return syncMap(f.remote, want) }

// Role says which of the programs a device carries.
type Role int

const (
	RolePod    Role = iota // a pod's host veth: the pod's source is checked first
	RoleTunnel             // the VXLAN device
	RoleUplink             // the underlay device: VXLAN decapsulation first
)

func (f *Fastpath) program(r Role) *ebpf.Program {
	switch r {
	case RolePod:
		return f.pod
	case RoleUplink:
		return f.uplink
	}
	return f.prog
}
