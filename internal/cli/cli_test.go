package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"sort"
	"testing"
)

// run executes the CLI in-process and returns stdout and the exit code.
func run(t *testing.T, args ...string) (string, int) {
	t.Helper()
	root := NewRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&bytes.Buffer{})
	root.SetArgs(args)
	err := root.Execute()
	code := 0
	var e *ExitError
	switch {
	case err == nil:
	case errors.As(err, &e):
		code = e.Code
	default:
		code = 1
	}
	return out.String(), code
}

func keys(t *testing.T, s string) []string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatalf("not a JSON object: %v\n%s", err, s)
	}
	var k []string
	for key := range m {
		k = append(k, key)
	}
	sort.Strings(k)
	return k
}

func TestSubnetJSONShapes(t *testing.T) {
	out, code := run(t, "subnet", "info", "10.0.0.0/24", "fd00::/64", "-o", "json")
	var infos []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &infos) != nil || len(infos) != 2 {
		t.Fatalf("info: %d %s", code, out)
	}
	for _, k := range []string{"cidr", "network", "prefixLength", "netmask", "wildcard", "broadcast", "firstUsable", "lastUsable", "total", "usable", "class"} {
		if _, ok := infos[0][k]; !ok {
			t.Errorf("info lacks %q", k)
		}
	}
	if _, ok := infos[1]["broadcast"]; ok {
		t.Error("IPv6 info has a broadcast")
	}
	if _, isString := infos[1]["total"].(string); !isString {
		t.Error("total is not a decimal string")
	}
	cases := []struct {
		args []string
		keys []string
	}{
		{[]string{"subnet", "split", "10.0.0.0/24", "--prefix", "26"}, []string{"blocks"}},
		{[]string{"subnet", "summarize", "10.0.0.0/25", "10.0.0.128/25"}, []string{"cidrs"}},
		{[]string{"subnet", "overlap", "10.0.0.0/8", "10.1.0.0/16"}, []string{"overlaps"}},
		{[]string{"subnet", "plan", "--nodes", "3", "--pods-per-node", "100", "--services", "50"},
			[]string{"clusterCIDR", "maxNodes", "nodePrefixLength", "podsPerNode", "serviceCIDR", "services"}},
		{[]string{"subnet", "check", "--cluster-cidr", "10.0.0.0/16", "--service-cidr", "10.1.0.0/16"}, []string{"conflicts", "ok"}},
	}
	for _, c := range cases {
		out, code := run(t, append(c.args, "-o", "json")...)
		if code != 0 {
			t.Fatalf("%v: exit %d\n%s", c.args, code, out)
		}
		if got := keys(t, out); !reflect.DeepEqual(got, c.keys) {
			t.Errorf("%v: keys %v, want %v", c.args, got, c.keys)
		}
	}
	out, _ = run(t, "subnet", "plan", "--nodes", "3", "--pods-per-node", "100", "--services", "50", "--dual-stack", "-o", "json")
	for _, k := range []string{"clusterCIDRV6", "nodePrefixLengthV6", "serviceCIDRV6"} {
		if !bytes.Contains([]byte(out), []byte(`"`+k+`"`)) {
			t.Errorf("dual-stack plan lacks %s", k)
		}
	}
}

func TestMTUJSONShape(t *testing.T) {
	out, code := run(t, "mtu", "--encap", "vxlan", "--dev", "lo", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	if got := keys(t, out); !reflect.DeepEqual(got, []string{"device", "encap", "overhead", "podMTU", "underlayMTU"}) {
		t.Fatalf("keys %v", got)
	}
}

func TestBadInputExitsTwo(t *testing.T) {
	for _, args := range [][]string{
		{"subnet", "info", "10.0.0.0/33"},
		{"subnet", "info", "banana"},
		{"subnet", "info"},
		{"subnet", "split", "10.0.0.0/24", "--prefix", "x"},
		{"subnet", "split", "10.0.0.0/24", "--prefix", "20"},
		{"subnet", "split", "10.0.0.0/24", "--count", "-1"},
		{"subnet", "split", "10.0.0.0/24"},
		{"subnet", "plan", "--nodes", "0", "--pods-per-node", "1", "--services", "1"},
		{"subnet", "plan", "--nodes", "3", "--pods-per-node", "1", "--services", "1", "--avoid", "nope"},
		{"subnet", "check", "--cluster-cidr", "10.0.0.0/8/8"},
		{"subnet", "overlap", "fd00::/200"},
		{"mtu", "--encap", "gre"},
		{"mtu", "probe", "not-an-ip"},
		{"network", "create", "x", "--mode", "macvlan"},
		{"network", "create", "x", "--mtu", "huge"},
		{"network", "create", "x", "--pool", "10.0.0.0/16"},
	} {
		if _, code := run(t, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
	if _, code := run(t, "subnet", "plan", "--nodes", "100000", "--pods-per-node", "1000", "--services", "1"); code != 1 {
		t.Errorf("an impossible plan: exit %d, want 1", code)
	}
	if _, code := run(t, "subnet", "check", "--cluster-cidr", "10.0.0.0/16", "--service-cidr", "10.0.0.0/24"); code != 1 {
		t.Errorf("a conflicting plan: exit %d, want 1", code)
	}
}

// FuzzSubnetCLI: no input makes the calculator panic; every failure is an exit code.
func FuzzSubnetCLI(f *testing.F) {
	f.Add("info", "10.0.0.0/24", "26")
	f.Add("split", "fd00::/64", "66")
	f.Add("summarize", "0.0.0.0/0", "x")
	f.Fuzz(func(t *testing.T, verb, cidr, n string) {
		switch verb {
		case "info", "summarize", "overlap":
			run(t, "subnet", verb, cidr, cidr)
		case "split":
			run(t, "subnet", "split", cidr, "--prefix", n)
			run(t, "subnet", "split", cidr, "--count", n)
		}
	})
}
