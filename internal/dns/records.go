// Package dns builds the cluster domain's records from services and pods, with the
// semantics of the Kubernetes DNS specification (kubernetes/dns docs/specification.md),
// and answers queries from them. Pure: a snapshot in, answers out; the server, the
// forwarder and the cache wrap it. Records are rebuilt whole from the shared cache on a
// change (level-triggered) and swapped in; a query never touches the store.
package dns

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	mdns "github.com/miekg/dns"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/endpoints"
)

// Config is the served zone.
type Config struct {
	Domain string // the cluster domain, e.g. cluster.local
	TTL    uint32 // of every record; 0: 5 s
	// Reverse lists the networks whose PTR records are served (the cluster's pod and
	// service CIDRs); PTR questions outside them are not this zone's.
	Reverse []netip.Prefix
}

// ConfigFor is the zone of a cluster: its domain, and PTR records for its pod and service
// networks.
func ConfigFor(c v1.ClusterConfig) Config {
	return Config{Domain: c.Domain, TTL: uint32(c.DNSTTL), Reverse: append(append([]netip.Prefix(nil), c.ClusterCIDRs...), c.ServiceCIDRs...)}
}

// Records is one immutable snapshot of the zone.
type Records struct {
	cfg    Config
	zone   string               // "cluster.local."
	rrs    map[string][]mdns.RR // lower-case owner → its records, by type (each type's are one run)
	exists map[string]bool      // owners, and every name between them and the zone (empty non-terminals)
	soa    *mdns.SOA
	ns     *mdns.NS
	pack   packedAnswers // answers already packed once (packed.go)
}

// Build makes the zone's records from every service and pod of the cluster.
func Build(cfg Config, services []v1.Service, pods []v1.Pod) *Records {
	if cfg.TTL == 0 {
		cfg.TTL = 5
	}
	if cfg.Domain == "" {
		cfg.Domain = "cluster.local"
	}
	r := &Records{cfg: cfg, zone: mdns.Fqdn(strings.ToLower(cfg.Domain)), rrs: map[string][]mdns.RR{}, exists: map[string]bool{}}
	nsName := "ns.dns." + r.zone
	r.soa = &mdns.SOA{Hdr: r.hdr(r.zone, mdns.TypeSOA), Ns: nsName, Mbox: "hostmaster." + r.zone,
		Serial: 1, Refresh: 7200, Retry: 1800, Expire: 86400, Minttl: cfg.TTL}
	r.ns = &mdns.NS{Hdr: r.hdr(r.zone, mdns.TypeNS), Ns: nsName}
	r.add(r.soa)
	r.add(r.ns)
	for i := range services {
		r.service(&services[i], pods)
	}
	for _, p := range pods {
		if !p.Ready || p.Terminating || !validLabel(p.Namespace) {
			continue
		}
		for _, ip := range p.IPs {
			name := podLabel(ip) + "." + p.Namespace + ".pod." + r.zone
			r.addAddr(name, ip)
			r.addPTR(ip, name)
		}
	}
	return r
}

func (r *Records) hdr(name string, t uint16) mdns.RR_Header {
	return mdns.RR_Header{Name: name, Rrtype: t, Class: mdns.ClassINET, Ttl: r.cfg.TTL}
}

func (r *Records) service(s *v1.Service, pods []v1.Pod) {
	name := s.Name + "." + s.Namespace + ".svc." + r.zone
	r.exists[name] = true
	if !s.Headless() {
		for _, a := range s.ClusterIPs {
			r.addAddr(name, a)
			r.addPTR(a, name)
		}
		for _, p := range s.Ports {
			if p.Name == "" {
				continue
			}
			srv := "_" + p.Name + "._" + strings.ToLower(p.Protocol) + "." + name
			r.add(&mdns.SRV{Hdr: r.hdr(srv, mdns.TypeSRV), Priority: 0, Weight: 100, Port: uint16(p.Port), Target: name})
		}
		return
	}
	// Headless: the ready endpoints themselves, each also under its pod's name.
	ready := headlessEndpoints(s, pods)
	for _, e := range ready {
		r.addAddr(name, e.IP)
		if host := podName(e.Pod); validLabel(host) {
			hostName := host + "." + name
			r.addAddr(hostName, e.IP)
			r.addPTR(e.IP, hostName)
		}
	}
	for _, p := range s.Ports {
		if p.Name == "" {
			continue
		}
		srv := "_" + p.Name + "._" + strings.ToLower(p.Protocol) + "." + name
		for _, port := range endpoints.For(s, pods) {
			if port.Name != p.Name {
				continue
			}
			for _, e := range endpoints.Serving(port.Endpoints) {
				target := name
				if host := podName(e.Pod); validLabel(host) {
					target = host + "." + name
				}
				r.add(&mdns.SRV{Hdr: r.hdr(srv, mdns.TypeSRV), Priority: 0, Weight: 100, Port: uint16(e.Port), Target: target})
			}
		}
	}
}

// headlessEndpoints are the ready, not terminating, addresses of the pods a headless
// service selects (ports or none), or its endpoints listed by hand.
func headlessEndpoints(s *v1.Service, pods []v1.Pod) []v1.Endpoint {
	var out []v1.Endpoint
	seen := map[netip.Addr]bool{}
	for _, ap := range s.Endpoints {
		if !seen[ap.Addr()] {
			seen[ap.Addr()] = true
			out = append(out, v1.Endpoint{IP: ap.Addr().Unmap(), Port: int(ap.Port()), Ready: true})
		}
	}
	for _, p := range pods {
		if p.Namespace != s.Namespace || !s.Selects(p.Labels) || !p.Ready || p.Terminating {
			continue
		}
		for _, ip := range p.IPs {
			if !seen[ip] {
				seen[ip] = true
				out = append(out, v1.Endpoint{IP: ip, Pod: p.Namespace + "/" + p.Name, Ready: true})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].IP.Less(out[j].IP) })
	return out
}

// podName is the name part of "namespace/name".
func podName(ref string) string {
	_, name, _ := strings.Cut(ref, "/")
	return strings.ToLower(name)
}

// validLabel: a name usable as one DNS label (a pod or namespace name).
func validLabel(s string) bool { return v1.ValidName("label", s) == nil }

// podLabel is an address as a pod record's first label: 10-244-1-5, or for IPv6 the
// expanded address with dashes (fd00-0244-…).
func podLabel(ip netip.Addr) string {
	if ip.Is4() {
		return strings.ReplaceAll(ip.String(), ".", "-")
	}
	return strings.ReplaceAll(ip.StringExpanded(), ":", "-")
}

func (r *Records) addAddr(name string, ip netip.Addr) {
	if ip.Is4() {
		r.add(&mdns.A{Hdr: r.hdr(name, mdns.TypeA), A: ip.AsSlice()})
	} else {
		r.add(&mdns.AAAA{Hdr: r.hdr(name, mdns.TypeAAAA), AAAA: ip.AsSlice()})
	}
}

func (r *Records) addPTR(ip netip.Addr, target string) {
	if !r.inReverse(ip) {
		return
	}
	rev, err := mdns.ReverseAddr(ip.String())
	if err != nil {
		return
	}
	r.add(&mdns.PTR{Hdr: r.hdr(rev, mdns.TypePTR), Ptr: target})
}

func (r *Records) inReverse(ip netip.Addr) bool {
	for _, p := range r.cfg.Reverse {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// add files rr under its owner, once, and marks the owner and the names between it and
// its zone as existing.
func (r *Records) add(rr mdns.RR) {
	h := rr.Header()
	owner := strings.ToLower(h.Name)
	list := r.rrs[owner]
	at := len(list) // after the records of its type and of the types before
	for i, have := range list {
		if t := have.Header().Rrtype; t > h.Rrtype {
			at = i
			break
		} else if t == h.Rrtype && mdns.IsDuplicate(have, rr) {
			return
		}
	}
	r.rrs[owner] = slices.Insert(list, at, rr)
	for name := owner; name != "" && name != "."; {
		r.exists[name] = true
		if name == r.zone || strings.HasSuffix(name, ".arpa.") && strings.Count(name, ".") <= 2 {
			break
		}
		_, rest, ok := strings.Cut(name, ".")
		if !ok {
			break
		}
		name = rest
	}
}

// Ours reports whether name is in the served zone or one of its reverse networks.
func (r *Records) Ours(name string) bool {
	name = strings.ToLower(mdns.Fqdn(name))
	if name == r.zone || strings.HasSuffix(name, "."+r.zone) {
		return true
	}
	if !strings.HasSuffix(name, ".in-addr.arpa.") && !strings.HasSuffix(name, ".ip6.arpa.") {
		return false
	}
	ip, ok := reverseToAddr(name)
	return ok && r.inReverse(ip)
}

// reverseToAddr reads a full reverse name (4 IPv4 labels or 32 IPv6 nibbles).
func reverseToAddr(name string) (netip.Addr, bool) {
	labels := mdns.SplitDomainName(name)
	switch {
	case strings.HasSuffix(name, ".in-addr.arpa.") && len(labels) == 6:
		var b [4]byte
		for i := range 4 {
			var v int
			if _, err := fmt.Sscanf(labels[3-i], "%d", &v); err != nil || v < 0 || v > 255 {
				return netip.Addr{}, false
			}
			b[i] = byte(v)
		}
		return netip.AddrFrom4(b), true
	case strings.HasSuffix(name, ".ip6.arpa.") && len(labels) == 34:
		var b [16]byte
		for i := range 32 {
			var v int
			if _, err := fmt.Sscanf(labels[31-i], "%x", &v); err != nil || v < 0 || v > 15 || len(labels[31-i]) != 1 {
				return netip.Addr{}, false
			}
			b[i/2] |= byte(v) << (4 * (1 - i%2))
		}
		return netip.AddrFrom16(b), true
	}
	return netip.Addr{}, false
}

// Answer builds the authoritative answer to req's question, or returns false when the
// name is not this zone's (the caller forwards it). Names are matched without regard to
// case; the answer keeps the question's spelling.
func (r *Records) Answer(req *mdns.Msg) (*mdns.Msg, bool) {
	if len(req.Question) != 1 {
		m := new(mdns.Msg)
		m.SetRcode(req, mdns.RcodeFormatError)
		return m, true
	}
	q := req.Question[0]
	if !r.Ours(q.Name) {
		return nil, false
	}
	m := new(mdns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	m.RecursionAvailable = true
	if q.Qclass != mdns.ClassINET && q.Qclass != mdns.ClassANY {
		m.Rcode = mdns.RcodeRefused
		return m, true
	}
	owner := strings.ToLower(mdns.Fqdn(q.Name))
	list, has := r.rrs[owner]
	if !has && !r.exists[owner] {
		m.Rcode = mdns.RcodeNameError
		m.Ns = []mdns.RR{r.negativeSOA()}
		return m, true
	}
	var ans []mdns.RR
	switch q.Qtype {
	case mdns.TypeANY:
		ans = list
	default:
		ans = ofType(list, q.Qtype)
	}
	if len(ans) == 0 { // the name exists, not with this type: NODATA
		m.Ns = []mdns.RR{r.negativeSOA()}
		return m, true
	}
	if q.Name == owner { // the usual lower-case question: share the snapshot's records, never written
		m.Answer = ans[:len(ans):len(ans)]
		return m, true
	}
	m.Answer = make([]mdns.RR, 0, len(ans))
	for _, rr := range ans { // echo the question's case in the owner names
		c := mdns.Copy(rr)
		c.Header().Name = q.Name
		m.Answer = append(m.Answer, c)
	}
	return m, true
}

// negativeSOA is the zone's SOA for the authority section of a negative answer, with the
// TTL a resolver may cache the negative answer for.
func (r *Records) negativeSOA() mdns.RR {
	c := mdns.Copy(r.soa).(*mdns.SOA)
	c.Hdr.Ttl = min(r.soa.Hdr.Ttl, r.soa.Minttl)
	return c
}

// ofType is the run of an owner's records of type t.
func ofType(list []mdns.RR, t uint16) []mdns.RR {
	i := 0
	for i < len(list) && list[i].Header().Rrtype != t {
		i++
	}
	j := i
	for j < len(list) && list[j].Header().Rrtype == t {
		j++
	}
	return list[i:j]
}

// Names lists every owner name with its records as text (for `weft dns records`).
func (r *Records) Names() map[string][]string {
	out := map[string][]string{}
	for owner, list := range r.rrs {
		for _, rr := range list {
			out[owner] = append(out[owner], rr.String())
		}
	}
	return out
}
