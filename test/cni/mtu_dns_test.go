package cni_test

import (
	"strings"
	"testing"
)

func TestMTUFromConfigAndFromNodeContract(t *testing.T) {
	n := newNode(t, "10.95.0.0/24", "--mtu", "1450")
	for _, c := range []struct {
		plugin string
		want   int
	}{
		{`"mode":"bridge"`, 1450},            // from the node contract
		{`"mode":"bridge","mtu":1400`, 1400}, // the config wins
	} {
		list := n.conflist("1.1.0", "weft", c.plugin)
		p, rt := n.pod("mtu")
		r := n.mustAdd(list, rt)
		l, err := p.Handle(t).LinkByName("eth0")
		if err != nil {
			t.Fatal(err)
		}
		if l.Attrs().MTU != c.want {
			t.Errorf("%s: pod MTU %d, want %d", c.plugin, l.Attrs().MTU, c.want)
		}
		host, _ := n.ns.Handle(t).LinkByName(r.Interfaces[1].Name)
		if host.Attrs().MTU != c.want {
			t.Errorf("%s: host veth MTU %d, want %d", c.plugin, host.Attrs().MTU, c.want)
		}
		_ = n.del(list, rt)
	}
}

func TestDNSInResult(t *testing.T) {
	n := newNode(t, "10.96.0.0/24")
	list := n.conflist("1.1.0", "weft", `"dns":{"nameservers":["10.96.0.10"],"search":["default.svc"]},"capabilities":{"dns":true}`)
	_, rt := n.pod("dns")
	r := n.mustAdd(list, rt)
	if strings.Join(r.DNS.Nameservers, ",") != "10.96.0.10" || strings.Join(r.DNS.Search, ",") != "default.svc" {
		t.Errorf("DNS from config: %+v", r.DNS)
	}
	_ = n.del(list, rt)
	// CRI's capitalised runtimeConfig.dns wins over the config.
	_, rt2 := n.pod("dns2")
	rt2.CapabilityArgs = map[string]any{"dns": map[string]any{"Servers": []string{"10.0.0.53"}, "Searches": []string{"ns.svc.cluster.local"}, "Options": []string{"ndots:5"}}}
	r2 := n.mustAdd(list, rt2)
	if strings.Join(r2.DNS.Nameservers, ",") != "10.0.0.53" || r2.DNS.Options[0] != "ndots:5" {
		t.Errorf("DNS from runtimeConfig: %+v", r2.DNS)
	}
}
