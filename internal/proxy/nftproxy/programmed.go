package nftproxy

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/google/nftables"

	"github.com/weftnet/weft/internal/dataplane"
	"github.com/weftnet/weft/internal/proxy"
)

// ProgrammedPort is one service address (or node port) as the kernel holds it.
type ProgrammedPort struct {
	Address  string   `json:"address"` // VIP:port, or :nodePort
	Protocol string   `json:"protocol"`
	NodePort bool     `json:"nodePort,omitempty"`
	Backends []string `json:"backends"`
	Verdict  string   `json:"verdict,omitempty"` // reject, drop, or the affinity chain
}

// Programmed reads what weft's service table in the calling thread's network namespace
// sends where: what the kernel has, not what the store says.
func Programmed() ([]ProgrammedPort, error) {
	c, err := nftables.New(nftables.WithSockOptions(bigBuffers))
	if err != nil {
		return nil, err
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: dataplane.TableServices}
	sets, err := c.GetSets(t)
	if err != nil {
		return nil, fmt.Errorf("table %s: %w", dataplane.TableServices, err)
	}
	ports := map[string]*ProgrammedPort{}
	get := func(addr, proto string, np bool) *ProgrammedPort {
		k := proto + " " + addr
		if ports[k] == nil {
			ports[k] = &ProgrammedPort{Address: addr, Protocol: proto, NodePort: np, Backends: []string{}}
		}
		return ports[k]
	}
	for _, s := range sets {
		kind, is6, ok := parseCountMap(s.Name)
		verdicts := strings.HasPrefix(s.Name, "no-endpoint") || strings.HasPrefix(s.Name, "affinity") || strings.HasPrefix(s.Name, "nodeports")
		if !ok && !verdicts {
			continue
		}
		els, err := c.GetSetElements(s)
		if err != nil {
			return nil, fmt.Errorf("set %s: %w", s.Name, err)
		}
		alen := 4
		if is6 || strings.HasSuffix(s.Name, "6") {
			alen = 16
		}
		for _, e := range els {
			var addr, proto string
			np := kind != "svc" && kind != "svcm" && kind != "svcp" && (ok || strings.Contains(s.Name, "nodeports"))
			k := e.Key
			if np {
				if len(k) < 8 {
					continue
				}
				proto, addr = protoName(k[0]), fmt.Sprintf(":%d", binary.BigEndian.Uint16(k[4:6]))
			} else {
				if len(k) < alen+8 {
					continue
				}
				ip, _ := netip.AddrFromSlice(k[:alen])
				proto, addr = protoName(k[alen]), netip.AddrPortFrom(ip, binary.BigEndian.Uint16(k[alen+4:alen+6])).String()
			}
			p := get(addr, proto, np)
			switch {
			case ok && len(e.Val) >= alen+2:
				ip, _ := netip.AddrFromSlice(e.Val[:alen])
				p.Backends = append(p.Backends, netip.AddrPortFrom(ip, binary.BigEndian.Uint16(e.Val[alen:alen+2])).String())
			case verdicts:
				p.Verdict = verdictOf(s.Name)
			}
		}
	}
	out := make([]ProgrammedPort, 0, len(ports))
	for _, p := range ports {
		sort.Strings(p.Backends)
		out = append(out, *p)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Address != out[j].Address {
			return out[i].Address < out[j].Address
		}
		return out[i].Protocol < out[j].Protocol
	})
	return out, nil
}

// ProgrammedEndpoints lists the backends the kernel's table sends connections to: what a
// restarting weftd tells its fast path to leave to conntrack before its own first sync.
func ProgrammedEndpoints() ([]proxy.Key, error) {
	ports, err := Programmed()
	if err != nil {
		return nil, err
	}
	seen := map[proxy.Key]bool{}
	var out []proxy.Key
	for _, p := range ports {
		proto := protoNumber(p.Protocol)
		for _, b := range p.Backends {
			ap, err := netip.ParseAddrPort(b)
			if err != nil || proto == 0 {
				continue
			}
			k := proxy.Key{IP: ap.Addr(), Proto: proto, Port: ap.Port()}
			if !seen[k] {
				seen[k] = true
				out = append(out, k)
			}
		}
	}
	return out, nil
}

// parseCountMap reads "svc4-n5" → ("svc", false).
func parseCountMap(name string) (kind string, is6, ok bool) {
	head, _, found := strings.Cut(name, "-n")
	if !found || len(head) < 2 {
		return "", false, false
	}
	kind, fam := head[:len(head)-1], head[len(head)-1]
	if (kind != "svc" && kind != "svcm" && kind != "svcp" && kind != "np" && kind != "npm") || (fam != '4' && fam != '6') {
		return "", false, false
	}
	return kind, fam == '6', true
}

func protoName(p byte) string {
	switch p {
	case 6:
		return "TCP"
	case 17:
		return "UDP"
	case 132:
		return "SCTP"
	}
	return fmt.Sprint(p)
}

func protoNumber(name string) uint8 {
	for _, p := range []byte{6, 17, 132} {
		if protoName(p) == name {
			return p
		}
	}
	return 0
}

// verdictOf says what a verdict map's elements do (the library does not decode verdicts).
func verdictOf(set string) string {
	switch {
	case strings.HasPrefix(set, "no-endpoint"):
		return "reject (no endpoints)"
	case strings.HasPrefix(set, "affinity"):
		return "ClientIP affinity (a chain per backend)"
	}
	return "drop (no local endpoints), or ClientIP affinity"
}
