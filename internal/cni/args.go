package cni

import (
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

// podMeta records what the runtime told us about the pod, for `weft pod ls` and services.
func podMeta(conf *config.NetConf, args map[string]string) map[string]string {
	meta := map[string]string{}
	for _, k := range []string{"K8S_POD_NAME", "K8S_POD_NAMESPACE", "K8S_POD_UID"} {
		if v := args[k]; v != "" {
			meta[k] = v
		}
	}
	for k, v := range conf.RuntimeConfig.Labels {
		meta["label:"+k] = v
	}
	if conf.Args != nil {
		for _, l := range conf.Args.CNI.Labels {
			meta["label:"+l.Key] = l.Value
		}
	}
	if len(meta) == 0 {
		return nil
	}
	return meta
}
