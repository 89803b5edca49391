package kube

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/testutil/kubetest"
)

// TestMembersFromNodes: against a real kube-apiserver, Join waits for the Node and for
// its spec.podCIDRs and annotates it; Peers reads every Node (weft's annotations, else the
// kubelet's InternalIP), says nothing before the first list, and follows changes and
// deletions.
func TestMembersFromNodes(t *testing.T) {
	client := kubetest.StartKubeAPI(t, "").Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	nodes := client.CoreV1().Nodes()

	m := &Members{Client: client, Poll: 20 * time.Millisecond}
	if _, _, err := m.Peers(ctx); err != ErrNotSynced {
		t.Fatalf("Peers before Run: %v, want ErrNotSynced", err)
	}
	self := v1.Node{Name: "n1", Underlay: []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")}, VTEPMAC: "0a:00:00:00:00:01", RouteReflector: true}
	type joined struct {
		blocks []netip.Prefix
		err    error
	}
	done := make(chan joined, 1)
	go func() {
		b, err := m.Join(ctx, self)
		done <- joined{b, err}
	}()
	// No Node yet, then a Node without blocks: Join waits through both.
	time.Sleep(100 * time.Millisecond)
	if _, err := nodes.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	select {
	case j := <-done:
		t.Fatalf("Join returned before the node had blocks: %v %v", j.blocks, j.err)
	default:
	}
	n1, err := nodes.Get(ctx, "n1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n1.Spec.PodCIDRs = []string{"10.244.1.0/24", "fd00:244:0:1::/64"}
	if _, err := nodes.Update(ctx, n1, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	j := <-done
	if j.err != nil || fmt.Sprint(j.blocks) != "[10.244.1.0/24 fd00:244:0:1::/64]" {
		t.Fatalf("Join: %v %v", j.blocks, j.err)
	}
	if n1, err = nodes.Get(ctx, "n1", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{AnnotationUnderlay: "192.0.2.1,2001:db8::1", AnnotationVTEPMAC: "0a:00:00:00:00:01", AnnotationRouteReflector: "true"} {
		if got := n1.Annotations[k]; got != want {
			t.Errorf("annotation %s = %q, want %q", k, got, want)
		}
	}

	// A node whose weftd has not run: addressed by its InternalIP, no annotations.
	n2 := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n2"}, Spec: corev1.NodeSpec{PodCIDRs: []string{"10.244.2.0/24"}}}
	if n2, err = nodes.Create(ctx, n2, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	n2.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: "n2"}, {Type: corev1.NodeInternalIP, Address: "192.0.2.2"}}
	if _, err := nodes.UpdateStatus(ctx, n2, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// A node without blocks yet is a node, with no lease.
	if _, err := nodes.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n3"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	changed := make(chan struct{}, 100)
	go func() { _ = m.Run(ctx, func() { changed <- struct{}{} }) }()
	peers := func(want string) {
		t.Helper()
		var got string
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
			select {
			case <-changed:
			case <-time.After(time.Second):
			}
			ns, ls, err := m.Peers(ctx)
			got = fmt.Sprintf("%v %v %v", ns, ls, err)
			if got == want {
				return
			}
		}
		t.Fatalf("peers:\n got %s\nwant %s", got, want)
	}
	peers("[{n1 [192.0.2.1 2001:db8::1] 0a:00:00:00:00:01 0 true} {n2 [192.0.2.2]  0 false} {n3 []  0 false}] " +
		"[{n1 [10.244.1.0/24 fd00:244:0:1::/64]} {n2 [10.244.2.0/24]}] <nil>")

	// n2's weftd starts and annotates it; then n2 is deleted.
	if _, err := (&Members{Client: client}).Join(ctx, v1.Node{Name: "n2", Underlay: []netip.Addr{netip.MustParseAddr("198.51.100.2")}, VTEPMAC: "0a:00:00:00:00:02"}); err != nil {
		t.Fatal(err)
	}
	peers("[{n1 [192.0.2.1 2001:db8::1] 0a:00:00:00:00:01 0 true} {n2 [198.51.100.2] 0a:00:00:00:00:02 0 false} {n3 []  0 false}] " +
		"[{n1 [10.244.1.0/24 fd00:244:0:1::/64]} {n2 [10.244.2.0/24]}] <nil>")
	if err := nodes.Delete(ctx, "n2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	peers("[{n1 [192.0.2.1 2001:db8::1] 0a:00:00:00:00:01 0 true} {n3 []  0 false}] [{n1 [10.244.1.0/24 fd00:244:0:1::/64]}] <nil>")
}
