package config

import (
	"errors"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestParseDefaultsAndKeys(t *testing.T) {
	c, err := Parse([]byte(`{"cniVersion":"1.1.0","name":"weft","type":"weft-cni"}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Mode != ModeBridge || c.Bridge != DefaultBridge || c.Socket != DefaultSocket || c.MTU != 0 {
		t.Fatalf("defaults: %+v", c)
	}
	if !c.IsWeftIPAM("weft-cni") {
		t.Fatal("no ipam section must mean weft's IPAM")
	}
	c, err = Parse([]byte(`{"cniVersion":"1.0.0","name":"n","type":"weft-cni","mode":"ptp","mtu":1450,
		"runtimeConfig":{"ips":["10.0.0.9/24"],"mac":"02:00:00:00:00:01","portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"TCP"}],"somethingElse":1,
		  "dns":{"Servers":["10.96.0.10"],"Searches":["svc.cluster.local"]}},
		"args":{"cni":{"labels":[{"key":"app","value":"web"}]},"other":true},
		"prevResult":{"cniVersion":"1.0.0"},"cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Mode != ModePTP || c.MTU != 1450 || c.RuntimeConfig.Mac == "" || c.RuntimeConfig.DNS.Servers[0] != "10.96.0.10" {
		t.Fatalf("parsed %+v", c)
	}
	if c.Args.CNI.Labels[0].Key != "app" || len(c.ValidAttachments) != 1 {
		t.Fatalf("args/labels/attachments: %+v", c)
	}
	ports, err := c.Ports()
	if err != nil || len(ports) != 1 || ports[0].Protocol != "tcp" || ports[0].HostPort != 8080 {
		t.Fatalf("ports %+v %v", ports, err)
	}
	for _, bad := range []string{`[{"hostPort":0,"containerPort":80}]`, `[{"hostPort":80,"containerPort":80,"protocol":"icmp"}]`, `[{"hostPort":80,"containerPort":80,"hostIP":"x"}]`} {
		c, err := Parse([]byte(`{"name":"n","runtimeConfig":{"portMappings":` + bad + `}}`))
		if err != nil {
			t.Fatalf("Parse must leave port mappings to ADD: %v", err)
		}
		if _, err := c.Ports(); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

func TestParseDelegatedIPAMIsLenient(t *testing.T) {
	c, err := Parse([]byte(`{"cniVersion":"1.0.0","name":"n","type":"weft-cni","ipam":{"type":"host-local","dataDir":"/x","ranges":[[{"subnet":"10.1.0.0/24"}]]}}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.IsWeftIPAM("weft-cni") {
		t.Fatal("host-local must be delegated")
	}
}

func TestParseRanges(t *testing.T) {
	c, err := Parse([]byte(`{"cniVersion":"1.1.0","name":"n","type":"weft-cni","ipam":{"type":"weft-cni",
		"ranges":[[{"subnet":"10.1.0.0/24","rangeStart":"10.1.0.10","rangeEnd":"10.1.0.20"}],[{"subnet":"fd00::/64","gateway":"fd00::fe"}]],
		"exclude":["10.1.0.15","fd00::5/128"]}}`))
	if err != nil {
		t.Fatal(err)
	}
	sets, err := c.IPAM.RangeSets()
	if err != nil {
		t.Fatal(err)
	}
	if len(sets) != 2 || sets[0][0].Gateway.String() != "10.1.0.1" || sets[1][0].Gateway.String() != "fd00::fe" {
		t.Fatalf("sets %+v", sets)
	}
	if len(sets[0][0].Exclude) != 1 || sets[0][0].Exclude[0].String() != "10.1.0.15/32" || len(sets[1][0].Exclude) != 1 {
		t.Fatalf("excludes not split by family: %+v", sets)
	}
}

func TestParseErrors(t *testing.T) {
	cases := []struct {
		conf string
		code uint
		msg  string
	}{
		{`{`, types.ErrDecodingFailure, "malformed"},
		{`[]`, types.ErrDecodingFailure, "malformed"},
		{`{"name":"n","mtu":"1500"}`, types.ErrDecodingFailure, `"mtu"`},
		{`{"name":"n","mode":"ipvlan"}`, types.ErrInvalidNetworkConfig, "mode"},
		{`{"name":"n","bridge":""}`, types.ErrInvalidNetworkConfig, "bridge"},
		{`{"name":"n","bridge":"a-very-long-bridge-name"}`, types.ErrInvalidNetworkConfig, "bridge"},
		{`{"name":"n","mtu":100}`, types.ErrInvalidNetworkConfig, "mtu"},
		{`{"name":"n","socket":"relative.sock"}`, types.ErrInvalidNetworkConfig, "socket"},
		{`{"name":"n","bogus":1}`, types.ErrInvalidNetworkConfig, "bogus"},
		{`{"name":"n","runtimeConfig":{"mac":"zz"}}`, types.ErrInvalidNetworkConfig, "mac"},
		{`{"name":"n","runtimeConfig":{"ips":["10.0.0.300"]}}`, types.ErrInvalidNetworkConfig, "10.0.0.300"},
		{`{"name":"n","ipam":{"type":"weft-cni","ranges":[[{"subnet":"nope"}]]}}`, types.ErrInvalidNetworkConfig, "nope"},
		{`{"name":"n","ipam":{"type":"weft-cni","ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.1.5"}]]}}`, types.ErrInvalidNetworkConfig, "outside"},
		{`{"name":"n","ipam":{"type":"weft-cni","ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.9","rangeEnd":"10.0.0.3"}]]}}`, types.ErrInvalidNetworkConfig, "below"},
		{`{"name":"n","ipam":{"type":"weft-cni","ranges":[[{"subnet":"10.0.0.0/24"},{"subnet":"fd00::/64"}]]}}`, types.ErrInvalidNetworkConfig, "mixes"},
		{`{"name":"n","ipam":{"type":"weft-cni","rangez":[]}}`, types.ErrInvalidNetworkConfig, "rangez"},
		{`{"name":"n","ipam":{"type":"weft-cni","exclude":["10.0.0.1"]}}`, types.ErrInvalidNetworkConfig, "exclude"},
		{`{"name":"n","ipam":{"type":"weft-cni","ranges":[[]]}}`, types.ErrInvalidNetworkConfig, "empty"},
	}
	for _, c := range cases {
		_, err := Parse([]byte(c.conf))
		var e *types.Error
		if !errors.As(err, &e) {
			t.Errorf("%s: got %v, want a CNI error", c.conf, err)
			continue
		}
		if e.Code != c.code || !strings.Contains(e.Msg, c.msg) {
			t.Errorf("%s: got code %d %q, want %d mentioning %q", c.conf, e.Code, e.Msg, c.code, c.msg)
		}
	}
}

// FuzzParse: any input yields a config or a CNI error with code 6 or 7, never a panic.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`{"cniVersion":"1.1.0","name":"weft","type":"weft-cni"}`,
		`{"name":"n","mode":"ptp","mtu":1450,"ipam":{"type":"weft-cni","ranges":[[{"subnet":"10.1.0.0/24"}]],"exclude":["10.1.0.5"]}}`,
		`{"name":"n","runtimeConfig":{"ips":["fd00::1/64"],"mac":"02:00:00:00:00:01"}}`,
		`{"name":"n","ipam":{"type":"host-local","x":1}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			var e *types.Error
			if !errors.As(err, &e) || (e.Code != types.ErrDecodingFailure && e.Code != types.ErrInvalidNetworkConfig) {
				t.Fatalf("error %v is not a CNI decode/config error", err)
			}
			return
		}
		if c.IPAM != nil && c.IsWeftIPAM("weft-cni") {
			if _, err := c.IPAM.RangeSets(); err != nil {
				t.Fatalf("Parse accepted ranges RangeSets rejects: %v", err)
			}
		}
	})
}

func FuzzParseAddrOrPrefix(f *testing.F) {
	for _, s := range []string{"10.0.0.1", "10.0.0.0/8", "fd00::1/64", "::ffff:10.0.0.1", "", "/", "1.2.3.4/33"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseAddrOrPrefix(s)
		if err == nil && !p.IsValid() {
			t.Fatalf("%q parsed to an invalid prefix", s)
		}
	})
}

func TestParseAgentFile(t *testing.T) {
	f, err := ParseAgentFile([]byte(`{"nodeName":"n1","podCIDRs":["10.244.1.0/24","fd00::/64"],"fastpath":false}`))
	if err != nil {
		t.Fatal(err)
	}
	if f.NodeName != "n1" || len(f.PodCIDRs) != 2 || f.Fastpath == nil || *f.Fastpath {
		t.Fatalf("%+v", f)
	}
	for _, bad := range []string{`{"podCIDR":"x"}`, `{"podCIDRs":["10.0.0.0/33"]}`, `{"mtu":10}`, `[`} {
		if _, err := ParseAgentFile([]byte(bad)); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}
