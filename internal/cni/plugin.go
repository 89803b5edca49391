// Package cni implements weft-cni's verbs: it composes config parsing, the agent's IPAM
// (or a delegated IPAM plugin) and pod plumbing, and turns every failure into a CNI error
// code a runtime can act on.
package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/types/create"
	"github.com/vishvananda/netlink"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/cniapi"
	"github.com/weftnet/weft/internal/config"
	"github.com/weftnet/weft/internal/ipam"
	"github.com/weftnet/weft/internal/podnet"
)

// Plugin holds what the verbs share.
type Plugin struct {
	// Self is the name the plugin was invoked as; a config whose top-level type is another
	// plugin and whose ipam.type is Self means weft-cni runs as that plugin's IPAM.
	Self string
}

// Funcs wires the verbs for skel.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, GC: p.GC, Status: p.Status}
}

// Add attaches a pod. Address allocation (a round trip to weftd, or a delegated IPAM
// plugin) runs concurrently with link creation, which needs no address; both are undone if
// either fails.
func (p *Plugin) Add(args *skel.CmdArgs) error {
	if p.isIPAMCall(args.StdinData) {
		return p.ipamAdd(args)
	}
	pt := newPhaseTimer()
	defer pt.done("ADD")
	conf, err := config.Parse(args.StdinData)
	if err != nil {
		return err
	}
	pt.mark("parse")
	env := envArgs(args.Args)
	static, err := staticAddrs(conf, env)
	if err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	}
	var mac []byte
	if m := conf.RuntimeConfig.Mac; m != "" {
		mac, _ = parseMAC(m) // validated by config.Parse
	} else if m := env["MAC"]; m != "" {
		if mac, err = parseMAC(m); err != nil {
			return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("CNI_ARGS MAC %q is not a MAC address", m), "")
		}
	}
	node, contractErr := readContract(conf)
	weftIPAM := conf.IsWeftIPAM(p.Self)
	if weftIPAM && contractErr != nil {
		return contractErr
	}
	mtu := podMTU(conf, node)

	ipamDone := make(chan ipamOutcome, 1)
	go func() { ipamDone <- p.runIPAM(conf, args, env, static, weftIPAM) }()

	spec := podnet.Spec{
		Network: conf.Name, ContainerID: args.ContainerID, IfName: args.IfName, Netns: args.Netns,
		PTP: conf.Mode == config.ModePTP, Bridge: conf.Bridge, MTU: mtu, MAC: mac,
	}
	pending, linkErr := podnet.Link(nodeHandle(), spec)
	pt.mark("link")
	got := <-ipamDone
	pt.mark("ipam-wait")
	if linkErr != nil || got.err != nil {
		if got.err == nil {
			got.release()
		}
		if pending != nil { // Link returns nil on error, so only a good link is undone here
			pending.Abort()
			pending.Close()
		}
		if got.err != nil {
			return got.err
		}
		return types.NewError(types.ErrTryAgainLater, "create pod interface: "+linkErr.Error(), "")
	}
	defer pending.Close()

	addrs := podAddrs(conf, got.addrs)
	prefixes, gateways := splitAddrs(addrs)
	res, err := pending.Configure(prefixes, gateways, routesFor(conf, addrs))
	pt.mark("configure")
	if err != nil {
		pending.Abort()
		got.release()
		return types.NewError(types.ErrTryAgainLater, "configure pod interface: "+err.Error(), "")
	}
	defer pt.mark("print")
	result := buildResult(conf, got.addrs, res, conf.Mode == config.ModePTP)
	if len(result.DNS.Nameservers) == 0 && len(result.DNS.Search) == 0 {
		result.DNS = clusterDNS(node, env["K8S_POD_NAMESPACE"])
	}
	return types.PrintResult(result, conf.CNIVersion)
}

// ipamOutcome is what address allocation produced, and how to undo it.
type ipamOutcome struct {
	addrs   []ipam.IPConfig
	release func()
	err     error
}

func (p *Plugin) runIPAM(conf *config.NetConf, args *skel.CmdArgs, env map[string]string, static []netip.Addr, weftIPAM bool) ipamOutcome {
	if !weftIPAM {
		if len(conf.RuntimeConfig.PortMappings) > 0 {
			return ipamOutcome{err: types.NewError(types.ErrInvalidNetworkConfig, "portMappings are published by weftd and need weft's IPAM; with ipam "+conf.IPAM.Type+", chain the portmap plugin instead", "")}
		}
		r, err := delegate(conf, args, "ADD")
		if err != nil {
			return ipamOutcome{err: err}
		}
		return ipamOutcome{addrs: allocFromResult(r), release: func() { _, _ = delegate(conf, args, "DEL") }}
	}
	key := ipam.Key{Network: conf.Name, ContainerID: args.ContainerID, IfName: args.IfName}
	alloc, reused, err := p.allocate(conf, key, args.Netns, static, podIdentity(conf, env))
	if err != nil {
		return ipamOutcome{err: err}
	}
	release := func() {}
	if !reused { // an earlier ADD owns these addresses: a failure now must not free them
		release = func() { _, _ = agent(conf).Do(cniapi.Request{Op: cniapi.OpRelease, Key: key}) }
	}
	return ipamOutcome{addrs: alloc.IPs, release: release}
}

// Del detaches a pod. It succeeds when there is nothing left to remove, whatever the
// netns or prevResult say.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	if p.isIPAMCall(args.StdinData) {
		return p.ipamDel(args)
	}
	conf, err := config.Parse(args.StdinData)
	if err != nil {
		return err
	}
	// The veth is made inert first: releasing first could hand its address to a new pod
	// while the old interface still carries it.
	retired, err := podnet.Retire(nodeHandle(), args.ContainerID, args.IfName, args.Netns)
	if err != nil {
		if err := podnet.Teardown(nodeHandle(), args.ContainerID, args.IfName); err != nil {
			return types.NewError(types.ErrTryAgainLater, err.Error(), "")
		}
		retired = false
	}
	if !conf.IsWeftIPAM(p.Self) {
		if retired {
			requestReap(conf)
		}
		_, err := delegate(conf, args, "DEL")
		return err
	}
	key := ipam.Key{Network: conf.Name, ContainerID: args.ContainerID, IfName: args.IfName}
	_, err = agent(conf).Do(cniapi.Request{Op: cniapi.OpRelease, Key: key, Reap: retired})
	if retired && errors.Is(err, cniapi.ErrUnreachable) {
		_ = podnet.ReapAll() // nobody else will
	}
	return asCNIError(err)
}

// requestReap asks weftd to delete retired veths, or deletes them here when it cannot.
func requestReap(conf *config.NetConf) {
	if _, err := agent(conf).Do(cniapi.Request{Op: cniapi.OpReap}); err != nil {
		_ = podnet.ReapAll()
	}
}

// Check verifies the attachment against prevResult and the agent's records.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	if p.isIPAMCall(args.StdinData) {
		return p.ipamCheck(args)
	}
	conf, err := config.Parse(args.StdinData)
	if err != nil {
		return err
	}
	prev, err := prevResult(conf)
	if err != nil {
		return err
	}
	addrs := allocFromResult(prev)
	if conf.IsWeftIPAM(p.Self) {
		key := ipam.Key{Network: conf.Name, ContainerID: args.ContainerID, IfName: args.IfName}
		resp, err := agent(conf).Do(cniapi.Request{Op: cniapi.OpGet, Key: key})
		if err != nil {
			return asCNIError(err)
		}
		if err := sameAddrs(resp.Allocation.IPs, addrs); err != nil {
			return types.NewError(types.ErrInternal, err.Error(), "")
		}
	} else if _, err := delegate(conf, args, "CHECK"); err != nil {
		return err
	}
	node, _ := readContract(conf)
	spec := podnet.Spec{
		Network: conf.Name, ContainerID: args.ContainerID, IfName: args.IfName, Netns: args.Netns,
		PTP: conf.Mode == config.ModePTP, Bridge: conf.Bridge, MTU: podMTU(conf, node), Routes: routesFor(conf, addrs),
	}
	spec.Addrs, spec.Gateways = splitAddrs(addrs)
	if err := podnet.Check(nodeHandle(), spec); err != nil {
		return types.NewError(types.ErrInternal, "check failed: "+err.Error(), "")
	}
	return nil
}

// GC releases every attachment of this network that the runtime no longer lists, and
// retires their veths, including veths whose allocation is already gone.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	if p.isIPAMCall(args.StdinData) {
		return p.ipamGC(args)
	}
	conf, err := config.Parse(args.StdinData)
	if err != nil {
		return err
	}
	valid := map[string]bool{}
	for _, v := range conf.ValidAttachments {
		valid[v.ContainerID+"/"+v.IfName] = true
	}
	var errs []error
	stale := map[string][2]string{}
	if conf.IsWeftIPAM(p.Self) {
		resp, err := agent(conf).Do(cniapi.Request{Op: cniapi.OpGC, Key: ipam.Key{Network: conf.Name}, Valid: validKeys(conf)})
		if err != nil {
			return asCNIError(err)
		}
		for _, a := range resp.Allocations {
			stale[a.ContainerID+"/"+a.IfName] = [2]string{a.ContainerID, a.IfName}
		}
	} else if _, err := delegate(conf, args, "GC"); err != nil {
		errs = append(errs, err)
	}
	orphans, err := podnet.Orphans(nodeHandle(), conf.Name, func(cid, ifn string) bool { return valid[cid+"/"+ifn] })
	errs = append(errs, err)
	for _, o := range orphans {
		stale[o[0]+"/"+o[1]] = o
	}
	retired := false
	for _, a := range stale {
		r, err := podnet.Retire(nodeHandle(), a[0], a[1], "")
		retired = retired || r
		errs = append(errs, err)
	}
	if retired {
		requestReap(conf)
	}
	if err := errors.Join(errs...); err != nil {
		return types.NewError(types.ErrTryAgainLater, "gc: "+err.Error(), "")
	}
	return nil
}

// Status reports whether the plugin can take ADDs now.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	if p.isIPAMCall(args.StdinData) {
		return p.ipamStatus(args)
	}
	conf, err := config.Parse(args.StdinData)
	if err != nil {
		return err
	}
	if !conf.IsWeftIPAM(p.Self) {
		_, err := delegate(conf, args, "STATUS")
		return err
	}
	return agentStatus(conf.Socket)
}

func agentStatus(socket string) error {
	resp, err := cniapi.Client{Socket: socket}.Do(cniapi.Request{Op: cniapi.OpStatus})
	if errors.Is(err, cniapi.ErrUnreachable) {
		return types.NewError(types.ErrPluginNotAvailable, "weftd is not available: "+err.Error(), "")
	}
	if err != nil {
		return asCNIError(err)
	}
	if _, err := cniapi.ReadNodeContract(filepath.Dir(socket)); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, err.Error(), "")
	}
	if resp.Status != nil && !resp.Status.Ready {
		return types.NewError(types.ErrLimitedConnectivity, "weftd is degraded: "+strings.Join(resp.Status.Problems, "; "), "")
	}
	return nil
}

// allocate asks the agent for the attachment's addresses; reused reports that they were
// allocated by an earlier ADD, so a failure now must not release them.
func (p *Plugin) allocate(conf *config.NetConf, key ipam.Key, netns string, static []netip.Addr, pod *v1.PodIdentity) (alloc *ipam.Allocation, reused bool, err error) {
	sets, err := conf.IPAM.RangeSets()
	if err != nil {
		return nil, false, err
	}
	ports, err := conf.Ports()
	if err != nil {
		return nil, false, err
	}
	resp, err := agent(conf).Do(cniapi.Request{Op: cniapi.OpAllocate, Key: key, Netns: netns, Sets: sets, Static: static, Pod: pod, Ports: ports})
	if err != nil {
		return nil, false, asCNIError(err)
	}
	return resp.Allocation, resp.Reused, nil
}

func agent(conf *config.NetConf) cniapi.Client {
	if conf.IPAM != nil && conf.IPAM.Socket != "" {
		return cniapi.Client{Socket: conf.IPAM.Socket}
	}
	return cniapi.Client{Socket: conf.Socket}
}

func readContract(conf *config.NetConf) (*cniapi.NodeContract, error) {
	c, err := cniapi.ReadNodeContract(filepath.Dir(agent(conf).Socket))
	if err != nil {
		return nil, types.NewError(types.ErrTryAgainLater, err.Error(), "")
	}
	return c, nil
}

func routesFor(conf *config.NetConf, addrs []ipam.IPConfig) []podnet.Route {
	if conf.IPAM != nil && len(conf.IPAM.Routes) > 0 {
		var out []podnet.Route
		for _, r := range conf.IPAM.Routes {
			rt := podnet.Route{Dst: fromIPNet(r.Dst)}
			if g, ok := netip.AddrFromSlice(r.GW); ok {
				rt.GW = g.Unmap()
			}
			out = append(out, rt)
		}
		return out
	}
	var out []podnet.Route
	var v4, v6 bool
	for _, a := range addrs {
		if a.Address.Addr().Is4() && !v4 {
			v4 = true
			out = append(out, podnet.Route{Dst: netip.MustParsePrefix("0.0.0.0/0")})
		}
		if a.Address.Addr().Is6() && !v6 {
			v6 = true
			out = append(out, podnet.Route{Dst: netip.MustParsePrefix("::/0")})
		}
	}
	return out
}

// podMTU is the config's MTU, else the node contract's, else 1500.
func podMTU(conf *config.NetConf, node *cniapi.NodeContract) int {
	switch {
	case conf.MTU != 0:
		return conf.MTU
	case node != nil && node.MTU != 0:
		return node.MTU
	}
	return 1500
}

// splitAddrs separates addresses from their gateways.
func splitAddrs(addrs []ipam.IPConfig) (prefixes []netip.Prefix, gateways []netip.Addr) {
	for _, a := range addrs {
		prefixes = append(prefixes, a.Address)
		if a.Gateway.IsValid() {
			gateways = append(gateways, a.Gateway)
		}
	}
	return prefixes, gateways
}

// podAddrs gives ptp pods host-length addresses (/32, /128): with no on-link subnet,
// everything, even a neighbour pod, goes through the node.
func podAddrs(conf *config.NetConf, addrs []ipam.IPConfig) []ipam.IPConfig {
	if conf.Mode != config.ModePTP {
		return addrs
	}
	out := make([]ipam.IPConfig, len(addrs))
	for i, a := range addrs {
		out[i] = ipam.IPConfig{Address: netip.PrefixFrom(a.Address.Addr(), a.Address.Addr().BitLen())}
	}
	return out
}

func validKeys(conf *config.NetConf) []ipam.Key {
	out := make([]ipam.Key, 0, len(conf.ValidAttachments))
	for _, v := range conf.ValidAttachments {
		out = append(out, ipam.Key{Network: conf.Name, ContainerID: v.ContainerID, IfName: v.IfName})
	}
	return out
}

func prevResult(conf *config.NetConf) (*current.Result, error) {
	if len(conf.RawPrevResult) == 0 {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "CHECK needs prevResult", "")
	}
	r, err := create.CreateFromBytes(conf.RawPrevResult)
	if err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "prevResult: "+err.Error(), "")
	}
	return current.NewResultFromResult(r)
}

func sameAddrs(have, want []ipam.IPConfig) error {
	set := map[netip.Addr]bool{}
	for _, a := range have {
		set[a.Address.Addr()] = true
	}
	for _, w := range want {
		if !set[w.Address.Addr()] {
			return fmt.Errorf("address %s is not allocated to this attachment", w.Address.Addr())
		}
	}
	if len(have) != len(want) {
		return fmt.Errorf("attachment holds %d addresses, prevResult lists %d", len(have), len(want))
	}
	return nil
}

// asCNIError maps agent and transport errors onto CNI codes.
func asCNIError(err error) error {
	if err == nil {
		return nil
	}
	var ae *cniapi.Error
	if errors.As(err, &ae) {
		return types.NewError(ae.Code, ae.Msg, "")
	}
	if errors.Is(err, cniapi.ErrUnreachable) {
		return types.NewError(types.ErrTryAgainLater, err.Error(), "")
	}
	return types.NewError(types.ErrInternal, err.Error(), "")
}

var nodeLink *netlink.Handle

// nodeHandle is a netlink handle in the namespace weft-cni runs in (the node's).
func nodeHandle() *netlink.Handle {
	if nodeLink == nil {
		h, err := netlink.NewHandle()
		if err != nil {
			fmt.Fprintln(os.Stderr, "netlink:", err)
			os.Exit(1)
		}
		nodeLink = h
	}
	return nodeLink
}

func parseMAC(s string) ([]byte, error) {
	var hw []byte
	for _, part := range strings.Split(s, ":") {
		var b byte
		if _, err := fmt.Sscanf(part, "%02x", &b); err != nil || len(part) != 2 {
			return nil, fmt.Errorf("bad MAC %q", s)
		}
		hw = append(hw, b)
	}
	if len(hw) != 6 {
		return nil, fmt.Errorf("bad MAC %q", s)
	}
	return hw, nil
}

// isIPAMCall reports whether weft-cni was invoked as another plugin's IPAM.
func (p *Plugin) isIPAMCall(stdin []byte) bool {
	var c struct {
		Type string `json:"type"`
		IPAM struct {
			Type string `json:"type"`
		} `json:"ipam"`
	}
	if json.Unmarshal(stdin, &c) != nil {
		return false
	}
	return c.Type != p.Self && c.IPAM.Type == p.Self
}
