package mtu

import "testing"

func TestPodMTU(t *testing.T) {
	cases := []struct {
		encap    string
		underlay int
		v6       bool
		want     int
	}{
		{"vxlan", 1500, false, 1450}, {"vxlan", 1500, true, 1430}, {"none", 1500, false, 1500},
		{"ipip", 1500, false, 1480}, {"wireguard", 1500, false, 1440}, {"wireguard", 1500, true, 1420},
		{"geneve", 9001, false, 8951}, {"geneve", 9000, true, 8930},
	}
	for _, c := range cases {
		r, err := PodMTU("eth0", c.underlay, c.encap, c.v6)
		if err != nil || r.PodMTU != c.want || r.Overhead != c.underlay-c.want {
			t.Errorf("%s over %d (v6=%v): %+v %v, want %d", c.encap, c.underlay, c.v6, r, err, c.want)
		}
	}
	if _, err := PodMTU("eth0", 1500, "gre", false); err == nil {
		t.Error("unknown encapsulation accepted")
	}
	if _, err := PodMTU("eth0", 1300, "vxlan", false); err == nil {
		t.Error("a pod MTU below 1280 accepted")
	}
}
