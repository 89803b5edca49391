package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	v1 "github.com/weftnet/weft/api/v1"
)

// The annotations a weftd puts on its own Node object: what its peers need to reach its
// pod blocks that Kubernetes does not say (the addresses weft's fabric uses, which need
// not be the kubelet's InternalIP; the VXLAN endpoint; the BGP role).
const (
	AnnotationUnderlay       = "weft.dev/underlay"        // comma-separated addresses
	AnnotationVTEPMAC        = "weft.dev/vtep-mac"        // the node's VXLAN device MAC
	AnnotationRouteReflector = "weft.dev/route-reflector" // "true": fabric bgp peers with it
)

// ErrNotSynced says the node informer's first list is not in yet: a fabric that acted on
// the empty view would withdraw every route.
var ErrNotSynced = errors.New("the Kubernetes node list is not in yet")

// Members is cluster membership from the Kubernetes API (`weftd --ipam kubernetes`): a
// node's pod blocks are its Node's spec.podCIDRs (kube-controller-manager's node IPAM
// assigns them) and its peers are the other Node objects. weft keeps no store of its own.
type Members struct {
	Client kubernetes.Interface
	Log    *slog.Logger
	// Poll is how often Join looks again for the Node or its pod CIDRs (0: 500 ms).
	Poll time.Duration

	informer cache.SharedIndexInformer
	synced   atomic.Bool
}

// Join annotates self's Node object with what peers need and returns its pod CIDRs,
// waiting for the kubelet to register the node and the controller manager to give it
// blocks, as a CNI plugin must.
func (m *Members) Join(ctx context.Context, self v1.Node) ([]netip.Prefix, error) {
	if m.Poll == 0 {
		m.Poll = 500 * time.Millisecond
	}
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": annotationsOf(self)}})
	var waitingFor string
	for {
		node, err := m.Client.CoreV1().Nodes().Patch(ctx, self.Name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "weftd"})
		var why string
		switch {
		case apierrors.IsNotFound(err):
			why = "the Node object (the kubelet registers it)"
		case err != nil:
			why = "the Kubernetes API: " + err.Error()
		case len(node.Spec.PodCIDRs) == 0:
			why = "the node's spec.podCIDRs (kube-controller-manager --allocate-node-cidrs assigns them)"
		default:
			return parseCIDRs(node.Spec.PodCIDRs)
		}
		if why != waitingFor {
			m.log().Info("waiting for "+why, "node", self.Name)
			waitingFor = why
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(m.Poll):
		}
	}
}

func annotationsOf(n v1.Node) map[string]any {
	var addrs []string
	for _, a := range n.Underlay {
		addrs = append(addrs, a.String())
	}
	out := map[string]any{AnnotationUnderlay: strings.Join(addrs, ","), AnnotationVTEPMAC: n.VTEPMAC, AnnotationRouteReflector: nil}
	if n.RouteReflector {
		out[AnnotationRouteReflector] = "true"
	}
	return out
}

// Run follows the Node objects until ctx ends, calling changed after each change and once
// the first list is in.
func (m *Members) Run(ctx context.Context, changed func()) error {
	factory := informers.NewSharedInformerFactory(m.Client, 10*time.Minute)
	m.informer = factory.Core().V1().Nodes().Informer()
	// A Node carries its images, conditions and much else: only what Peers reads is kept.
	if err := m.informer.SetTransform(trimNode); err != nil {
		return err
	}
	notify := func(any) {
		if m.synced.Load() {
			changed()
		}
	}
	if _, err := m.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: notify, UpdateFunc: func(_, o any) { notify(o) }, DeleteFunc: notify,
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), m.informer.HasSynced) {
		return nil // ctx ended
	}
	m.synced.Store(true)
	changed()
	<-ctx.Done()
	return nil
}

func trimNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil // a tombstone
	}
	out := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name, ResourceVersion: n.ResourceVersion}}
	for _, k := range []string{AnnotationUnderlay, AnnotationVTEPMAC, AnnotationRouteReflector} {
		if v, ok := n.Annotations[k]; ok {
			if out.Annotations == nil {
				out.Annotations = map[string]string{}
			}
			out.Annotations[k] = v
		}
	}
	out.Spec.PodCIDRs = n.Spec.PodCIDRs
	out.Status.Addresses = n.Status.Addresses
	return out, nil
}

// Peers are the cluster's nodes, and the pod blocks of those that have them, sorted by
// name; ErrNotSynced until Run's first list is in.
func (m *Members) Peers(context.Context) ([]v1.Node, []v1.Lease, error) {
	if !m.synced.Load() {
		return nil, nil, ErrNotSynced
	}
	var nodes []*corev1.Node
	for _, o := range m.informer.GetStore().List() {
		nodes = append(nodes, o.(*corev1.Node))
	}
	ns, ls := membersOf(nodes)
	return ns, ls, nil
}

// ListMembers lists the Node objects once, read as Peers reads them (for the CLI).
func ListMembers(ctx context.Context, client kubernetes.Interface) ([]v1.Node, []v1.Lease, error) {
	list, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, nil, err
	}
	nodes := make([]*corev1.Node, len(list.Items))
	for i := range list.Items {
		nodes[i] = &list.Items[i]
	}
	ns, ls := membersOf(nodes)
	return ns, ls, nil
}

// membersOf reads Node objects as nodes, sorted by name, and the blocks of those that
// have them.
func membersOf(objs []*corev1.Node) (nodes []v1.Node, leases []v1.Lease) {
	sort.Slice(objs, func(i, j int) bool { return objs[i].Name < objs[j].Name })
	nodes, leases = []v1.Node{}, []v1.Lease{}
	for _, o := range objs {
		n, l := memberOf(o)
		nodes = append(nodes, n)
		if len(l.PodCIDRs) > 0 {
			leases = append(leases, l)
		}
	}
	return nodes, leases
}

// memberOf reads a Node object: the addresses weft annotated, else the kubelet's
// InternalIPs (a node whose weftd has not started yet still gets routes to its blocks).
func memberOf(n *corev1.Node) (v1.Node, v1.Lease) {
	out := v1.Node{Name: n.Name, VTEPMAC: n.Annotations[AnnotationVTEPMAC], RouteReflector: n.Annotations[AnnotationRouteReflector] == "true"}
	if s := n.Annotations[AnnotationUnderlay]; s != "" {
		for _, part := range strings.Split(s, ",") {
			if a, err := netip.ParseAddr(strings.TrimSpace(part)); err == nil {
				out.Underlay = append(out.Underlay, a)
			}
		}
	}
	if len(out.Underlay) == 0 {
		for _, a := range n.Status.Addresses {
			if ip, err := netip.ParseAddr(a.Address); err == nil && a.Type == corev1.NodeInternalIP {
				out.Underlay = append(out.Underlay, ip)
			}
		}
	}
	cidrs, _ := parseCIDRs(n.Spec.PodCIDRs) // the API validates them
	return out, v1.Lease{Node: n.Name, PodCIDRs: cidrs}
}

func parseCIDRs(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("pod CIDR %q: %w", s, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

func (m *Members) log() *slog.Logger {
	if m.Log == nil {
		return slog.Default()
	}
	return m.Log
}
