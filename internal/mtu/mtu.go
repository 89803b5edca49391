// Package mtu computes pod MTUs from the underlay MTU and the encapsulation in use.
package mtu

import (
	"fmt"
	"sort"
	"strings"
)

// Overhead is the bytes an encapsulation adds, over an IPv4 and over an IPv6 underlay.
type Overhead struct{ V4, V6 int }

// Encapsulations weft knows, by name.
var Encapsulations = map[string]Overhead{
	"none":      {0, 0},
	"vxlan":     {50, 70}, // outer IP 20/40 + UDP 8 + VXLAN 8 + inner Ethernet 14
	"geneve":    {50, 70}, // as VXLAN, with no options
	"ipip":      {20, 40}, // outer IP only (IPv6 underlay: ip6ip6/ip4ip6)
	"wireguard": {60, 80}, // outer IP 20/40 + UDP 8 + WireGuard 32
}

// Names lists the encapsulations, sorted.
func Names() []string {
	var out []string
	for k := range Encapsulations {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Result is a computed pod MTU.
type Result struct {
	Device      string `json:"device"`
	UnderlayMTU int    `json:"underlayMTU"`
	Encap       string `json:"encap"`
	Overhead    int    `json:"overhead"`
	PodMTU      int    `json:"podMTU"`
}

// MinMTU is the smallest MTU an IPv6-capable link may have (RFC 8200); pods need IPv6.
const MinMTU = 1280

// PodMTU computes the pod MTU for an underlay.
func PodMTU(device string, underlay int, encap string, underlayV6 bool) (Result, error) {
	o, ok := Encapsulations[encap]
	if !ok {
		return Result{}, fmt.Errorf("unknown encapsulation %q (known: %s)", encap, strings.Join(Names(), ", "))
	}
	over := o.V4
	if underlayV6 {
		over = o.V6
	}
	if underlay < 68 || underlay > 65536 {
		return Result{}, fmt.Errorf("underlay MTU %d is outside 68..65536", underlay)
	}
	r := Result{Device: device, UnderlayMTU: underlay, Encap: encap, Overhead: over, PodMTU: underlay - over}
	if r.PodMTU < MinMTU {
		return r, fmt.Errorf("pod MTU %d (%d - %d for %s) is below %d, the minimum for IPv6", r.PodMTU, underlay, over, encap, MinMTU)
	}
	return r, nil
}
