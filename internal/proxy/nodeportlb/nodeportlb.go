// Package nodeportlb balances node ports consistently across nodes: a tc program on the
// underlay device's ingress (C in bpf/nodeport.c) picks a node port connection's backend
// with the service's Maglev table (internal/proxy/maglev) from a hash of the client's
// address and port, so whichever node a flow enters through, it reaches the same backend
// (a load balancer in front may move flows between nodes). The choice travels in the
// packet's mark (dataplane.MarkMaglev | index); the nftables proxy's node port rules DNAT
// to that backend, and conntrack undoes the translation on the way back. Packets it does
// not mark (no table yet, a backend count in flux) get the nftables proxy's random pick.
package nodeportlb

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/weftnet/weft/internal/bpffs"
	"github.com/weftnet/weft/internal/proxy"
	"github.com/weftnet/weft/internal/proxy/maglev"
)

// TableSize is the Maglev table size the program is built for (MAGLEV_SIZE).
const TableSize = maglev.DefaultSize

// Balancer is the loaded program, its maps, and what this weftd last wrote into them.
type Balancer struct {
	objs  nodeportObjects
	inner *ebpf.MapSpec // one Maglev table per service port
	dir   string

	ids     map[nodeportNpKey]uint32
	freeIDs []uint32
	nextID  uint32
	applied map[nodeportNpKey][]proxy.Backend // nil: unknown (just loaded)
	// addresses: service addresses get tables too (routers send clients to them when
	// fabric bgp announces them); a table is 64 KiB, so only then.
	addresses bool
}

// Load loads the program, adopting the maps an earlier weftd pinned in dir (in a bpffs of
// weftd's own, mounted if needed): across a restart the tables keep marking.
func Load(dir string) (*Balancer, error) {
	b := &Balancer{dir: dir, ids: map[nodeportNpKey]uint32{}}
	if err := bpffs.LoadPinned(dir, b.load); err != nil {
		return nil, fmt.Errorf("load node port balancer: %w", err)
	}
	var k nodeportNpKey
	var v nodeportNpVal
	it := b.objs.NpServices.Iterate()
	for it.Next(&k, &v) {
		b.ids[k] = v.Id
		b.nextID = max(b.nextID, v.Id+1)
	}
	if err := it.Err(); err != nil {
		b.objs.Close()
		return nil, err
	}
	used := map[uint32]bool{}
	for _, id := range b.ids {
		used[id] = true
	}
	for id := range b.nextID {
		if !used[id] {
			b.freeIDs = append(b.freeIDs, id)
		}
	}
	return b, nil
}

func (b *Balancer) load() error {
	spec, err := loadNodeport()
	if err != nil {
		return err
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinByName
	}
	b.inner = spec.Maps[nodeportMapNpMaglev].InnerMap.Copy()
	b.inner.Pinning = ebpf.PinNone
	return spec.LoadAndAssign(&b.objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: b.dir}})
}

// Close releases weftd's handles; the pinned link and maps keep working without it.
func (b *Balancer) Close() { b.objs.Close() }

// Attach puts the program first on the tcx ingress of the device with this index (the
// underlay), replacing an earlier weftd's in place. It returns ebpf.ErrNotSupported on
// kernels without tcx.
func (b *Balancer) Attach(ifindex int) error {
	pin := filepath.Join(b.dir, "link-"+strconv.Itoa(ifindex))
	if old, err := link.LoadPinnedLink(pin, nil); err == nil {
		info, ierr := old.Info()
		if ierr == nil && info.TCX() != nil && int(info.TCX().Ifindex) == ifindex {
			err := old.Update(b.objs.WeftNodeport)
			old.Close()
			return err
		}
		_ = old.Unpin()
		old.Close()
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: b.objs.WeftNodeport, Attach: ebpf.AttachTCXIngress, Anchor: link.Head()})
	if err != nil {
		return err
	}
	defer l.Close()
	return l.Pin(pin)
}

// Detach removes an earlier weftd's program and maps from dir (the proxy is nftables
// alone again).
func Detach(dir string) error {
	return bpffs.RemovePins(dir)
}

// BalanceAddresses makes Sync give service addresses their tables too, for clients that
// routers send to the nodes (fabric bgp announcing service ranges).
func (b *Balancer) BalanceAddresses() { b.addresses = true; b.applied = nil }

// balanced says whether the program may pick among backends for port: TCP and UDP without
// session affinity (whose nftables chain remembers clients itself), 1 to 65535 backends.
func balanced(p *proxy.Port, backends []proxy.Backend) bool {
	return p.Affinity == 0 && len(backends) > 0 && len(backends) <= 0xffff &&
		(p.Proto == proxy.ProtoTCP || p.Proto == proxy.ProtoUDP)
}

// Sync gives every balanced node port of want its Maglev table (indices in the order the
// nftables proxy numbers the port's node port backends) and forgets the others. A table
// is built whole and swapped in before the count that lets the program use it changes.
func (b *Balancer) Sync(want proxy.State) error {
	full := b.applied == nil
	if full {
		b.applied = map[nodeportNpKey][]proxy.Backend{}
	}
	next := map[nodeportNpKey]bool{}
	var errs []error
	want1 := func(k nodeportNpKey, backends []proxy.Backend) {
		next[k] = true
		if old, ok := b.applied[k]; ok && slices.Equal(old, backends) {
			return
		}
		if err := b.write(k, backends); err != nil {
			errs = append(errs, err)
			delete(b.applied, k)
			return
		}
		b.applied[k] = slices.Clone(backends)
	}
	for _, p := range want.Ports {
		if p.NodePort != 0 && balanced(p, p.NodePortBackends) {
			want1(keyOf(p, netip.Addr{}, p.NodePort), p.NodePortBackends)
		}
		if b.addresses && balanced(p, p.Backends) {
			want1(keyOf(p, p.VIP, p.Port), p.Backends)
		}
	}
	for k, id := range b.ids {
		if next[k] {
			continue
		}
		if err := b.objs.NpServices.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
		if err := b.objs.NpMaglev.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
		delete(b.ids, k)
		delete(b.applied, k)
		b.freeIDs = append(b.freeIDs, id)
	}
	if err := errors.Join(errs...); err != nil {
		b.applied = nil
		return err
	}
	return nil
}

func (b *Balancer) write(k nodeportNpKey, backends []proxy.Backend) error {
	id, ok := b.ids[k]
	if !ok {
		if n := len(b.freeIDs); n > 0 {
			id, b.freeIDs = b.freeIDs[n-1], b.freeIDs[:n-1]
		} else {
			id, b.nextID = b.nextID, b.nextID+1
		}
		b.ids[k] = id
		_ = b.objs.NpStats.Put(id, make([]uint64, ebpf.MustPossibleCPU()))
	}
	names := make([]string, len(backends))
	position := map[string]uint32{}
	for i, be := range backends {
		names[i] = be.String()
		if _, seen := position[names[i]]; !seen {
			position[names[i]] = uint32(i)
		}
	}
	slots, sorted, err := maglev.Table(names, TableSize)
	if err != nil {
		return err
	}
	values := make([]uint32, len(slots))
	keys := make([]uint32, len(slots))
	for s, i := range slots {
		keys[s], values[s] = uint32(s), position[sorted[i]]
	}
	table, err := ebpf.NewMap(b.inner)
	if err != nil {
		return fmt.Errorf("maglev table: %w", err)
	}
	defer table.Close() // the outer map holds it
	if _, err := table.BatchUpdate(keys, values, nil); err != nil {
		return fmt.Errorf("fill maglev table: %w", err)
	}
	if err := b.objs.NpMaglev.Put(id, table); err != nil {
		return fmt.Errorf("np_maglev: %w", err)
	}
	return b.objs.NpServices.Put(k, nodeportNpVal{Id: id, Backends: uint32(len(backends))})
}

// keyOf is the program's key for traffic to addr:port (addr invalid: a node port).
func keyOf(p *proxy.Port, addr netip.Addr, port uint16) nodeportNpKey {
	var be [2]byte
	binary.BigEndian.PutUint16(be[:], port)
	k := nodeportNpKey{Port: binary.NativeEndian.Uint16(be[:]), Proto: p.Proto, Family: 4}
	if p.Is6() {
		k.Family = 6
	}
	if addr.IsValid() {
		raw := addr.AsSlice() // 4 or 16 bytes, as in the packet
		for i := 0; i < len(raw); i += 4 {
			k.Addr[i/4] = binary.NativeEndian.Uint32(raw[i:])
		}
	}
	return k
}

// NodePort is one balanced node port (or service address) as the maps hold it.
type NodePort struct {
	Address  string `json:"address,omitempty"` // a service address; empty: a node port
	Port     uint16 `json:"port"`
	Protocol string `json:"protocol"`
	Family   string `json:"family"`
	Backends uint32 `json:"backends"`
	Marked   uint64 `json:"marked"` // packets whose backend the program chose
}

// Programmed reads the loaded maps.
func (b *Balancer) Programmed() ([]NodePort, error) {
	return programmed(b.objs.NpServices, b.objs.NpStats)
}

// ReadPinned reads the maps a weftd pinned in dir (for `weft service programmed`); no
// maps there: nil, the balancer is off.
func ReadPinned(dir string) ([]NodePort, error) {
	var maps []*ebpf.Map
	for _, name := range []string{nodeportMapNpServices, nodeportMapNpStats} {
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
	return programmed(maps[0], maps[1])
}

func programmed(services, stats *ebpf.Map) ([]NodePort, error) {
	out := []NodePort{}
	var k nodeportNpKey
	var v nodeportNpVal
	it := services.Iterate()
	for it.Next(&k, &v) {
		var port [2]byte
		binary.NativeEndian.PutUint16(port[:], k.Port)
		np := NodePort{Port: binary.BigEndian.Uint16(port[:]), Family: fmt.Sprintf("IPv%d", k.Family), Backends: v.Backends,
			Protocol: map[uint8]string{proxy.ProtoTCP: "TCP", proxy.ProtoUDP: "UDP"}[k.Proto]}
		if k.Addr != [4]uint32{} {
			var raw [16]byte
			for i, w := range k.Addr {
				binary.NativeEndian.PutUint32(raw[4*i:], w)
			}
			a := netip.AddrFrom16(raw)
			if k.Family == 4 {
				a = netip.AddrFrom4([4]byte(raw[:4]))
			}
			np.Address = a.String()
		}
		var per []uint64
		if err := stats.Lookup(v.Id, &per); err == nil {
			for _, c := range per {
				np.Marked += c
			}
		}
		out = append(out, np)
	}
	if err := it.Err(); err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b NodePort) int {
		if a.Port != b.Port {
			return int(a.Port) - int(b.Port)
		}
		return strings.Compare(a.Address+a.Protocol+a.Family, b.Address+b.Protocol+b.Family)
	})
	return out, nil
}
