package policy

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	v1 "github.com/weftnet/weft/api/v1"
)

// The cluster of the upstream Kubernetes network policy e2e suite: pods a, b and c in
// namespaces x, y and z, each serving 80 and 81 over TCP and UDP under the names
// serve-80-tcp, serve-81-tcp, ...; every probe of the 81-cell matrix is checked against an
// expectation written out per case (not computed by the code under test).

var namespaces = []string{"x", "y", "z"}
var podNames = []string{"a", "b", "c"}

type cluster struct {
	pods []*v1.Pod
	ns   []v1.Namespace
}

func newCluster() cluster {
	var c cluster
	for i, ns := range namespaces {
		c.ns = append(c.ns, v1.Namespace{Name: ns, Labels: map[string]string{"ns": ns}})
		for j, name := range podNames {
			p := &v1.Pod{Name: name, Namespace: ns, IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 244, byte(i + 1), byte(j + 2)})},
				Labels: map[string]string{"pod": name}, Ready: true}
			for _, port := range []int{80, 81} {
				for _, proto := range []string{v1.ProtocolTCP, v1.ProtocolUDP} {
					p.Ports = append(p.Ports, v1.NamedPort{Name: fmt.Sprintf("serve-%d-%s", port, strings.ToLower(proto)), Port: port, Protocol: proto})
				}
			}
			c.pods = append(c.pods, p)
		}
	}
	return c
}

func (c cluster) pod(key string) *v1.Pod {
	ns, name, _ := strings.Cut(key, "/")
	for _, p := range c.pods {
		if p.Namespace == ns && p.Name == name {
			return p
		}
	}
	panic(key)
}

func ep(p *v1.Pod) Endpoint { return Endpoint{Pod: p, IP: p.IPs[0]} }

func key(p *v1.Pod) string { return p.Namespace + "/" + p.Name }

func sel(kv ...string) *v1.LabelSelector {
	s := &v1.LabelSelector{MatchLabels: map[string]string{}}
	for i := 0; i < len(kv); i += 2 {
		s.MatchLabels[kv[i]] = kv[i+1]
	}
	return s
}

func tcp(port int) []v1.PolicyPort { return []v1.PolicyPort{{Protocol: v1.ProtocolTCP, Port: port}} }

// expectation of one case: is src -> dst allowed on the case's probe port?
type expect func(src, dst *v1.Pod) bool

func allowAll(_, _ *v1.Pod) bool { return true }

type probe struct {
	proto string
	port  int
}

func TestMatrix(t *testing.T) {
	c := newCluster()
	xa := c.pod("x/a")
	all := &v1.LabelSelector{}
	cases := []struct {
		name     string
		policies []v1.NetworkPolicy
		probes   map[probe]expect
	}{
		{
			name:     "no policy: everything open",
			policies: nil,
			probes:   map[probe]expect{{"TCP", 80}: allowAll, {"UDP", 81}: allowAll},
		},
		{
			name:     "default-deny-ingress in x",
			policies: []v1.NetworkPolicy{{Name: "deny", Namespace: "x", PolicyTypes: []string{"Ingress"}}},
			probes:   map[probe]expect{{"TCP", 80}: func(s, d *v1.Pod) bool { return d.Namespace != "x" }},
		},
		{
			name:     "default-deny-all in x (ingress and egress)",
			policies: []v1.NetworkPolicy{{Name: "deny", Namespace: "x", PolicyTypes: []string{"Ingress", "Egress"}}},
			probes:   map[probe]expect{{"TCP", 80}: func(s, d *v1.Pod) bool { return s.Namespace != "x" && d.Namespace != "x" }},
		},
		{
			name: "x/a from pods b of its namespace (podSelector)",
			policies: []v1.NetworkPolicy{{Name: "p", Namespace: "x", PodSelector: *sel("pod", "a"),
				Ingress: []v1.IngressRule{{From: []v1.PolicyPeer{{PodSelector: sel("pod", "b")}}}}}},
			probes: map[probe]expect{{"TCP", 80}: func(s, d *v1.Pod) bool { return d != xa || key(s) == "x/b" }},
		},
		{
			name: "x/a from namespace y (namespaceSelector)",
			policies: []v1.NetworkPolicy{{Name: "p", Namespace: "x", PodSelector: *sel("pod", "a"),
				Ingress: []v1.IngressRule{{From: []v1.PolicyPeer{{NamespaceSelector: sel("ns", "y")}}}}}},
			probes: map[probe]expect{{"TCP", 80}: func(s, d *v1.Pod) bool { return d != xa || s.Namespace == "y" }},
		},
		{
			name: "x/a from namespace y by its name label",
			policies: []v1.NetworkPolicy{{Name: "p", Namespace: "x", PodSelector: *sel("pod", "a"),
				Ingress: []v1.IngressRule{{From: []v1.PolicyPeer{{NamespaceSelector: sel(v1.NamespaceNameLabel, "y")}}}}}},
			probes: map[probe]expect{{"TCP", 80}: func(s, d *v1.Pod) bool { return d != xa || s.Namespace == "y" }},
		},
		{
			name: "x/a from pods b in namespace y (both selectors in one peer)",
			policies: []v1.NetworkPolicy{{Name: "p", Namespace: "x", PodSelector: *sel("pod", "a"),
				Ingress: []v1.IngressRule{{From: []v1.PolicyPeer{{NamespaceSelector: sel("ns", "y"), PodSelector: sel("pod", "b")}}}}}},
			probes: map[probe]expect{{"TCP", 80}: func(s, d *v1.Pod) bool { return d != xa || key(s) == "y/b" }},
		},
		{
			name: "x/a from namespace y or from pods b of x (two peers: a union)",
			policies: []v1.NetworkPolicy{{Name: "p", Namespace: "x", PodSelector: *sel("pod", "a"),
				Ingress: []v1.IngressRule{{From: []v1.PolicyPeer{{NamespaceSelector: sel("ns", "y")}, {PodSelector: sel("pod", "b")}}}}}},
			probes: map[probe]expect{{"TCP", 80}: func(s, d *v1.Pod) bool { return d != xa || s.Namespace == "y" || key(s) == "x/b" }},
		},
		{
			name: "x/a from namespaces matching an expression (NotIn x)",
			policies: []v1.NetworkPolicy{{Name: "p", Namespace: "x", PodSelector: *sel("pod", "a"),
				Ingress: []v1.IngressRule{{From: []v1.PolicyPeer{{NamespaceSelector: &v1.LabelSelector{MatchExpressions: []v1.LabelSelectorRequirement{
					{Key: "ns", Operator: "NotIn", Values: []string{"x"}}}}}}}}}},
			probes: map[probe]expect{{"TCP", 80}: func(s, d *v1.Pod) bool { return d != xa || s.Namespace != "x" }},
		},
		{
			name: "two policies on x/a are a union: from y, and from z",
			policies: []v1.NetworkPolicy{
				{Name: "from-y", Namespace: "x", PodSelector: *sel("pod", "a"), Ingress: []v1.IngressRule{{From: []v1.PolicyPeer{{NamespaceSelector: sel("ns", "y")}}}}},
				{Name: "from-z", Namespace: "x", PodSelector: *sel("pod", "a"), Ingress: []v1.IngressRule{{From: []v1.PolicyPeer{{NamespaceSelector: sel("ns", "z")}}}}},
			},
			probes: map[probe]expect{{"TCP", 80}: func(s, d *v1.Pod) bool { return d != xa || s.Namespace != "x" }},
		},
		{
			name: "x/a on port 81 only, from everywhere",
			policies: []v1.NetworkPolicy{{Name: "p", Namespace: "x", PodSelector: *sel("pod", "a"),
				Ingress: []v1.IngressRule{{From: []v1.PolicyPeer{{NamespaceSelector: all}}, Ports: tcp(81)}}}},
			probes: map[probe]expect{
				{"TCP", 80}: func(s, d *v1.Pod) bool { return d != xa },
				{"TCP", 81}: allowAll,
				{"UDP", 81}: func(s, d *v1.Pod) bool { return d != xa }, // the port is TCP's
			},
		},
		{
			name: "x/a on its named port serve-81-tcp",
			policies: []v1.NetworkPolicy{{Name: "p", Namespace: "x", PodSelector: *sel("pod", "a"),
				Ingress: []v1.IngressRule{{Ports: []v1.PolicyPort{{Protocol: "TCP", PortName: "serve-81-tcp"}}}}}},
			probes: map[probe]expect{
				{"TCP", 80}: func(s, d *v1.Pod) bool { return d != xa },
				{"TCP", 81}: allowAll,
			},
		},
		{
			name: "x/a on a port range 80-81 (endPort)",
			policies: []v1.NetworkPolicy{{Name: "p", Namespace: "x", PodSelector: *sel("pod", "a"),
				Ingress: []v1.IngressRule{{Ports: []v1.PolicyPort{{Protocol: "TCP", Port: 80, EndPort: 81}}}}}},
			probes: map[probe]expect{
				{"TCP", 80}: allowAll,
				{"TCP", 81}: allowAll,
				{"TCP", 82}: func(s, d *v1.Pod) bool { return d != xa },
			},
		},
		{
			name: "x/a may send to the pod networks except y/b (ipBlock with except)",
			policies: []v1.NetworkPolicy{{Name: "p", Namespace: "x", PodSelector: *sel("pod", "a"), PolicyTypes: []string{"Egress"},
				Egress: []v1.EgressRule{{To: []v1.PolicyPeer{{IPBlock: &v1.IPBlock{CIDR: netip.MustParsePrefix("10.244.0.0/16"),
					Except: []netip.Prefix{netip.PrefixFrom(c.pod("y/b").IPs[0], 32)}}}}}}}},
			probes: map[probe]expect{{"TCP", 80}: func(s, d *v1.Pod) bool { return s != xa || key(d) != "y/b" }},
		},
		{
			name: "x/a from an ipBlock of namespace z's addresses",
			policies: []v1.NetworkPolicy{{Name: "p", Namespace: "x", PodSelector: *sel("pod", "a"),
				Ingress: []v1.IngressRule{{From: []v1.PolicyPeer{{IPBlock: &v1.IPBlock{CIDR: netip.MustParsePrefix("10.244.3.0/24")}}}}}}},
			probes: map[probe]expect{{"TCP", 80}: func(s, d *v1.Pod) bool { return d != xa || s.Namespace == "z" }},
		},
		{
			name: "x/a may send only to pods' serve-80-tcp (egress, named port)",
			policies: []v1.NetworkPolicy{{Name: "p", Namespace: "x", PodSelector: *sel("pod", "a"), PolicyTypes: []string{"Egress"},
				Egress: []v1.EgressRule{{Ports: []v1.PolicyPort{{Protocol: "TCP", PortName: "serve-80-tcp"}}}}}},
			probes: map[probe]expect{
				{"TCP", 80}: allowAll,
				{"TCP", 81}: func(s, d *v1.Pod) bool { return s != xa },
			},
		},
		{
			name: "x/a may send to namespace z on UDP 80-81 (egress, range and selector)",
			policies: []v1.NetworkPolicy{{Name: "p", Namespace: "x", PodSelector: *sel("pod", "a"), PolicyTypes: []string{"Egress"},
				Egress: []v1.EgressRule{{To: []v1.PolicyPeer{{NamespaceSelector: sel("ns", "z")}}, Ports: []v1.PolicyPort{{Protocol: "UDP", Port: 80, EndPort: 81}}}}}},
			probes: map[probe]expect{
				{"UDP", 81}: func(s, d *v1.Pod) bool { return s != xa || d.Namespace == "z" },
				{"TCP", 80}: func(s, d *v1.Pod) bool { return s != xa },
			},
		},
		{
			name: "egress of x denied except DNS (UDP 53 anywhere)",
			policies: []v1.NetworkPolicy{{Name: "dns-only", Namespace: "x", PolicyTypes: []string{"Egress"},
				Egress: []v1.EgressRule{{Ports: []v1.PolicyPort{{Protocol: "UDP", Port: 53}, {Protocol: "TCP", Port: 53}}}}}},
			probes: map[probe]expect{
				{"TCP", 80}: func(s, d *v1.Pod) bool { return s.Namespace != "x" },
				{"UDP", 53}: allowAll,
			},
		},
		{
			name: "both directions: x/a may only send to y, y/b may only receive from x/a",
			policies: []v1.NetworkPolicy{
				{Name: "out", Namespace: "x", PodSelector: *sel("pod", "a"), PolicyTypes: []string{"Egress"},
					Egress: []v1.EgressRule{{To: []v1.PolicyPeer{{NamespaceSelector: sel("ns", "y")}}}}},
				{Name: "in", Namespace: "y", PodSelector: *sel("pod", "b"),
					Ingress: []v1.IngressRule{{From: []v1.PolicyPeer{{NamespaceSelector: sel("ns", "x"), PodSelector: sel("pod", "a")}}}}},
			},
			probes: map[probe]expect{{"TCP", 80}: func(s, d *v1.Pod) bool {
				if s == xa && d.Namespace != "y" {
					return false
				}
				return key(d) != "y/b" || s == xa
			}},
		},
		{
			name: "an empty ingress rule allows everything to x/a; an empty ingress list denies",
			policies: []v1.NetworkPolicy{
				{Name: "open", Namespace: "x", PodSelector: *sel("pod", "a"), Ingress: []v1.IngressRule{{}}},
				{Name: "closed", Namespace: "x", PodSelector: *sel("pod", "b"), PolicyTypes: []string{"Ingress"}},
			},
			probes: map[probe]expect{{"TCP", 80}: func(s, d *v1.Pod) bool { return key(d) != "x/b" }},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, p := range tc.policies {
				if err := p.Validate(); err != nil {
					t.Fatalf("policy %s: %v", p.Name, err)
				}
			}
			m := New(tc.policies, c.ns)
			// The compiled rules (what a node enforces) must decide every cell the same.
			var all []v1.Pod
			for _, p := range c.pods {
				all = append(all, *p)
			}
			compiled := map[*v1.Pod]PodRules{}
			for _, p := range c.pods {
				compiled[p] = m.Compile(p, all)
			}
			for pr, want := range tc.probes {
				var wrong []string
				for _, s := range c.pods {
					for _, d := range c.pods {
						got := m.Decide(ep(s), ep(d), pr.proto, pr.port).Allowed
						exp := s == d || want(s, d) // a pod reaches itself over loopback
						if got != exp {
							wrong = append(wrong, fmt.Sprintf("%s->%s got %v", key(s), key(d), got))
						}
						enforced := s == d || (compiled[s].Egress.Allows(d.IPs[0], pr.proto, pr.port) &&
							compiled[d].Ingress.Allows(s.IPs[0], pr.proto, pr.port))
						if enforced != exp {
							wrong = append(wrong, fmt.Sprintf("%s->%s compiled %v", key(s), key(d), enforced))
						}
					}
				}
				if len(wrong) > 0 {
					t.Errorf("%s/%d: %d of 81 cells wrong: %s", pr.proto, pr.port, len(wrong), strings.Join(wrong, ", "))
				}
			}
		})
	}
}

// TestDecisionSaysWhy checks the explanation: which policies select each side and which
// of them allowed it.
func TestDecisionSaysWhy(t *testing.T) {
	c := newCluster()
	m := New([]v1.NetworkPolicy{
		{Name: "from-y", Namespace: "x", PodSelector: *sel("pod", "a"), Ingress: []v1.IngressRule{{From: []v1.PolicyPeer{{NamespaceSelector: sel("ns", "y")}}}}},
		{Name: "deny", Namespace: "x", PolicyTypes: []string{"Ingress"}},
	}, c.ns)
	v := m.Decide(ep(c.pod("y/c")), ep(c.pod("x/a")), "TCP", 80)
	if !v.Allowed || fmt.Sprint(v.Ingress.Selecting) != "[x/deny x/from-y]" || fmt.Sprint(v.Ingress.AllowedBy) != "[x/from-y]" || len(v.Egress.Selecting) != 0 {
		t.Errorf("y/c -> x/a: %+v", v)
	}
	v = m.Decide(ep(c.pod("z/c")), ep(c.pod("x/a")), "TCP", 80)
	if v.Allowed || len(v.Ingress.AllowedBy) != 0 || len(v.Ingress.Selecting) != 2 {
		t.Errorf("z/c -> x/a: %+v", v)
	}
	// From outside the cluster (not a pod): only ipBlock peers can match it.
	outside := Endpoint{IP: netip.MustParseAddr("192.0.2.7")}
	if v := m.Decide(outside, ep(c.pod("x/b")), "TCP", 80); v.Allowed {
		t.Errorf("outside -> x/b allowed: %+v", v)
	}
	if v := m.Decide(outside, ep(c.pod("y/b")), "TCP", 80); !v.Allowed {
		t.Errorf("outside -> y/b (no policy) denied: %+v", v)
	}
}

func TestSubtract(t *testing.T) {
	pp := netip.MustParsePrefix
	for _, tc := range []struct {
		p      string
		except []string
		want   string
	}{
		{"10.0.0.0/8", nil, "[10.0.0.0/8]"},
		{"10.0.0.0/8", []string{"10.0.0.0/8"}, "[]"},
		{"10.0.0.0/8", []string{"10.0.0.0/7"}, "[]"},
		{"10.0.0.0/30", []string{"10.0.0.1/32"}, "[10.0.0.0/32 10.0.0.2/31]"},
		{"172.17.0.0/16", []string{"172.17.1.0/24"}, "[172.17.0.0/24 172.17.2.0/23 172.17.4.0/22 172.17.8.0/21 172.17.16.0/20 172.17.32.0/19 172.17.64.0/18 172.17.128.0/17]"},
		{"fd00::/126", []string{"fd00::3/128"}, "[fd00::/127 fd00::2/128]"},
		{"10.0.0.0/8", []string{"192.168.0.0/16"}, "[10.0.0.0/8]"},
	} {
		var ex []netip.Prefix
		for _, e := range tc.except {
			ex = append(ex, pp(e))
		}
		got := subtract(pp(tc.p), ex)
		if got == nil {
			got = []netip.Prefix{}
		}
		if fmt.Sprint(got) != tc.want {
			t.Errorf("%s minus %v = %v, want %s", tc.p, tc.except, got, tc.want)
		}
	}
}

func TestValidateNamesTheField(t *testing.T) {
	for want, p := range map[string]v1.NetworkPolicy{
		"metadata.name":                                 {Name: "Bad_Name", Namespace: "x"},
		"spec.policyTypes[0]":                           {Name: "p", Namespace: "x", PolicyTypes: []string{"Sideways"}},
		"spec.ingress[0].from[0]: one of":               {Name: "p", Namespace: "x", Ingress: []v1.IngressRule{{From: []v1.PolicyPeer{{}}}}},
		"spec.ingress[0].from[0]: ipBlock":              {Name: "p", Namespace: "x", Ingress: []v1.IngressRule{{From: []v1.PolicyPeer{{IPBlock: &v1.IPBlock{CIDR: netip.MustParsePrefix("10.0.0.0/8")}, PodSelector: sel()}}}}},
		"spec.egress[0].to[0].ipBlock.except[0]":        {Name: "p", Namespace: "x", Egress: []v1.EgressRule{{To: []v1.PolicyPeer{{IPBlock: &v1.IPBlock{CIDR: netip.MustParsePrefix("10.0.0.0/8"), Except: []netip.Prefix{netip.MustParsePrefix("11.0.0.0/8")}}}}}}},
		"spec.ingress[0].ports[0].endPort":              {Name: "p", Namespace: "x", Ingress: []v1.IngressRule{{Ports: []v1.PolicyPort{{Port: 90, EndPort: 80}}}}},
		"spec.ingress[0].ports[0].protocol":             {Name: "p", Namespace: "x", Ingress: []v1.IngressRule{{Ports: []v1.PolicyPort{{Protocol: "ICMP"}}}}},
		"spec.podSelector.matchExpressions[0].operator": {Name: "p", Namespace: "x", PodSelector: v1.LabelSelector{MatchExpressions: []v1.LabelSelectorRequirement{{Key: "k", Operator: "Near"}}}},
	} {
		if err := p.Validate(); err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("want an error starting %q, got %v", want, err)
		}
	}
}

// The node's DNS is the kube-dns pod policies name: "allow DNS" rules compile to its
// addresses, and a pod whose egress is denied otherwise reaches nothing else.
func TestNodeDNSIsKubeDNS(t *testing.T) {
	c := newCluster()
	dns := NodeDNS([]netip.Addr{netip.MustParseAddr("10.96.0.10")})
	all := []v1.Pod{*c.pod("x/a"), dns}
	m := New([]v1.NetworkPolicy{{Name: "dns", Namespace: "x", PolicyTypes: []string{"Egress"},
		Egress: []v1.EgressRule{{To: []v1.PolicyPeer{{NamespaceSelector: sel(v1.NamespaceNameLabel, "kube-system"), PodSelector: sel("k8s-app", "kube-dns")}},
			Ports: []v1.PolicyPort{{Protocol: "UDP", PortName: "dns"}}}}}}, c.ns)
	r := m.Compile(c.pod("x/a"), all)
	if !r.Egress.Allows(netip.MustParseAddr("10.96.0.10"), "UDP", 53) || r.Egress.Allows(netip.MustParseAddr("10.96.0.10"), "TCP", 53) ||
		r.Egress.Allows(c.pod("y/a").IPs[0], "UDP", 53) {
		t.Errorf("egress rules %+v", r.Egress)
	}
}
