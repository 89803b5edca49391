package cni

import (
	v1 "github.com/weftnet/weft/api/v1"
	"net/netip"
	"strings"

	"github.com/weftnet/weft/internal/config"
)

// envArgs parses CNI_ARGS ("K=V;K=V") into a map; malformed pairs are skipped, as the
// spec's IgnoreUnknown convention allows.
func envArgs(s string) map[string]string {
	out := map[string]string{}
	for _, kv := range strings.Split(s, ";") {
		k, v, ok := strings.Cut(kv, "=")
		if ok && k != "" {
			out[k] = v
		}
	}
	return out
}

// staticAddrs gathers requested addresses from CNI_ARGS IP=, runtimeConfig.ips and
// args.cni.ips, in that order of precedence, each written once.
func staticAddrs(conf *config.NetConf, args map[string]string) ([]netip.Addr, error) {
	var raw []string
	if ip := args["IP"]; ip != "" {
		raw = append(raw, strings.Split(ip, ",")...)
	}
	raw = append(raw, conf.RuntimeConfig.IPs...)
	if conf.Args != nil {
		raw = append(raw, conf.Args.CNI.IPs...)
	}
	seen := map[netip.Addr]bool{}
	var out []netip.Addr
	for _, s := range raw {
		p, err := config.ParseAddrOrPrefix(strings.TrimSpace(s))
		if err != nil {
			return nil, err
		}
		if !seen[p.Addr()] {
			seen[p.Addr()] = true
			out = append(out, p.Addr())
		}
	}
	return out, nil
}

// podIdentity records what the runtime told us about the pod, for `weft pod ls` and, later,
// services and policy.
func podIdentity(conf *config.NetConf, args map[string]string) *v1.PodIdentity {
	id := v1.PodIdentity{Name: args["K8S_POD_NAME"], Namespace: args["K8S_POD_NAMESPACE"], UID: args["K8S_POD_UID"]}
	labels := map[string]string{}
	for k, v := range conf.RuntimeConfig.Labels {
		labels[k] = v
	}
	if conf.Args != nil {
		for _, l := range conf.Args.CNI.Labels {
			labels[l.Key] = l.Value
		}
	}
	if len(labels) > 0 {
		id.Labels = labels
	}
	if id.IsZero() {
		return nil
	}
	return &id
}
