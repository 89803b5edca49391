package cni

import (
	"bytes"
	"encoding/json"
	"net/netip"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/weftnet/weft/internal/cniapi"
	"github.com/weftnet/weft/internal/config"
	"github.com/weftnet/weft/internal/ipam"
)

// ipamConf is the part of another plugin's config that weft reads when it serves as that
// plugin's IPAM. The rest belongs to the main plugin and is ignored.
type ipamConf struct {
	CNIVersion        string               `json:"cniVersion"`
	Name              string               `json:"name"`
	IPAM              config.IPAMConf      `json:"ipam"`
	DNS               types.DNS            `json:"dns"`
	RuntimeConfig     config.RuntimeConfig `json:"runtimeConfig"`
	Args              *config.Args         `json:"args,omitempty"`
	ValidAttachments  []types.GCAttachment `json:"cni.dev/valid-attachments,omitempty"`
	LegacyAttachments []types.GCAttachment `json:"cni.dev/attachments,omitempty"`
	RawPrevResult     json.RawMessage      `json:"prevResult,omitempty"`
}

func parseIPAMConf(data []byte) (*ipamConf, *config.NetConf, error) {
	var c ipamConf
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, nil, types.NewError(types.ErrDecodingFailure, "malformed JSON: "+err.Error(), "")
	}
	// Validate the ipam section strictly through the main parser.
	section, _ := json.Marshal(struct {
		CNIVersion string          `json:"cniVersion"`
		Name       string          `json:"name"`
		Type       string          `json:"type"`
		IPAM       json.RawMessage `json:"ipam"`
	}{c.CNIVersion, c.Name, "weft-cni", rawIPAM(data)})
	nc, err := config.Parse(section)
	if err != nil {
		return nil, nil, err
	}
	nc.RuntimeConfig, nc.Args, nc.ValidAttachments = c.RuntimeConfig, c.Args, c.ValidAttachments
	if len(nc.ValidAttachments) == 0 {
		nc.ValidAttachments = c.LegacyAttachments
	}
	return &c, nc, nil
}

func rawIPAM(data []byte) json.RawMessage {
	var m map[string]json.RawMessage
	_ = json.NewDecoder(bytes.NewReader(data)).Decode(&m)
	return m["ipam"]
}

func (p *Plugin) ipamAdd(args *skel.CmdArgs) error {
	c, nc, err := parseIPAMConf(args.StdinData)
	if err != nil {
		return err
	}
	env := envArgs(args.Args)
	static, err := staticAddrs(nc, env)
	if err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	}
	key := ipam.Key{Network: c.Name, ContainerID: args.ContainerID, IfName: args.IfName}
	alloc, _, err := p.allocate(nc, key, args.Netns, static, podIdentity(nc, env))
	if err != nil {
		return err
	}
	r := &current.Result{CNIVersion: current.ImplementedSpecVersion, DNS: c.DNS}
	for _, ip := range alloc.IPs {
		ic := &current.IPConfig{Address: *ipNet(ip.Address)}
		if ip.Gateway.IsValid() {
			ic.Gateway = ip.Gateway.AsSlice()
		}
		r.IPs = append(r.IPs, ic)
	}
	for _, rt := range routesFor(nc, alloc.IPs) {
		tr := &types.Route{Dst: *ipNet(rt.Dst)}
		if rt.GW.IsValid() {
			tr.GW = rt.GW.AsSlice()
		}
		r.Routes = append(r.Routes, tr)
	}
	return types.PrintResult(r, c.CNIVersion)
}

func (p *Plugin) ipamDel(args *skel.CmdArgs) error {
	c, nc, err := parseIPAMConf(args.StdinData)
	if err != nil {
		return err
	}
	_, err = agent(nc).Do(cniapi.Request{Op: cniapi.OpRelease, Key: ipam.Key{Network: c.Name, ContainerID: args.ContainerID, IfName: args.IfName}})
	return asCNIError(err)
}

func (p *Plugin) ipamCheck(args *skel.CmdArgs) error {
	c, nc, err := parseIPAMConf(args.StdinData)
	if err != nil {
		return err
	}
	resp, err := agent(nc).Do(cniapi.Request{Op: cniapi.OpGet, Key: ipam.Key{Network: c.Name, ContainerID: args.ContainerID, IfName: args.IfName}})
	if err != nil {
		return asCNIError(err)
	}
	if len(c.RawPrevResult) > 0 {
		nc.RawPrevResult = c.RawPrevResult
		prev, err := prevResult(nc)
		if err != nil {
			return err
		}
		var want []ipam.IPConfig
		for _, ip := range prev.IPs {
			if a, ok := netip.AddrFromSlice(ip.Address.IP); ok {
				want = append(want, ipam.IPConfig{Address: netip.PrefixFrom(a.Unmap(), 0)})
			}
		}
		if err := sameAddrs(resp.Allocation.IPs, want); err != nil {
			return types.NewError(types.ErrInternal, err.Error(), "")
		}
	}
	return nil
}

func (p *Plugin) ipamGC(args *skel.CmdArgs) error {
	c, nc, err := parseIPAMConf(args.StdinData)
	if err != nil {
		return err
	}
	nc.Name = c.Name
	_, err = agent(nc).Do(cniapi.Request{Op: cniapi.OpGC, Key: ipam.Key{Network: c.Name}, Valid: validKeys(nc)})
	return asCNIError(err)
}

func (p *Plugin) ipamStatus(args *skel.CmdArgs) error {
	_, nc, err := parseIPAMConf(args.StdinData)
	if err != nil {
		return err
	}
	return agentStatus(agent(nc).Socket)
}
