// Package sockproxy is weft's socket-level service load balancer: eBPF programs on the
// cgroup socket hooks (connect, sendmsg, recvmsg, getpeername; C in bpf/sock.c) point a
// pod's connection to a service address at one of its endpoints when the socket connects,
// so no packet of it is NATed; the application still sees the service address as its
// peer. It sits in front of the nftables proxy, which keeps everything sockets cannot see
// (node ports, traffic from outside the node) and anything the maps do not list yet.
//
// The programs hang on the cgroup v2 root, shared with every process of the host; they
// touch only sockets whose network namespace is in this weftd's pod list (by netns
// cookie), so neither the host's own processes nor another lab node's pods are translated.
package sockproxy

import (
	"bufio"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/weftnet/weft/internal/bpffs"
	"github.com/weftnet/weft/internal/proxy"
)

// Proxy is the loaded programs and maps, and what this weftd last wrote into them.
type Proxy struct {
	objs sockObjects
	dir  string // bpffs directory holding the pinned maps and links

	ids     map[sockSvcKey]uint32 // service port → its id (index of backends and stats)
	freeIDs []uint32
	nextID  uint32
	applied map[sockSvcKey]*applied // nil: unknown (just loaded), the next Sync writes all
	gen     uint64                  // Sync's pass, marking what it still wants
	pods    map[uint64]bool         // netns cookies in pod_netns
}

type applied struct {
	val      sockSvcVal
	backends []sockAddrPort
	from     []proxy.Backend // what backends was made of: compared as is, cheaply
	service  string          // namespace/name, for counters
	gen      uint64
}

const svcAffinity = 1 // SVC_AFFINITY in bpf/sock.c

// Load loads the programs, adopting the maps an earlier weftd pinned in dir (a bpffs
// instance of this weftd's own, mounted if needed) so that a restart keeps every
// translation and reverse mapping in place. Maps of an incompatible layout (an upgrade)
// are replaced.
func Load(dir string) (*Proxy, error) {
	p := &Proxy{dir: dir, ids: map[sockSvcKey]uint32{}, pods: map[uint64]bool{}}
	if err := bpffs.LoadPinned(dir, p.load); err != nil {
		return nil, fmt.Errorf("load socket load balancer: %w", err)
	}
	if err := p.adopt(); err != nil {
		p.objs.Close()
		return nil, err
	}
	return p, nil
}

func (p *Proxy) load() error {
	spec, err := loadSock()
	if err != nil {
		return err
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinByName
	}
	return spec.LoadAndAssign(&p.objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: p.dir}})
}

// adopt takes over the service ids of the pinned maps, so a restart rewrites each service
// in place instead of renumbering it.
func (p *Proxy) adopt() error {
	var k sockSvcKey
	var v sockSvcVal
	it := p.objs.Services.Iterate()
	for it.Next(&k, &v) {
		p.ids[k] = v.Id
		if v.Id >= p.nextID {
			p.nextID = v.Id + 1
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read pinned services: %w", err)
	}
	used := map[uint32]bool{}
	for _, id := range p.ids {
		used[id] = true
	}
	for id := uint32(0); id < p.nextID; id++ {
		if !used[id] {
			p.freeIDs = append(p.freeIDs, id)
		}
	}
	var cookie uint64
	var one uint8
	pit := p.objs.PodNetns.Iterate()
	for pit.Next(&cookie, &one) {
		p.pods[cookie] = true
	}
	return pit.Err()
}

// Close releases weftd's handles; the pinned links and maps keep working without it.
func (p *Proxy) Close() { p.objs.Close() }

// hooks lists each program with the cgroup hook it belongs on.
func (p *Proxy) hooks() []struct {
	name   string
	prog   *ebpf.Program
	attach ebpf.AttachType
} {
	o := &p.objs
	return []struct {
		name   string
		prog   *ebpf.Program
		attach ebpf.AttachType
	}{
		{"connect4", o.WeftConnect4, ebpf.AttachCGroupInet4Connect},
		{"connect6", o.WeftConnect6, ebpf.AttachCGroupInet6Connect},
		{"sendmsg4", o.WeftSendmsg4, ebpf.AttachCGroupUDP4Sendmsg},
		{"sendmsg6", o.WeftSendmsg6, ebpf.AttachCGroupUDP6Sendmsg},
		{"recvmsg4", o.WeftRecvmsg4, ebpf.AttachCGroupUDP4Recvmsg},
		{"recvmsg6", o.WeftRecvmsg6, ebpf.AttachCGroupUDP6Recvmsg},
		{"getpeername4", o.WeftGetpeername4, ebpf.AttachCgroupInet4GetPeername},
		{"getpeername6", o.WeftGetpeername6, ebpf.AttachCgroupInet6GetPeername},
	}
}

// Attach puts the programs on the cgroup at cgroupDir (a cgroup v2 directory), replacing
// an earlier weftd's programs in place: a hook is never without one once it had one. The
// links are pinned, so they outlive weftd; unmounting the bpffs detaches them.
func (p *Proxy) Attach(cgroupDir string) error {
	for _, h := range p.hooks() {
		pin := filepath.Join(p.dir, "link-"+h.name)
		if old, err := link.LoadPinnedLink(pin, nil); err == nil {
			err := old.Update(h.prog)
			old.Close()
			if err == nil {
				continue
			}
			_ = os.Remove(pin)
		}
		l, err := link.AttachCgroup(link.CgroupOptions{Path: cgroupDir, Attach: h.attach, Program: h.prog})
		if err != nil {
			return fmt.Errorf("attach %s to cgroup %s: %w", h.name, cgroupDir, err)
		}
		err = l.Pin(pin)
		l.Close()
		if err != nil {
			return fmt.Errorf("pin %s: %w", pin, err)
		}
	}
	return nil
}

// Detach removes the programs and maps (the proxy switched back to nftables alone).
func Detach(dir string) error {
	return bpffs.RemovePins(dir)
}

// CgroupRoot finds the root of the host's cgroup v2 hierarchy in the mount table.
func CgroupRoot() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent maj:min root mountpoint options [optional...] - fstype source super
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+1 >= len(fields) || len(fields) < 5 {
			continue
		}
		if fields[sep+1] == "cgroup2" && fields[3] == "/" {
			return fields[4], nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", errors.New("no cgroup v2 hierarchy is mounted")
}

// Sync programs the service addresses of want and the pods (by netns cookie) whose
// sockets are translated. New pods and new backends are written before the services
// that send to them; a shrinking service lowers its count before its slots go. Only what
// changed since the last Sync is written: at 10,000 services a one-endpoint change costs
// one comparison per service and a few map writes.
func (p *Proxy) Sync(want proxy.State, pods map[uint64]bool) error {
	for c := range pods {
		if !p.pods[c] {
			if err := p.objs.PodNetns.Put(c, uint8(1)); err != nil {
				return fmt.Errorf("pod_netns: %w", err)
			}
			p.pods[c] = true
		}
	}
	full := p.applied == nil
	if full {
		p.applied = map[sockSvcKey]*applied{}
	}
	p.gen++
	var errs []error
	for _, port := range want.Ports {
		if port.Proto != proxy.ProtoTCP && port.Proto != proxy.ProtoUDP {
			continue // the hooks see TCP and UDP sockets; SCTP stays with nftables
		}
		if port.LoadBalancer {
			// Only pods' sockets come here: they reach a load balancer address through
			// the service's internal backends (kube-proxy's short-circuit).
			pod := *port
			pod.Backends, pod.DropIfEmpty = port.PodBackends, false
			port = &pod
		}
		k := svcKeyOf(port.VIP, port.Proto, port.Port)
		old := p.applied[k]
		if old != nil && old.matches(port) {
			old.gen = p.gen
			continue
		}
		a := appliedOf(port)
		a.gen = p.gen
		id, ok := p.ids[k]
		if !ok {
			id = p.newID()
			p.ids[k] = id
			_ = p.objs.Stats.Put(id, make([]sockCounters, ebpf.MustPossibleCPU())) // a reused id starts at zero
		}
		a.val.Id = id
		var prev applied
		if old != nil {
			prev = *old
		}
		if err := p.writeService(k, a, prev); err != nil {
			errs = append(errs, err)
			continue
		}
		p.applied[k] = &a
	}
	for k, a := range p.applied {
		if a.gen != p.gen {
			errs = append(errs, p.removeService(k), p.deleteSlots(a.val.Id, 0, len(a.backends)))
			delete(p.applied, k)
		}
	}
	if full {
		// Services an earlier weftd left that nobody wants now, and their slots.
		for k := range p.ids {
			if _, ok := p.applied[k]; !ok {
				errs = append(errs, p.removeService(k))
			}
		}
		errs = append(errs, p.sweepBackends())
	}
	for c := range p.pods {
		if !pods[c] {
			if err := p.objs.PodNetns.Delete(c); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, err)
			}
			delete(p.pods, c)
		}
	}
	if err := errors.Join(errs...); err != nil {
		p.applied = nil // the next Sync writes everything again
		return err
	}
	return nil
}

func appliedOf(port *proxy.Port) applied {
	a := applied{service: port.Service, backends: make([]sockAddrPort, 0, len(port.Backends)), from: slices.Clone(port.Backends)}
	for _, b := range port.Backends {
		a.backends = append(a.backends, addrPortOf(b.IP, b.Port))
	}
	a.val.Count = uint16(min(len(a.backends), 1<<16-1))
	if port.Affinity > 0 {
		a.val.Flags = svcAffinity
		a.val.Timeout = uint32(port.Affinity / time.Second)
	}
	return a
}

// matches says whether port would be written as a is (without allocating).
func (a *applied) matches(port *proxy.Port) bool {
	var flags uint16
	var timeout uint32
	if port.Affinity > 0 {
		flags, timeout = svcAffinity, uint32(port.Affinity/time.Second)
	}
	if a.service != port.Service || a.val.Flags != flags || a.val.Timeout != timeout || len(a.backends) != len(port.Backends) {
		return false
	}
	return slices.Equal(a.from, port.Backends)
}

// removeService deletes k's entry (its connects stop being translated) and frees its id.
func (p *Proxy) removeService(k sockSvcKey) error {
	err := p.objs.Services.Delete(k)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		err = nil
	}
	if id, ok := p.ids[k]; ok {
		delete(p.ids, k)
		p.freeIDs = append(p.freeIDs, id)
	}
	return err
}

func (p *Proxy) newID() uint32 {
	if n := len(p.freeIDs); n > 0 {
		id := p.freeIDs[n-1]
		p.freeIDs = p.freeIDs[:n-1]
		return id
	}
	p.nextID++
	return p.nextID - 1
}

// writeService writes a's backends and then its entry; slots beyond a's count that old
// used are deleted after the entry stopped naming them.
func (p *Proxy) writeService(k sockSvcKey, a, old applied) error {
	for i, b := range a.backends[:a.val.Count] {
		if err := p.objs.Backends.Put(sockBackendKey{Id: a.val.Id, Slot: uint32(i)}, b); err != nil {
			return fmt.Errorf("backends: %w", err)
		}
	}
	if err := p.objs.Services.Put(k, a.val); err != nil {
		return fmt.Errorf("services: %w", err)
	}
	return p.deleteSlots(a.val.Id, int(a.val.Count), len(old.backends))
}

func (p *Proxy) deleteSlots(id uint32, from, to int) error {
	for i := from; i < to; i++ {
		if err := p.objs.Backends.Delete(sockBackendKey{Id: id, Slot: uint32(i)}); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("backends: %w", err)
		}
	}
	return nil
}

// sweepBackends deletes every slot no applied service uses.
func (p *Proxy) sweepBackends() error {
	count := map[uint32]uint32{}
	for _, a := range p.applied {
		count[a.val.Id] = uint32(a.val.Count)
	}
	var stale []sockBackendKey
	var k sockBackendKey
	var v sockAddrPort
	it := p.objs.Backends.Iterate()
	for it.Next(&k, &v) {
		if n, ok := count[k.Id]; !ok || k.Slot >= n {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return err
	}
	for _, k := range stale {
		if err := p.objs.Backends.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
	return nil
}

// addrWords lays an address out as the programs read it: IPv4 as IPv4-mapped IPv6, in
// network byte order.
func addrWords(ip netip.Addr) [4]uint32 {
	b := ip.As16()
	var w [4]uint32
	for i := range w {
		w[i] = nativeWord(b[4*i : 4*i+4])
	}
	return w
}

func svcKeyOf(ip netip.Addr, proto uint8, port uint16) sockSvcKey {
	return sockSvcKey{Addr: addrWords(ip), Port: netPort(port), Proto: proto}
}

func addrPortOf(ip netip.Addr, port uint16) sockAddrPort {
	return sockAddrPort{Addr: addrWords(ip), Port: netPort(port)}
}

// ServicePort is one programmed service address with its backends and counters, read
// back from the maps.
type ServicePort struct {
	Service    string   `json:"service,omitempty"`
	Address    string   `json:"address"`
	Protocol   string   `json:"protocol"`
	Backends   []string `json:"backends"`
	Translated uint64   `json:"translated"`
	Refused    uint64   `json:"refused"`
}

// Programmed reads the maps (not weftd's memory): what the kernel translates now.
func (p *Proxy) Programmed() ([]ServicePort, error) {
	out, err := programmed(p.objs.Services, p.objs.Backends, p.objs.Stats)
	if err != nil {
		return nil, err
	}
	names := map[sockSvcKey]string{}
	for k, a := range p.applied {
		names[k] = a.service
	}
	for i := range out {
		ap := netip.MustParseAddrPort(out[i].Address)
		out[i].Service = names[svcKeyOf(ap.Addr(), map[string]uint8{"TCP": proxy.ProtoTCP, "UDP": proxy.ProtoUDP}[out[i].Protocol], ap.Port())]
	}
	return out, nil
}

// ReadPinned reads the maps a weftd pinned in dir (for `weft service programmed`); no
// maps there: nil, the socket load balancer is off.
func ReadPinned(dir string) ([]ServicePort, error) {
	var maps []*ebpf.Map
	for _, name := range []string{sockMapServices, sockMapBackends, sockMapStats} {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), &ebpf.LoadPinOptions{ReadOnly: true})
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		defer m.Close()
		maps = append(maps, m)
	}
	return programmed(maps[0], maps[1], maps[2])
}

func programmed(services, backends, stats *ebpf.Map) ([]ServicePort, error) {
	out := []ServicePort{}
	var k sockSvcKey
	var v sockSvcVal
	it := services.Iterate()
	for it.Next(&k, &v) {
		sp := ServicePort{Address: netip.AddrPortFrom(wordsAddr(k.Addr), hostPort(k.Port)).String(),
			Protocol: map[uint8]string{proxy.ProtoTCP: "TCP", proxy.ProtoUDP: "UDP"}[k.Proto], Backends: []string{}}
		for i := uint16(0); i < v.Count; i++ {
			var b sockAddrPort
			if err := backends.Lookup(sockBackendKey{Id: v.Id, Slot: uint32(i)}, &b); err == nil {
				sp.Backends = append(sp.Backends, netip.AddrPortFrom(wordsAddr(b.Addr), hostPort(b.Port)).String())
			}
		}
		var per []sockCounters
		if err := stats.Lookup(v.Id, &per); err == nil {
			for _, c := range per {
				sp.Translated += c.Translated
				sp.Refused += c.Refused
			}
		}
		out = append(out, sp)
	}
	if err := it.Err(); err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Address != out[j].Address {
			return out[i].Address < out[j].Address
		}
		return out[i].Protocol < out[j].Protocol
	})
	return out, nil
}

func wordsAddr(w [4]uint32) netip.Addr {
	var b [16]byte
	for i, x := range w {
		putNativeWord(b[4*i:4*i+4], x)
	}
	return netip.AddrFrom16(b).Unmap()
}
