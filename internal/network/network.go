// Package network manages weft networks as CNI conflists in a configuration directory:
// it picks subnets that clash with nothing, writes validated conflists, lists and removes
// them.
package network

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/weftnet/weft/internal/config"
	"github.com/weftnet/weft/internal/netcalc"
)

// Pool is a base range cut into blocks of Size, like Docker's default-address-pools.
type Pool struct {
	Base netip.Prefix
	Size int
}

// DefaultPools are where `--subnet auto` looks, in order.
var DefaultPools = []Pool{
	{netip.MustParsePrefix("10.89.0.0/16"), 24},
	{netip.MustParsePrefix("172.30.0.0/16"), 24},
	{netip.MustParsePrefix("192.168.224.0/20"), 24},
}

// DefaultPoolsV6 are where `--ipv6 auto` looks.
var DefaultPoolsV6 = []Pool{{netip.MustParsePrefix("fd00:89::/48"), 64}}

// ParsePool reads "BASE/LEN:SIZE", e.g. "10.89.0.0/16:24".
func ParsePool(s string) (Pool, error) {
	base, size, ok := strings.Cut(s, ":")
	if strings.Count(s, ":") > 1 { // IPv6: the size follows the last colon
		i := strings.LastIndex(s, ":")
		base, size, ok = s[:i], s[i+1:], true
	}
	if !ok {
		return Pool{}, fmt.Errorf("pool %q: want BASE/LEN:SIZE", s)
	}
	p, err := netcalc.ParseCIDR(base)
	if err != nil {
		return Pool{}, fmt.Errorf("pool %q: %w", s, err)
	}
	var n int
	if _, err := fmt.Sscanf(size, "%d", &n); err != nil || n < p.Bits() || n > p.Addr().BitLen()-2 {
		return Pool{}, fmt.Errorf("pool %q: block size %q must be between %d and %d", s, size, p.Bits(), p.Addr().BitLen()-2)
	}
	return Pool{Base: p.Masked(), Size: n}, nil
}

// Network is one conflist in the directory, weft's or another plugin's.
type Network struct {
	Name    string         `json:"name"`
	File    string         `json:"file"`
	Type    string         `json:"type"` // the first plugin's type
	Mode    string         `json:"mode,omitempty"`
	Bridge  string         `json:"bridge,omitempty"`
	MTU     int            `json:"mtu,omitempty"`
	Subnets []netip.Prefix `json:"subnets"`
}

// CreateRequest describes a network to create.
type CreateRequest struct {
	Name   string
	Subnet string // CIDR or "auto"
	IPv6   string // CIDR, "auto" or empty
	Mode   string // bridge or ptp
	MTU    int    // 0: leave it to the node contract
	Pools  []Pool
	Pools6 []Pool
	Host   []netcalc.HostPrefix // what the host uses
}

var nameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.\-]{0,62}$`)

// ErrClash means a subnet overlaps the host or another network.
var ErrClash = errors.New("subnet clash")

// Create writes a new conflist to dir and returns it.
func Create(dir string, r CreateRequest) (Network, error) {
	if !nameRE.MatchString(r.Name) {
		return Network{}, fmt.Errorf("network name %q: use letters, digits, '-', '_' and '.' (at most 63)", r.Name)
	}
	existing, err := List(dir)
	if err != nil {
		return Network{}, err
	}
	var taken []string // what each clash would be with, for messages
	var takenP []netip.Prefix
	for _, n := range existing {
		if n.Name == r.Name {
			return Network{}, fmt.Errorf("network %q already exists (%s)", r.Name, n.File)
		}
		for _, s := range n.Subnets {
			takenP, taken = append(takenP, s), append(taken, "network "+n.Name)
		}
	}
	for _, h := range r.Host {
		takenP, taken = append(takenP, h.Prefix), append(taken, h.Source)
	}
	if r.Mode == "" {
		r.Mode = config.ModeBridge
	}
	if len(r.Pools) == 0 {
		r.Pools = DefaultPools
	}
	if len(r.Pools6) == 0 {
		r.Pools6 = DefaultPoolsV6
	}
	v4, err := pick(r.Subnet, true, r.Pools, takenP, taken)
	if err != nil {
		return Network{}, err
	}
	subnets := []netip.Prefix{v4}
	if r.IPv6 != "" {
		v6, err := pick(r.IPv6, false, r.Pools6, takenP, taken)
		if err != nil {
			return Network{}, err
		}
		subnets = append(subnets, v6)
	}
	n := Network{Name: r.Name, File: filepath.Join(dir, r.Name+".conflist"), Type: "weft-cni", Mode: r.Mode, MTU: r.MTU, Subnets: subnets}
	if r.Mode == config.ModeBridge {
		n.Bridge = BridgeName(r.Name)
	}
	data, err := render(n)
	if err != nil {
		return Network{}, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Network{}, err
	}
	tmp := n.File + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return Network{}, err
	}
	return n, os.Rename(tmp, n.File)
}

// pick resolves "auto" to the first free pool block, or checks an explicit subnet.
func pick(want string, v4 bool, pools []Pool, taken []netip.Prefix, why []string) (netip.Prefix, error) {
	family := "IPv4"
	if !v4 {
		family = "IPv6"
	}
	if want == "" || want == "auto" {
		for _, pool := range pools {
			if pool.Base.Addr().Is4() != v4 {
				continue
			}
			blocks, err := netcalc.Split(pool.Base, pool.Size)
			if err != nil {
				continue
			}
			for _, b := range blocks {
				if _, clash := clashes(b, taken); !clash {
					return b, nil
				}
			}
		}
		return netip.Prefix{}, fmt.Errorf("%w: every %s block of the pools is taken by the host or another network", ErrClash, family)
	}
	p, err := netcalc.ParseCIDR(want)
	if err != nil {
		return netip.Prefix{}, err
	}
	if p.Addr().Is4() != v4 {
		return netip.Prefix{}, fmt.Errorf("%s is not an %s subnet", want, family)
	}
	if p != p.Masked() {
		return netip.Prefix{}, fmt.Errorf("subnet %s has host bits set (did you mean %s?)", p, p.Masked())
	}
	if i, clash := clashes(p, taken); clash {
		return netip.Prefix{}, fmt.Errorf("%w: %s overlaps %s (%s)", ErrClash, p, taken[i], why[i])
	}
	return p, nil
}

func clashes(p netip.Prefix, taken []netip.Prefix) (int, bool) {
	for i, t := range taken {
		if t.Addr().Is4() == p.Addr().Is4() && t.Masked().Overlaps(p) {
			return i, true
		}
	}
	return 0, false
}

// BridgeName is the bridge of a created network: "weft-NAME" when that fits in an
// interface name, else "weft-" and a hash of the name.
func BridgeName(name string) string {
	if b := "weft-" + name; len(b) <= 15 && !strings.ContainsAny(name, ".") {
		return b
	}
	h := fnv.New32a()
	h.Write([]byte(name))
	return fmt.Sprintf("weft-%08x", h.Sum32())
}

func render(n Network) ([]byte, error) {
	var ranges [][]map[string]string
	for _, s := range n.Subnets {
		ranges = append(ranges, []map[string]string{{"subnet": s.String()}})
	}
	plugin := map[string]any{"type": "weft-cni", "mode": n.Mode, "ipam": map[string]any{"type": "weft-cni", "ranges": ranges}}
	if n.Bridge != "" {
		plugin["bridge"] = n.Bridge
	}
	if n.MTU != 0 {
		plugin["mtu"] = n.MTU
	}
	// Validate exactly what weft-cni will read.
	check := map[string]any{"cniVersion": "1.1.0", "name": n.Name}
	for k, v := range plugin {
		check[k] = v
	}
	cb, _ := json.Marshal(check)
	if _, err := config.Parse(cb); err != nil {
		return nil, fmt.Errorf("generated configuration is invalid: %w", err)
	}
	list := map[string]any{"cniVersion": "1.1.0", "name": n.Name, "plugins": []any{plugin}}
	b, err := json.MarshalIndent(list, "", "  ")
	return append(b, '\n'), err
}

// List reads every .conflist and .conf in dir.
func List(dir string) ([]Network, error) {
	var files []string
	for _, ext := range []string{"*.conflist", "*.conf", "*.json"} {
		m, _ := filepath.Glob(filepath.Join(dir, ext))
		files = append(files, m...)
	}
	sort.Strings(files)
	var out []Network
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		n, err := parse(b)
		if err != nil {
			continue // not a CNI configuration: not ours to judge
		}
		n.File = f
		out = append(out, n)
	}
	return out, nil
}

// parse reads the name, the first plugin and every "subnet" it can find.
func parse(b []byte) (Network, error) {
	var raw struct {
		Name    string            `json:"name"`
		Type    string            `json:"type"`
		Plugins []json.RawMessage `json:"plugins"`
	}
	if err := json.Unmarshal(b, &raw); err != nil || raw.Name == "" {
		return Network{}, errors.New("not a CNI configuration")
	}
	n := Network{Name: raw.Name, Type: raw.Type}
	first := b
	if len(raw.Plugins) > 0 {
		first = raw.Plugins[0]
	}
	var p struct {
		Type   string `json:"type"`
		Mode   string `json:"mode"`
		Bridge string `json:"bridge"`
		MTU    int    `json:"mtu"`
	}
	_ = json.Unmarshal(first, &p)
	n.Type, n.Mode, n.Bridge, n.MTU = p.Type, p.Mode, p.Bridge, p.MTU
	var anyv any
	_ = json.Unmarshal(b, &anyv)
	n.Subnets = findSubnets(anyv)
	return n, nil
}

// findSubnets collects every "subnet" value in a configuration, wherever its plugin keeps it.
func findSubnets(v any) []netip.Prefix {
	var out []netip.Prefix
	switch t := v.(type) {
	case map[string]any:
		for k, val := range t {
			if s, ok := val.(string); ok && k == "subnet" {
				if p, err := netip.ParsePrefix(s); err == nil {
					out = append(out, p.Masked())
				}
				continue
			}
			out = append(out, findSubnets(val)...)
		}
	case []any:
		for _, e := range t {
			out = append(out, findSubnets(e)...)
		}
	}
	return out
}

// Find returns the network called name.
func Find(dir, name string) (Network, error) {
	all, err := List(dir)
	if err != nil {
		return Network{}, err
	}
	for _, n := range all {
		if n.Name == name {
			return n, nil
		}
	}
	return Network{}, fmt.Errorf("no network %q in %s", name, dir)
}

// Remove deletes a weft network's conflist. Other plugins' networks are refused.
func Remove(dir, name string) error {
	n, err := Find(dir, name)
	if err != nil {
		return err
	}
	if n.Type != "weft-cni" && n.Type != "weft" {
		return fmt.Errorf("network %q is a %s network, not weft's; remove %s yourself", name, n.Type, n.File)
	}
	return os.Remove(n.File)
}
