package resources_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/resources"
	"github.com/weftnet/weft/internal/store/boltstore"
)

func newClient(t *testing.T) resources.Client {
	t.Helper()
	s, err := boltstore.OpenCluster(filepath.Join(t.TempDir(), "cluster.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return resources.Client{Store: s}
}

var cidrs = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/24"), netip.MustParsePrefix("fd00:96::/112")}

func web(name string) v1.Service {
	return v1.Service{Name: name, Ports: []v1.ServicePort{{Port: 80, TargetPort: 8080}}, Selector: map[string]string{"app": "web"}}
}

func TestCreateServiceAllocates(t *testing.T) {
	c := newClient(t)
	ctx := context.Background()
	s, err := c.CreateService(ctx, web("a"), cidrs)
	if err != nil {
		t.Fatal(err)
	}
	if s.Namespace != "default" || len(s.ClusterIPs) != 1 || !cidrs[0].Contains(s.ClusterIPs[0]) || s.ClusterIP != s.ClusterIPs[0].String() {
		t.Fatalf("created %+v", s)
	}
	// The lower band stays free for requested addresses such as DNS's .10.
	if s.ClusterIPs[0].As4()[3] < 16 {
		t.Errorf("random pick %s is in the static band", s.ClusterIPs[0])
	}
	if _, err := c.CreateService(ctx, web("a"), cidrs); !errors.Is(err, resources.ErrExists) {
		t.Errorf("second create: %v", err)
	}
	// Requested address: honoured, then refused to another service.
	r := web("dns")
	r.ClusterIP = "10.96.0.10"
	if got, err := c.CreateService(ctx, r, cidrs); err != nil || got.ClusterIP != "10.96.0.10" {
		t.Fatalf("requested: %+v %v", got, err)
	}
	r.Name = "dns2"
	if _, err := c.CreateService(ctx, r, cidrs); err == nil || !strings.Contains(err.Error(), "already allocated to service default/dns") {
		t.Errorf("taken address: %v", err)
	}
	r.ClusterIP = "10.97.0.1"
	if _, err := c.CreateService(ctx, r, cidrs); err == nil || !strings.Contains(err.Error(), "outside the service CIDR") {
		t.Errorf("outside: %v", err)
	}
	// Dual stack: one of each family.
	d := web("dual")
	d.IPFamilies = []string{"IPv6", "IPv4"}
	if got, err := c.CreateService(ctx, d, cidrs); err != nil || len(got.ClusterIPs) != 2 || !got.ClusterIPs[0].Is6() || !got.ClusterIPs[1].Is4() {
		t.Fatalf("dual: %+v %v", got, err)
	}
	// Headless: no address.
	h := web("headless")
	h.ClusterIP = "None"
	if got, err := c.CreateService(ctx, h, cidrs); err != nil || len(got.ClusterIPs) != 0 {
		t.Fatalf("headless: %+v %v", got, err)
	}
	// NodePort: requested honoured, clash refused, random in range.
	np := web("np")
	np.Type = "NodePort"
	np.Ports[0].NodePort = 30080
	if _, err := c.CreateService(ctx, np, cidrs); err != nil {
		t.Fatal(err)
	}
	np.Name = "np2"
	if _, err := c.CreateService(ctx, np, cidrs); err == nil || !strings.Contains(err.Error(), "nodePort 30080: already allocated to service default/np") {
		t.Errorf("clash: %v", err)
	}
	np.Ports[0].NodePort = 0
	got, err := c.CreateService(ctx, np, cidrs)
	if err != nil || got.Ports[0].NodePort < 30000 || got.Ports[0].NodePort > 32767 || got.Ports[0].NodePort == 30080 {
		t.Fatalf("random node port: %+v %v", got.Ports, err)
	}
	// Invalid: the message names the field.
	bad := web("bad")
	bad.Ports[0].Protocol = "ICMP"
	if _, err := c.CreateService(ctx, bad, cidrs); err == nil || !strings.Contains(err.Error(), "ports[0].protocol") {
		t.Errorf("invalid: %v", err)
	}
	// Deleting frees the address and the node port.
	if err := c.DeleteService(ctx, "default", "dns"); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteService(ctx, "default", "np"); err != nil {
		t.Fatal(err)
	}
	r.Name, r.ClusterIP = "dns3", "10.96.0.10"
	if _, err := c.CreateService(ctx, r, cidrs); err != nil {
		t.Errorf("freed address not reusable: %v", err)
	}
	np.Name, np.Ports[0].NodePort = "np3", 30080
	if _, err := c.CreateService(ctx, np, cidrs); err != nil {
		t.Errorf("freed node port not reusable: %v", err)
	}
}

// Concurrent creators never get the same address: a /27 (14 dynamic addresses after the
// static band of 16 and the broadcast) filled by 14 goroutines at once.
func TestCreateServiceNoDoubleAllocation(t *testing.T) {
	c := newClient(t)
	small := []netip.Prefix{netip.MustParsePrefix("10.96.0.0/27")}
	var wg sync.WaitGroup
	var mu sync.Mutex
	seen := map[netip.Addr]string{}
	errs := 0
	for i := range 14 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := c.CreateService(context.Background(), web(fmt.Sprintf("s%d", i)), small)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs++
				return
			}
			if other, ok := seen[s.ClusterIPs[0]]; ok {
				t.Errorf("%s given to %s and %s", s.ClusterIPs[0], other, s.Name)
			}
			seen[s.ClusterIPs[0]] = s.Name
		}()
	}
	wg.Wait()
	if len(seen)+errs != 14 || len(seen) < 10 {
		t.Errorf("%d allocated, %d failed", len(seen), errs)
	}
}

func TestPublishPodsAndCache(t *testing.T) {
	c := newClient(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cache := resources.NewCache(c.Store)
	changes := make(chan resources.Kind, 100)
	cache.OnChange(func(k resources.Kind) {
		select {
		case changes <- k:
		default:
		}
	})
	go func() { _ = cache.Run(ctx) }()
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if cond() {
				return
			}
		}
		t.Fatalf("cache never showed %s: pods %+v services %+v", what, cache.Pods(), cache.Services())
	}
	pod := func(name, id string) v1.Pod {
		return v1.Pod{Name: name, Namespace: "default", ContainerID: id, IPs: []netip.Addr{netip.MustParseAddr("10.244.1.5")},
			Labels: map[string]string{"app": "web"}, Ready: true}
	}
	if err := c.PublishPods(ctx, "node1", 0, []v1.Pod{pod("a", "c1"), pod("b", "c2")}); err != nil {
		t.Fatal(err)
	}
	if err := c.PublishPods(ctx, "node2", 0, []v1.Pod{pod("c", "c3")}); err != nil {
		t.Fatal(err)
	}
	waitFor("3 pods", func() bool { return len(cache.Pods()) == 3 })
	if p := cache.Pods()[0]; p.Name != "a" || p.Node != "node1" {
		t.Errorf("first pod %+v", p)
	}
	// Level-triggered: publishing node1's new set withdraws b and leaves node2 alone.
	if err := c.PublishPods(ctx, "node1", 0, []v1.Pod{pod("a", "c1")}); err != nil {
		t.Fatal(err)
	}
	waitFor("b withdrawn", func() bool { return len(cache.Pods()) == 2 })
	if _, err := c.CreateService(ctx, web("svc"), cidrs); err != nil {
		t.Fatal(err)
	}
	waitFor("the service", func() bool { return len(cache.Services()) == 1 })
	if err := c.DeleteService(ctx, "default", "svc"); err != nil {
		t.Fatal(err)
	}
	waitFor("the service gone", func() bool { return len(cache.Services()) == 0 })
	// Pods bound to a lease vanish with it.
	lease, err := c.Store.Grant(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.PublishPods(ctx, "node3", lease, []v1.Pod{pod("d", "c4")}); err != nil {
		t.Fatal(err)
	}
	waitFor("d", func() bool { return len(cache.Pods()) == 3 })
	if err := c.Store.Revoke(ctx, lease); err != nil {
		t.Fatal(err)
	}
	waitFor("d gone with its lease", func() bool { return len(cache.Pods()) == 2 })
	if len(changes) == 0 {
		t.Error("no handler calls")
	}
}
