package cni

import (
	"github.com/weftnet/weft/internal/cniapi"
	"net"
	"net/netip"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/weftnet/weft/internal/config"
	"github.com/weftnet/weft/internal/ipam"
	"github.com/weftnet/weft/internal/podnet"
)

func buildResult(conf *config.NetConf, alloc []ipam.IPConfig, res podnet.Result, ptp bool) *current.Result {
	if ptp {
		alloc = podAddrs(conf, alloc)
	}
	r := &current.Result{CNIVersion: current.ImplementedSpecVersion}
	if res.Bridge != nil {
		r.Interfaces = append(r.Interfaces, &current.Interface{Name: res.Bridge.Name, Mac: res.Bridge.MAC})
	}
	r.Interfaces = append(r.Interfaces,
		&current.Interface{Name: res.Host.Name, Mac: res.Host.MAC},
		&current.Interface{Name: res.Pod.Name, Mac: res.Pod.MAC, Sandbox: res.Pod.Sandbox},
	)
	podIdx := len(r.Interfaces) - 1
	for _, ip := range alloc {
		c := &current.IPConfig{Interface: current.Int(podIdx), Address: *ipNet(ip.Address)}
		if conf.Mode == config.ModeBridge && ip.Gateway.IsValid() {
			c.Gateway = ip.Gateway.AsSlice()
		}
		r.IPs = append(r.IPs, c)
	}
	for _, rt := range res.Routes {
		r.Routes = append(r.Routes, &types.Route{Dst: *ipNet(rt.Dst), GW: rt.GW.AsSlice()})
	}
	r.DNS = resultDNS(conf)
	return r
}

// clusterDNS is the default dns of a pod on a node that serves the cluster domain: the
// node's DNS addresses and Kubernetes' search path for the pod's namespace.
func clusterDNS(node *cniapi.NodeContract, namespace string) types.DNS {
	if node == nil || len(node.DNSServers) == 0 || node.DNSDomain == "" {
		return types.DNS{}
	}
	if namespace == "" {
		namespace = "default"
	}
	d := types.DNS{Search: []string{namespace + ".svc." + node.DNSDomain, "svc." + node.DNSDomain, node.DNSDomain}, Options: []string{"ndots:5"}}
	for _, a := range node.DNSServers {
		d.Nameservers = append(d.Nameservers, a.String())
	}
	return d
}

// resultDNS merges the config's dns with the runtime's dns capability; the runtime wins.
func resultDNS(conf *config.NetConf) types.DNS {
	dns := conf.DNS
	if d := conf.RuntimeConfig.DNS; d != nil {
		if len(d.Servers) > 0 {
			dns.Nameservers = d.Servers
		}
		if len(d.Searches) > 0 {
			dns.Search = d.Searches
		}
		if len(d.Options) > 0 {
			dns.Options = d.Options
		}
		if d.Domain != "" {
			dns.Domain = d.Domain
		}
	}
	return dns
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// fromIPNet converts a result address back to a prefix.
func fromIPNet(n net.IPNet) netip.Prefix {
	a, _ := netip.AddrFromSlice(n.IP)
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones)
}

// allocFromResult reads the addresses of an IPAM plugin's result.
func allocFromResult(r *current.Result) []ipam.IPConfig {
	var out []ipam.IPConfig
	for _, ip := range r.IPs {
		c := ipam.IPConfig{Address: fromIPNet(ip.Address)}
		if g, ok := netip.AddrFromSlice(ip.Gateway); ok {
			c.Gateway = g.Unmap()
		}
		out = append(out, c)
	}
	return out
}
