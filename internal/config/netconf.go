// Package config parses and validates weft-cni's network configuration.
//
// Parsing is defaults → strict decode → validate: an unknown key or a value of the wrong
// type is a decode error (CNI code 6), a well-formed but unusable value is an invalid
// configuration (CNI code 7), and each message names the offending key.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	v1 "github.com/weftnet/weft/api/v1"

	"github.com/weftnet/weft/internal/ipam"
	"github.com/weftnet/weft/internal/netcalc"
)

// Modes of attaching a pod to its node.
const (
	ModeBridge = "bridge"
	ModePTP    = "ptp"
)

// Defaults.
const (
	DefaultBridge = "weft0"
	DefaultSocket = "/run/weft/weft.sock"
)

// NetConf is weft-cni's configuration as a runtime hands it over.
type NetConf struct {
	CNIVersion   string          `json:"cniVersion"`
	Name         string          `json:"name"`
	Type         string          `json:"type"`
	Capabilities map[string]bool `json:"capabilities,omitempty"`
	DNS          types.DNS       `json:"dns"`
	IPAM         *IPAMConf       `json:"ipam,omitempty"`

	Mode   string `json:"mode"`
	Bridge string `json:"bridge"`
	MTU    int    `json:"mtu"`
	Socket string `json:"socket"`

	RuntimeConfig    RuntimeConfig        `json:"runtimeConfig"`
	Args             *Args                `json:"args,omitempty"`
	RawPrevResult    json.RawMessage      `json:"prevResult,omitempty"`
	ValidAttachments []types.GCAttachment `json:"cni.dev/valid-attachments,omitempty"`
	// The 1.1.0 spec's first name for the same list; libcni still sends both.
	LegacyAttachments []types.GCAttachment `json:"cni.dev/attachments,omitempty"`

	// Keys that libcni or runtimes may add; accepted and ignored.
	CNIVersions  json.RawMessage `json:"cniVersions,omitempty"`
	DisableCheck json.RawMessage `json:"disableCheck,omitempty"`
	DisableGC    json.RawMessage `json:"disableGC,omitempty"`
}

// IPAMConf is the "ipam" section. Type empty or weft's own name means weft's agent-backed
// IPAM; anything else is delegated to that plugin and only Type is read here.
type IPAMConf struct {
	Type    string          `json:"type"`
	Ranges  [][]RangeConf   `json:"ranges,omitempty"`
	Exclude []string        `json:"exclude,omitempty"`
	Routes  []*types.Route  `json:"routes,omitempty"`
	Socket  string          `json:"socket,omitempty"`
	Raw     json.RawMessage `json:"-"`
}

// UnmarshalJSON is lenient: a delegated IPAM plugin's keys are not weft's to judge.
// Parse checks weft's own IPAM section strictly.
func (i *IPAMConf) UnmarshalJSON(b []byte) error {
	type plain IPAMConf
	if err := json.Unmarshal(b, (*plain)(i)); err != nil {
		return decodeErr("ipam: %v", err)
	}
	return nil
}

// strictIPAM has IPAMConf's fields without its lenient decoder.
type strictIPAM IPAMConf

// RangeConf is one range as written in the config (host-local's spelling).
type RangeConf struct {
	Subnet     string `json:"subnet"`
	RangeStart string `json:"rangeStart,omitempty"`
	RangeEnd   string `json:"rangeEnd,omitempty"`
	Gateway    string `json:"gateway,omitempty"`
}

// RuntimeConfig holds the capability arguments weft honours. It is decoded leniently:
// runtimes may pass capabilities meant for other plugins of a chain.
type RuntimeConfig struct {
	IPs          []string          `json:"ips,omitempty"`
	Mac          string            `json:"mac,omitempty"`
	PortMappings []rawPortMapping  `json:"portMappings,omitempty"`
	Labels       map[string]string `json:"labels,omitempty"`
	DNS          *RuntimeDNS       `json:"dns,omitempty"`
}

func (r *RuntimeConfig) UnmarshalJSON(b []byte) error {
	type plain RuntimeConfig
	if err := json.Unmarshal(b, (*plain)(r)); err != nil {
		return decodeErr("runtimeConfig: %v", err)
	}
	return nil
}

// rawPortMapping is the portMappings capability as runtimes send it.
type rawPortMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"hostIP"`
}

// Ports returns the validated port mappings.
func (c *NetConf) Ports() ([]v1.PortMapping, error) {
	var out []v1.PortMapping
	for _, r := range c.RuntimeConfig.PortMappings {
		m := v1.PortMapping{HostPort: r.HostPort, ContainerPort: r.ContainerPort, Protocol: r.Protocol}
		if r.HostIP != "" {
			a, err := netip.ParseAddr(r.HostIP)
			if err != nil {
				return nil, invalid("runtimeConfig.portMappings: hostIP %q is not an IP address", r.HostIP)
			}
			m.HostIP = a
		}
		if err := m.Validate(); err != nil {
			return nil, invalid("runtimeConfig.portMappings: %v", err)
		}
		out = append(out, m)
	}
	return out, nil
}

// RuntimeDNS is the "dns" capability. CRI sends the keys capitalised; encoding/json
// matches them case-insensitively.
type RuntimeDNS struct {
	Servers  []string `json:"servers,omitempty"`
	Searches []string `json:"searches,omitempty"`
	Options  []string `json:"options,omitempty"`
	Domain   string   `json:"domain,omitempty"`
}

// Args is the conventional "args" key, decoded leniently like RuntimeConfig.
type Args struct {
	CNI struct {
		IPs    []string `json:"ips,omitempty"`
		Labels []Label  `json:"labels,omitempty"`
	} `json:"cni"`
}

// Label is one entry of args.cni.labels.
type Label struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

func (a *Args) UnmarshalJSON(b []byte) error {
	type plain Args
	if err := json.Unmarshal(b, (*plain)(a)); err != nil {
		return decodeErr("args: %v", err)
	}
	return nil
}

// IsWeftIPAM reports whether addresses come from weft's agent.
func (c *NetConf) IsWeftIPAM(selfType string) bool {
	return c.IPAM == nil || c.IPAM.Type == "" || c.IPAM.Type == selfType || c.IPAM.Type == "weft-cni" || c.IPAM.Type == "weft"
}

// Parse decodes and validates a weft-cni configuration.
func Parse(data []byte) (*NetConf, error) {
	conf := &NetConf{Mode: ModeBridge, Bridge: DefaultBridge, Socket: DefaultSocket}
	if err := strictDecode(data, conf); err != nil {
		return nil, err
	}
	// runtimeConfig may carry capabilities of other plugins in the chain; keep it lenient.
	if conf.IPAM != nil {
		raw, _ := rawField(data, "ipam")
		conf.IPAM.Raw = raw
		if conf.IsWeftIPAM("") {
			var strict strictIPAM
			if err := strictDecode(raw, &strict); err != nil {
				return nil, prefixErr("ipam", err)
			}
		}
	}
	if len(conf.ValidAttachments) == 0 {
		conf.ValidAttachments = conf.LegacyAttachments
	}
	if err := conf.validate(); err != nil {
		return nil, err
	}
	return conf, nil
}

func (c *NetConf) validate() error {
	switch c.Mode {
	case ModeBridge, ModePTP:
	default:
		return invalid("mode %q is not supported (use %q or %q)", c.Mode, ModeBridge, ModePTP)
	}
	if c.Mode == ModeBridge {
		if err := validLinkName(c.Bridge); err != nil {
			return invalid("bridge: %v", err)
		}
	}
	if c.MTU != 0 && (c.MTU < 576 || c.MTU > 65535) {
		return invalid("mtu %d is outside 576..65535", c.MTU)
	}
	if !filepath.IsAbs(c.Socket) {
		return invalid("socket %q must be an absolute path", c.Socket)
	}
	if c.RuntimeConfig.Mac != "" {
		if _, err := net.ParseMAC(c.RuntimeConfig.Mac); err != nil {
			return invalid("runtimeConfig.mac %q is not a MAC address", c.RuntimeConfig.Mac)
		}
	}
	// Port mappings are checked by ADD alone (NetConf.Ports): a DEL carrying the same bad
	// mappings must still be able to clean up.
	for _, s := range c.RuntimeConfig.IPs {
		if _, err := ParseAddrOrPrefix(s); err != nil {
			return invalid("runtimeConfig.ips: %v", err)
		}
	}
	if c.IPAM != nil && c.IsWeftIPAM("") {
		if _, err := c.IPAM.RangeSets(); err != nil {
			return err
		}
		if c.IPAM.Socket != "" && !filepath.IsAbs(c.IPAM.Socket) {
			return invalid("ipam.socket %q must be an absolute path", c.IPAM.Socket)
		}
	}
	return nil
}

// RangeSets converts the configured ranges; nil means "the node's pod CIDRs".
func (i *IPAMConf) RangeSets() ([]ipam.RangeSet, error) {
	if i == nil || len(i.Ranges) == 0 {
		if i != nil && len(i.Exclude) > 0 {
			return nil, invalid("ipam.exclude needs ipam.ranges")
		}
		return nil, nil
	}
	var excludes []netip.Prefix
	for _, e := range i.Exclude {
		p, err := ParseAddrOrPrefix(e)
		if err != nil {
			return nil, invalid("ipam.exclude: %v", err)
		}
		excludes = append(excludes, p)
	}
	var sets []ipam.RangeSet
	for si, set := range i.Ranges {
		var rs ipam.RangeSet
		for ri, rc := range set {
			where := fmt.Sprintf("ipam.ranges[%d][%d]", si, ri)
			r, err := rc.toRange()
			if err != nil {
				return nil, invalid("%s: %v", where, err)
			}
			if !r.Gateway.IsValid() {
				// As host-local does: the first usable address is the gateway, never a pod's.
				r.Gateway, _ = netcalc.UsableBounds(r.Subnet.Masked())
			}
			for _, x := range excludes {
				if x.Addr().Is4() == r.Subnet.Addr().Is4() {
					r.Exclude = append(r.Exclude, x)
				}
			}
			if _, err := r.Canonical(); err != nil {
				return nil, invalid("%s: %v", where, err)
			}
			if len(rs) > 0 && rs[0].Subnet.Addr().Is4() != r.Subnet.Addr().Is4() {
				return nil, invalid("%s: a range set mixes IPv4 and IPv6; put each family in its own set", where)
			}
			rs = append(rs, r)
		}
		if len(rs) == 0 {
			return nil, invalid("ipam.ranges[%d] is empty", si)
		}
		sets = append(sets, rs)
	}
	return sets, nil
}

func (rc RangeConf) toRange() (ipam.Range, error) {
	var r ipam.Range
	p, err := netip.ParsePrefix(rc.Subnet)
	if err != nil {
		return r, fmt.Errorf("subnet %q is not a CIDR", rc.Subnet)
	}
	r.Subnet = p
	for _, f := range []struct {
		name, val string
		dst       *netip.Addr
	}{{"rangeStart", rc.RangeStart, &r.Start}, {"rangeEnd", rc.RangeEnd, &r.End}, {"gateway", rc.Gateway, &r.Gateway}} {
		if f.val == "" {
			continue
		}
		a, err := netip.ParseAddr(f.val)
		if err != nil {
			return r, fmt.Errorf("%s %q is not an IP address", f.name, f.val)
		}
		*f.dst = a
	}
	return r, nil
}

// ParseAddrOrPrefix accepts "10.0.0.5" or "10.0.0.5/24" and returns a prefix (a /32 or /128
// for a bare address).
func ParseAddrOrPrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return p, fmt.Errorf("%q is not a CIDR", s)
		}
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an IP address", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func validLinkName(name string) error {
	if name == "" || len(name) > 15 || strings.ContainsAny(name, "/ \t\n:") || name == "." || name == ".." {
		return fmt.Errorf("%q is not a valid interface name", name)
	}
	return nil
}

func strictDecode(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var ute *json.UnmarshalTypeError
		switch {
		case errors.As(err, &ute) && ute.Field == "":
			return decodeErr("malformed configuration: expected a JSON object, got JSON %s", ute.Value)
		case errors.As(err, &ute):
			return decodeErr("key %q: expected %s, got JSON %s", ute.Field, ute.Type, ute.Value)
		case strings.HasPrefix(err.Error(), "json: unknown field"):
			return invalid("unknown key %s (check its spelling)", strings.TrimPrefix(err.Error(), "json: unknown field "))
		default:
			return decodeErr("malformed JSON: %v", err)
		}
	}
	return nil
}

func rawField(data []byte, key string) (json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, err
	}
	return m[key], nil
}

func prefixErr(prefix string, err error) error {
	var e *types.Error
	if errors.As(err, &e) {
		return types.NewError(e.Code, prefix+": "+e.Msg, e.Details)
	}
	return err
}

func invalid(format string, a ...any) error {
	return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf(format, a...), "")
}

func decodeErr(format string, a ...any) error {
	return types.NewError(types.ErrDecodingFailure, fmt.Sprintf(format, a...), "")
}
