package resources

import (
	"context"
	crand "crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"math/rand/v2"
	"net/netip"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/netcalc"
	"github.com/weftnet/weft/internal/store"
)

// CreateService validates svc, gives it its ClusterIPs (from serviceCIDRs: one per family
// asked for; a requested address is honoured or refused) and node ports (requested or
// picked from 30000-32767), and writes it, all in one transaction that claims every
// address and port by compare-and-swap. It returns the service as stored.
func (c Client) CreateService(ctx context.Context, svc v1.Service, serviceCIDRs []netip.Prefix) (v1.Service, error) {
	svc.Defaults()
	if err := svc.Validate(); err != nil {
		return v1.Service{}, err
	}
	families, err := familyCIDRs(svc, serviceCIDRs)
	if err != nil {
		return v1.Service{}, err
	}
	var requested netip.Addr
	if svc.ClusterIP != "" && !svc.Headless() {
		requested, _ = netip.ParseAddr(svc.ClusterIP)
		if !families[0].Contains(requested) {
			return v1.Service{}, fmt.Errorf("clusterIP %s: outside the service CIDR %s", requested, families[0])
		}
	}
	for attempt := 0; attempt < 64; attempt++ {
		out := svc
		out.ClusterIPs = nil
		out.Ports = append([]v1.ServicePort(nil), svc.Ports...)
		key := ServiceKey(svc.Namespace, svc.Name)
		owner := []byte(svc.Key())
		conds := []store.Cond{{Key: key}}
		var ops []store.Op
		if !svc.Headless() {
			for i, cidr := range families {
				a := requested
				if i > 0 || !a.IsValid() {
					a = randomServiceIP(cidr)
				}
				out.ClusterIPs = append(out.ClusterIPs, a)
				conds = append(conds, store.Cond{Key: serviceIPKey(a)})
				ops = append(ops, store.Op{Key: serviceIPKey(a), Value: owner})
			}
			out.ClusterIP = out.ClusterIPs[0].String()
		}
		taken := map[string]bool{}
		for i, p := range out.Ports {
			if out.Type != v1.ServiceTypeNodePort {
				break
			}
			if p.NodePort == 0 {
				p.NodePort = v1.NodePortMin + rand.IntN(v1.NodePortMax-v1.NodePortMin+1)
				out.Ports[i].NodePort = p.NodePort
			}
			k := nodePortKey(p.Protocol, p.NodePort)
			if taken[k] {
				if svc.Ports[i].NodePort != 0 {
					return v1.Service{}, fmt.Errorf("ports[%d].nodePort %d: used twice", i, p.NodePort)
				}
				continue // a random pick collided with another port of this service: next attempt
			}
			taken[k] = true
			conds = append(conds, store.Cond{Key: k})
			ops = append(ops, store.Op{Key: k, Value: owner})
		}
		b, err := json.Marshal(out)
		if err != nil {
			return v1.Service{}, err
		}
		ops = append(ops, store.Op{Key: key, Value: b})
		_, err = c.Store.Txn(ctx, conds, ops)
		if err == nil {
			return out, nil
		}
		if !errors.Is(err, store.ErrConflict) {
			return v1.Service{}, fmt.Errorf("create service %s: %w", svc.Key(), err)
		}
		// Which claim failed? A requested one is refused; a random pick is tried again.
		if _, err := c.Store.Get(ctx, key); err == nil {
			return v1.Service{}, fmt.Errorf("service %s: %w", svc.Key(), ErrExists)
		}
		if requested.IsValid() {
			if kv, err := c.Store.Get(ctx, serviceIPKey(requested)); err == nil {
				return v1.Service{}, fmt.Errorf("clusterIP %s: already allocated to service %s", requested, kv.Value)
			}
		}
		for i, p := range svc.Ports {
			if p.NodePort == 0 {
				continue
			}
			if kv, err := c.Store.Get(ctx, nodePortKey(p.Protocol, p.NodePort)); err == nil {
				return v1.Service{}, fmt.Errorf("ports[%d].nodePort %d: already allocated to service %s", i, p.NodePort, kv.Value)
			}
		}
	}
	return v1.Service{}, fmt.Errorf("service %s: no free address or node port found (service CIDRs %v nearly full?)", svc.Key(), serviceCIDRs)
}

// familyCIDRs picks the service CIDR of each family the service asks for, in order.
func familyCIDRs(svc v1.Service, cidrs []netip.Prefix) ([]netip.Prefix, error) {
	if svc.Headless() {
		return nil, nil
	}
	byFamily := map[string]netip.Prefix{}
	var order []string
	for _, p := range cidrs {
		f := "IPv4"
		if p.Addr().Is6() {
			f = "IPv6"
		}
		if _, ok := byFamily[f]; !ok {
			byFamily[f] = p.Masked()
			order = append(order, f)
		}
	}
	if len(order) == 0 {
		return nil, errors.New("the cluster has no service CIDR (weft cluster init --service-cidr)")
	}
	want := svc.IPFamilies
	if len(want) == 0 {
		want = order[:1]
		if svc.ClusterIP != "" {
			if a, err := netip.ParseAddr(svc.ClusterIP); err == nil && a.Is6() {
				want = []string{"IPv6"}
			} else {
				want = []string{"IPv4"}
			}
		}
	}
	out := make([]netip.Prefix, 0, len(want))
	for _, f := range want {
		p, ok := byFamily[f]
		if !ok {
			return nil, fmt.Errorf("ipFamilies: the cluster has no %s service CIDR", f)
		}
		out = append(out, p)
	}
	return out, nil
}

// randomServiceIP picks an address in cidr's upper band, as Kubernetes does: the lower
// band (the first 1/16, at least 16 and at most 256 addresses) stays for addresses asked
// for by name, such as the DNS service's 10th address. Network and broadcast are never
// picked.
func randomServiceIP(cidr netip.Prefix) netip.Addr {
	size := netcalc.Size(cidr) // addresses in the range
	low := new(big.Int).Rsh(size, 4)
	low = bigClamp(low, 16, 256)
	span := new(big.Int).Sub(size, low)
	span.Sub(span, big.NewInt(1)) // not the last (broadcast) address
	if span.Sign() <= 0 {
		low, span = big.NewInt(1), new(big.Int).Sub(size, big.NewInt(2))
	}
	off, err := crand.Int(crand.Reader, span)
	if err != nil {
		off = big.NewInt(0)
	}
	off.Add(off, low)
	a, _ := netcalc.AddBig(cidr.Masked().Addr(), off)
	return a
}

func bigClamp(v *big.Int, lo, hi int64) *big.Int {
	if v.Cmp(big.NewInt(lo)) < 0 {
		return big.NewInt(lo)
	}
	if v.Cmp(big.NewInt(hi)) > 0 {
		return big.NewInt(hi)
	}
	return v
}

// DNSService is who the cluster DNS addresses belong to in the store.
const DNSService = "kube-system/kube-dns"

// DNSAddrs are the cluster DNS addresses: the 10th address of each service CIDR, as in
// Kubernetes. Every node answers them itself (weftd binds them to its loopback).
func DNSAddrs(serviceCIDRs []netip.Prefix) []netip.Addr {
	var out []netip.Addr
	for _, p := range serviceCIDRs {
		if a, ok := netcalc.Add(p.Masked().Addr(), 10); ok && p.Contains(a) {
			out = append(out, a)
		}
	}
	return out
}

// DNSClaims are the store writes that reserve the cluster DNS addresses, so no service is
// given one (part of `weft cluster init`'s transaction).
func DNSClaims(serviceCIDRs []netip.Prefix) []store.Op {
	var ops []store.Op
	for _, a := range DNSAddrs(serviceCIDRs) {
		ops = append(ops, store.Op{Key: serviceIPKey(a), Value: []byte(DNSService)})
	}
	return ops
}
