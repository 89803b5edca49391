package nftproxy_test

import (
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/weftnet/weft/internal/netns"
	"github.com/weftnet/weft/internal/probe"
	"github.com/weftnet/weft/internal/proxy"
	"github.com/weftnet/weft/internal/proxy/nftproxy"
	"github.com/weftnet/weft/internal/testutil"
)

// randomState draws services with 0–6 backends, some with node ports (Cluster or Local),
// some load balancer addresses (Cluster or Local), some with affinity, both families.
func randomState(r *rand.Rand, n int) proxy.State {
	st := proxy.State{Ports: map[string]*proxy.Port{}}
	keys := map[proxy.Key]bool{}
	for i := range n {
		is6 := i%3 == 2
		vip := netip.AddrFrom4([4]byte{10, 96, 0, byte(i)})
		if is6 {
			vip = netip.MustParseAddr(fmt.Sprintf("fd96::%x", i))
		}
		p := &proxy.Port{ID: fmt.Sprintf("p%02d", i), Service: fmt.Sprintf("default/s%d", i), VIP: vip, Proto: proxy.ProtoTCP, Port: 80}
		for b := range r.IntN(7) {
			ip := netip.AddrFrom4([4]byte{10, 244, byte(i), byte(r.IntN(3) + 2)})
			if is6 {
				ip = netip.MustParseAddr(fmt.Sprintf("fd00:244::%x:%x", i, r.IntN(3)+2))
			}
			p.Backends = append(p.Backends, proxy.Backend{IP: ip, Port: uint16(8080 + b)})
		}
		if i%4 == 1 {
			p.NodePort = uint16(30000 + i)
			p.NodePortBackends = p.Backends
			if r.IntN(2) == 0 && len(p.Backends) > 1 {
				p.ExternalLocal, p.NodePortBackends = true, p.Backends[:1]
			}
		}
		if i%5 == 3 && r.IntN(2) == 0 {
			p.Affinity = 30 * time.Second
		}
		if i%6 == 4 && p.NodePort == 0 { // a load balancer address: Cluster (masquerade) or Local
			p.LoadBalancer = true
			if r.IntN(2) == 0 {
				p.Masquerade = true
			} else {
				p.DropIfEmpty = true
			}
			if r.IntN(2) == 0 {
				p.Affinity = 30 * time.Second
			}
			if r.IntN(3) > 0 { // pods' short-circuit to the internal backends
				p.PodBackends = p.Backends[:r.IntN(len(p.Backends)+1)]
			}
		}
		st.Ports[p.ID] = p
		for _, b := range p.Backends {
			keys[proxy.Key{IP: b.IP, Proto: proxy.ProtoTCP, Port: b.Port}] = true
		}
	}
	for k := range keys {
		st.Endpoints = append(st.Endpoints, k)
	}
	sort.Slice(st.Endpoints, func(i, j int) bool { return proxy.KeyLess(st.Endpoints[i], st.Endpoints[j]) })
	return st
}

// TestIncrementalEqualsFull syncs a sequence of random states incrementally and checks
// after each that the kernel holds exactly what a fresh proxy writing the same state
// whole produces in another namespace.
func TestIncrementalEqualsFull(t *testing.T) {
	testutil.RequireRoot(t)
	tag := fmt.Sprintf("wt%d-nfp", os.Getpid())
	inc, err := netns.Create(tag + "i")
	if err != nil {
		t.Fatal(err)
	}
	defer netns.Delete(tag + "i")
	full, err := netns.Create(tag + "f")
	if err != nil {
		t.Fatal(err)
	}
	defer netns.Delete(tag + "f")
	r := rand.New(rand.NewPCG(1, 2))
	pods := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/56")}
	px := nftproxy.New()
	px.PodNetworks(pods)
	programmed := func(path string) []nftproxy.ProgrammedPort {
		var out []nftproxy.ProgrammedPort
		if err := probe.InNS(path, func() error {
			var err error
			out, err = nftproxy.Programmed()
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	for step := range 12 {
		want := randomState(r, 20)
		if step == 11 {
			want = proxy.State{Ports: map[string]*proxy.Port{}} // everything goes
		}
		if err := probe.InNS(inc, func() error { _, err := px.Sync(want); return err }); err != nil {
			t.Fatalf("step %d: incremental: %v", step, err)
		}
		if err := probe.InNS(full, func() error {
			fresh := nftproxy.New()
			fresh.PodNetworks(pods)
			_, err := fresh.Sync(want)
			return err
		}); err != nil {
			t.Fatalf("step %d: full: %v", step, err)
		}
		if a, b := programmed(inc), programmed(full); !reflect.DeepEqual(a, b) {
			t.Fatalf("step %d: incremental table differs from a full write:\n%+v\n%+v", step, a, b)
		}
		if a, b := dump(t, inc), dump(t, full); a != b {
			t.Fatalf("step %d: incremental table differs from a full write:\n%s\n---\n%s", step, a, b)
		}
	}
	if left := programmed(inc); len(left) != 0 {
		t.Errorf("after removing every service the table still programs %+v", left)
	}
}

var numgenOffset = regexp.MustCompile(`Offset:[0-9]+}`)

// dump renders the service table canonically: every set with its sorted elements, every
// chain with its rules' expressions.
func dump(t *testing.T, path string) string {
	t.Helper()
	var lines []string
	err := probe.InNS(path, func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		tb := &nftables.Table{Family: nftables.TableFamilyINet, Name: "weft-svc"}
		sets, err := c.GetSets(tb)
		if err != nil {
			return err
		}
		// A per-count map no port uses any more stays (with its rule) until the next full
		// write: compare the tables without those.
		unused := map[string]bool{}
		for _, s := range sets {
			els, err := c.GetSetElements(s)
			if err != nil {
				return err
			}
			if strings.Contains(s.Name, "-n") && len(els) == 0 && !strings.HasPrefix(s.Name, "no-") {
				unused[s.Name] = true
				continue
			}
			var e []string
			for _, el := range els {
				key := hex.EncodeToString(el.Key)
				if s.Name == "pick" {
					key = "slot" // slot ranges depend on the order ports came in
				}
				e = append(e, key+"="+hex.EncodeToString(el.Val))
			}
			sort.Strings(e)
			lines = append(lines, "set "+s.Name+" "+strings.Join(e, " "))
		}
		chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
		if err != nil {
			return err
		}
		for _, ch := range chains {
			if ch.Table.Name != "weft-svc" {
				continue
			}
			rules, err := c.GetRules(tb, ch)
			if err != nil {
				return err
			}
			var r []string
			for _, rule := range rules {
				var ex []string
				for _, e := range rule.Exprs {
					ex = append(ex, fmt.Sprintf("%T%+v", e, reflect.ValueOf(e).Elem().Interface()))
				}
				line := numgenOffset.ReplaceAllString(strings.Join(ex, " "), "Offset:slot}")
				for name := range unused {
					if strings.Contains(line, "SetName:"+name+" ") {
						line = ""
					}
				}
				if line != "" {
					r = append(r, line)
				}
			}
			if !strings.HasPrefix(ch.Name, "service-counts") && !strings.HasPrefix(ch.Name, "pod-lb-counts") && !strings.HasPrefix(ch.Name, "nodeports") {
				lines = append(lines, "chain "+ch.Name+" "+strings.Join(r, " | "))
				continue
			}
			sort.Strings(r) // per-count rules appear in the order counts were first needed
			lines = append(lines, "chain "+ch.Name+" "+strings.Join(r, " | "))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}
