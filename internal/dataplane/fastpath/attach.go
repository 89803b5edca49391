package fastpath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/bpffs"
)

// Two ways to put the program on a device's ingress:
//
//   - tcx (kernel 6.6+): a bpf_link per device, pinned in weftd's own bpffs so it outlives a
//     weftd restart. No qdisc is involved, so another plugin (the reference bandwidth
//     plugin's ingress qdisc, a firewall's clsact) can add its own beside it, and the
//     program's "no verdict" (TCX_NEXT) lets that qdisc's filters run after it.
//   - a cls_bpf filter on a clsact qdisc, the fallback where tcx is missing. Then weft's
//     qdisc occupies the ingress slot and other ingress qdiscs cannot be added.

// UseTCX makes the fast path attach with tcx, pinning its links in dir, a bpffs that is
// mounted there if it is not one already (one instance per weftd, so nodes of a lab never
// share pins; unmounting it detaches everything). Kernels without tcx fall back to clsact
// at the first attach.
func (f *Fastpath) UseTCX(dir string) error {
	if err := bpffs.Mount(dir); err != nil {
		return err
	}
	f.pinDir, f.tcx = dir, true
	return nil
}

// TCX says whether programs are attached with tcx (false: clsact filters).
func (f *Fastpath) TCX() bool { return f.tcx }

// progNamePrefix is how weft's programs are named in the kernel.
const progNamePrefix = "weft_fastpath"

// pinPath names the pin of the tcx link on the device with this index.
func (f *Fastpath) pinPath(ifindex int) string {
	return filepath.Join(f.pinDir, "tcx-ingress-"+strconv.Itoa(ifindex))
}

// Attach puts the program for role on link's ingress, replacing an older weft program in
// place, so the link is never without one once it had one.
func (f *Fastpath) Attach(h *netlink.Handle, l netlink.Link, role Role) error {
	if f.tcx {
		err := f.attachTCX(l.Attrs().Index, f.program(role))
		if !errors.Is(err, ebpf.ErrNotSupported) {
			if err == nil {
				removeLegacyFilter(h, l) // left by a weftd of an older version
			}
			return err
		}
		f.tcx = false // this kernel has no tcx: clsact from now on
	}
	return f.attachClsact(h, l, f.program(role))
}

func (f *Fastpath) attachTCX(ifindex int, prog *ebpf.Program) error {
	pin := f.pinPath(ifindex)
	if old, err := link.LoadPinnedLink(pin, nil); err == nil {
		info, ierr := old.Info()
		if ierr == nil && info.TCX() != nil && int(info.TCX().Ifindex) == ifindex {
			err := old.Update(prog) // atomic: the device never goes without a program
			old.Close()
			if err != nil {
				return fmt.Errorf("update tcx link on ifindex %d: %w", ifindex, err)
			}
			return nil
		}
		// Its device went away (a detached link reports ifindex 0): start afresh.
		_ = old.Unpin()
		old.Close()
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		if errors.Is(err, ebpf.ErrNotSupported) {
			return err
		}
		return fmt.Errorf("attach tcx on ifindex %d: %w", ifindex, err)
	}
	defer l.Close()
	if err := l.Pin(pin); err != nil {
		return fmt.Errorf("pin tcx link %s: %w", pin, err)
	}
	return nil
}

func (f *Fastpath) attachClsact(h *netlink.Handle, l netlink.Link, prog *ebpf.Program) error {
	idx := l.Attrs().Index
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := h.QdiscReplace(qdisc); err != nil {
		return fmt.Errorf("clsact on %s: %w", l.Attrs().Name, err)
	}
	filter := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: idx, Parent: netlink.HANDLE_MIN_INGRESS, Handle: netlink.MakeHandle(0, 1),
			Protocol: unix.ETH_P_ALL, Priority: 1,
		},
		Fd: prog.FD(), Name: FilterName, DirectAction: true,
	}
	if err := h.FilterReplace(filter); err != nil {
		return fmt.Errorf("attach fast path to %s: %w", l.Attrs().Name, err)
	}
	return nil
}

// Detach takes weft's program off link's ingress (a pod that another plugin shapes or
// filters leaves the fast path). Nothing attached is not an error.
func (f *Fastpath) Detach(h *netlink.Handle, l netlink.Link) error {
	if f.pinDir != "" {
		pin := f.pinPath(l.Attrs().Index)
		if old, err := link.LoadPinnedLink(pin, nil); err == nil {
			err := old.Unpin()
			old.Close() // the last reference: the kernel detaches it
			if err != nil {
				return fmt.Errorf("unpin %s: %w", pin, err)
			}
		}
	}
	removeLegacyFilter(h, l)
	return nil
}

// removeLegacyFilter deletes weft's cls_bpf filter from l, and the clsact qdisc with it
// when nothing else uses that qdisc.
func removeLegacyFilter(h *netlink.Handle, l netlink.Link) {
	filters, err := h.FilterList(l, netlink.HANDLE_MIN_INGRESS)
	if err != nil {
		return
	}
	others := 0
	for _, fl := range filters {
		if bf, ok := fl.(*netlink.BpfFilter); ok && bf.Name == FilterName {
			_ = h.FilterDel(fl)
			continue
		}
		others++
	}
	if egress, err := h.FilterList(l, netlink.HANDLE_MIN_EGRESS); err == nil {
		others += len(egress)
	}
	if others > 0 || len(filters) == 0 {
		return
	}
	_ = h.QdiscDel(&netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	})
}

// Attached reports whether link carries the program for role on ingress.
func (f *Fastpath) Attached(h *netlink.Handle, l netlink.Link, role Role) bool {
	info, err := f.program(role).Info()
	if err != nil {
		return false
	}
	id, _ := info.ID()
	if f.tcx {
		pinned, err := link.LoadPinnedLink(f.pinPath(l.Attrs().Index), nil)
		if err != nil {
			return false
		}
		defer pinned.Close()
		li, err := pinned.Info()
		return err == nil && li.Program == id && li.TCX() != nil && int(li.TCX().Ifindex) == l.Attrs().Index
	}
	filters, err := h.FilterList(l, netlink.HANDLE_MIN_INGRESS)
	if err != nil {
		return false
	}
	for _, fl := range filters {
		if bf, ok := fl.(*netlink.BpfFilter); ok && bf.Name == FilterName && bf.Id == int(id) {
			return true
		}
	}
	return false
}

// SweepPins unpins the tcx links of devices not in keep (their device is gone, or the
// device left the fast path), so pins never pile up.
func (f *Fastpath) SweepPins(keep map[int]bool) error {
	if f.pinDir == "" {
		return nil
	}
	ents, err := os.ReadDir(f.pinDir)
	if err != nil {
		return fmt.Errorf("read %s: %w", f.pinDir, err)
	}
	for _, e := range ents {
		idx, err := strconv.Atoi(strings.TrimPrefix(e.Name(), "tcx-ingress-"))
		if err != nil || !strings.HasPrefix(e.Name(), "tcx-ingress-") || keep[idx] {
			continue
		}
		if err := os.Remove(filepath.Join(f.pinDir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("unpin %s: %w", e.Name(), err)
		}
	}
	return nil
}

// ProgramOn returns the ID of weft's program on ifindex's ingress in the calling thread's
// network namespace, tcx or clsact, and whether there is one.
func ProgramOn(h *netlink.Handle, ifindex int) (ebpf.ProgramID, bool) {
	res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXIngress})
	if err == nil {
		for _, p := range res.Programs {
			prog, err := ebpf.NewProgramFromID(p.ID)
			if err != nil {
				continue
			}
			info, _ := prog.Info()
			prog.Close()
			if info != nil && strings.HasPrefix(info.Name, progNamePrefix) {
				return p.ID, true
			}
		}
	}
	l, err := h.LinkByIndex(ifindex)
	if err != nil {
		return 0, false
	}
	filters, _ := h.FilterList(l, netlink.HANDLE_MIN_INGRESS)
	for _, fl := range filters {
		if bf, ok := fl.(*netlink.BpfFilter); ok && bf.Name == FilterName {
			return ebpf.ProgramID(bf.Id), true
		}
	}
	return 0, false
}
